"""Seekable zstd: random access, parallel and sequential decoding, damage detection."""

from __future__ import annotations

import gzip
import io
import os
import random
import struct
import subprocess
from pathlib import Path

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from rescue.errors import ImageDamagedError, UnsupportedImageError
from rescue.image.seekable import (
    BLOCK_MAX,
    MAX_FRAME_CONTENT,
    MAX_FRAMES,
    MIN_FRAME,
    SeekableZstdReader,
    SeekableZstdWriter,
    SeekTable,
    iter_decompressed,
    iter_decompressed_gzip,
    seek_table_bytes,
)


def _sample(n: int, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    parts = []
    while sum(map(len, parts)) < n:
        parts.append(rng.randbytes(rng.randrange(1, 5000)))
        parts.append(b"\0" * rng.randrange(0, 20000))
        parts.append(b"text " * rng.randrange(0, 3000))
    return b"".join(parts)[:n]


def _compress(data: bytes, frame_size: int = 64 * 1024, threads: int = 2) -> bytes:
    out = io.BytesIO()
    w = SeekableZstdWriter(out, level=3, frame_size=frame_size, threads=threads)
    # feed in uneven pieces, as the copier does
    pos = 0
    rng = random.Random(len(data))
    while pos < len(data):
        step = rng.randrange(1, 200_000)
        w.write(data[pos : pos + step])
        pos += step
    w.close()
    assert w.bytes_in == len(data)
    assert w.bytes_out == len(out.getvalue())
    return out.getvalue()


DATA = _sample(1_500_000)
BLOB = _compress(DATA)


def test_zstd_cli_reads_our_file(tmp_path: Path) -> None:
    f = tmp_path / "s.zst"
    f.write_bytes(BLOB)
    subprocess.run(["zstd", "-q", "-t", str(f)], check=True)
    out = subprocess.run(["zstd", "-q", "-dc", str(f)], check=True, capture_output=True).stdout
    assert out == DATA


def test_table_read_equals_scan_and_frames_are_bounded() -> None:
    table = SeekTable.read_from(io.BytesIO(BLOB))
    assert table is not None
    assert table.size == len(DATA)
    assert all(d <= 64 * 1024 for d in table.decompressed)
    assert table.frames == -(-len(DATA) // (64 * 1024))
    scanned = SeekTable.scan(io.BytesIO(BLOB))
    assert scanned.compressed == table.compressed
    assert scanned.decompressed == table.decompressed


@settings(max_examples=60, deadline=None)
@given(st.integers(0, len(DATA)), st.integers(0, 300_000))
def test_random_reads_match(offset: int, length: int) -> None:
    table = SeekTable.read_from(io.BytesIO(BLOB))
    assert table is not None
    reader = SeekableZstdReader(io.BytesIO(BLOB), table, cache_frames=3)
    assert reader.pread(offset, length) == DATA[offset : offset + length]


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_parallel_and_sequential_decoding(threads: int) -> None:
    assert b"".join(iter_decompressed(io.BytesIO(BLOB), threads=threads)) == DATA
    # without the seek table, the sequential path must give the same bytes
    table = SeekTable.read_from(io.BytesIO(BLOB))
    assert table is not None
    frames_only = BLOB[: table.c_offsets[-1]]
    assert b"".join(iter_decompressed(io.BytesIO(frames_only))) == DATA


def test_a_plain_single_frame_file_decodes(tmp_path: Path) -> None:
    src = tmp_path / "plain"
    src.write_bytes(DATA)
    subprocess.run(["zstd", "-q", "-T0", "-3", str(src)], check=True)
    got = b"".join(iter_decompressed((tmp_path / "plain.zst").open("rb")))
    assert got == DATA


@pytest.mark.parametrize("cut", [1, 100, len(BLOB) // 3, len(BLOB) - 30, len(BLOB) - 1])
def test_truncation_is_detected(cut: int) -> None:
    with pytest.raises(ImageDamagedError):
        b"".join(iter_decompressed(io.BytesIO(BLOB[:-cut])))


def test_truncation_of_a_plain_stream_is_detected(tmp_path: Path) -> None:
    src = tmp_path / "plain"
    src.write_bytes(DATA)
    subprocess.run(["zstd", "-q", "-3", str(src)], check=True)
    blob = (tmp_path / "plain.zst").read_bytes()
    with pytest.raises(ImageDamagedError, match="truncated"):
        b"".join(iter_decompressed(io.BytesIO(blob[: len(blob) // 2])))


@pytest.mark.parametrize("where", [0.1, 0.5, 0.9])
def test_corruption_is_detected(where: int) -> None:
    bad = bytearray(BLOB)
    bad[int(len(bad) * where)] ^= 0x40
    with pytest.raises(ImageDamagedError):
        b"".join(iter_decompressed(io.BytesIO(bytes(bad))))


def test_gzip_streams(tmp_path: Path) -> None:
    src = tmp_path / "g"
    src.write_bytes(DATA)
    subprocess.run(["gzip", "-q", str(src)], check=True)
    blob = (tmp_path / "g.gz").read_bytes()
    assert b"".join(iter_decompressed_gzip(io.BytesIO(blob))) == DATA
    with pytest.raises(ImageDamagedError):
        b"".join(iter_decompressed_gzip(io.BytesIO(blob[:-100])))


def test_empty_input_gives_a_valid_empty_file() -> None:
    blob = _compress(b"")
    assert b"".join(iter_decompressed(io.BytesIO(blob))) == b""


def test_incompressible_frames_stay_small() -> None:
    data = os.urandom(300_000)
    blob = _compress(data)
    assert len(blob) < len(data) * 1.01


# --- what a reader enforces (docs/FORMAT.md): sizes a file states are checked first -------

ZSTD_MAGIC = 0xFD2FB528


def _rle_frame(size: int, *, declare: bool, window_log: int = 21) -> bytes:
    """A frame of ``size`` zeros in RLE blocks (4 bytes a 128 KiB block)."""
    fhd = 0xC0 if declare else 0x00
    out = bytearray(struct.pack("<IBB", ZSTD_MAGIC, fhd, (window_log - 10) << 3))
    if declare:
        out += struct.pack("<Q", size)
    left = size
    while left > 0:
        n = min(BLOCK_MAX, left)
        left -= n
        out += ((n << 3) | 2 | int(left == 0)).to_bytes(3, "little") + b"\0"
    return bytes(out)


def _with_table(frames: list[tuple[bytes, int]]) -> bytes:
    entries = [(len(f), d, struct.unpack_from("<I", f, len(f) - 4)[0]) for f, d in frames]
    return b"".join(f for f, _ in frames) + seek_table_bytes(entries)


@pytest.mark.parametrize("declare", [True, False])
def test_a_frame_larger_than_its_entry_is_damage(declare: bool) -> None:
    """8 GiB of zeros in a frame whose entry says 4 MiB: refused, never allocated."""
    blob = _with_table([(_rle_frame(8 << 30, declare=declare), 4 << 20)])
    with pytest.raises(ImageDamagedError, match="at byte 0"):
        b"".join(iter_decompressed(io.BytesIO(blob)))
    table = SeekTable.read_from(io.BytesIO(blob))
    assert table is not None
    with pytest.raises(ImageDamagedError, match="at byte 0"):
        SeekableZstdReader(io.BytesIO(blob), table).pread(0, 10)


def test_one_long_frame_is_decoded_in_bounded_pieces() -> None:
    """A Clonezilla-style frame that expands to 1 GiB comes out 4 MiB at a time."""
    chunks = iter_decompressed(io.BytesIO(_rle_frame(1 << 30, declare=False)))
    sizes = [len(next(chunks)) for _ in range(20)]
    assert max(sizes) <= 4 << 20
    assert sum(len(c) for c in chunks) + sum(sizes) == 1 << 30


def test_a_frame_asking_for_a_huge_window_is_refused() -> None:
    with pytest.raises(UnsupportedImageError, match="window"):
        next(iter_decompressed(io.BytesIO(_rle_frame(1 << 20, declare=False, window_log=31))))


def _footer(count: int, body: bytes = b"") -> bytes:
    payload = body + struct.pack("<IBI", count, 0x80, 0x8F92EAB1)
    return struct.pack("<II", 0x184D2A5E, len(payload)) + payload


def test_a_seek_table_count_is_checked_against_the_file() -> None:
    frames = BLOB[: SeekTable.read_from(io.BytesIO(BLOB)).c_offsets[-1]]  # type: ignore[union-attr]
    # entries that cannot fit the file, and entries that fit but whose frames cannot
    with pytest.raises(ImageDamagedError, match="more than the file"):
        SeekTable.read_from(io.BytesIO(frames + _footer(1_000_000)))
    n = len(frames) // MIN_FRAME + 1
    with pytest.raises(ImageDamagedError, match="cannot hold that many"):
        SeekTable.read_from(io.BytesIO(frames + _footer(n, bytes(12 * n))))
    with pytest.raises(ImageDamagedError, match="more than any stream"):
        SeekTable.read_from(io.BytesIO(frames + _footer(MAX_FRAMES + 1)))


def test_seek_table_entries_are_checked() -> None:
    frame = zstandard.ZstdCompressor().compress(b"x" * 1000)
    for entry in ((len(frame), MAX_FRAME_CONTENT + 1), (4, 1000), (5000, 10)):
        blob = frame + seek_table_bytes([(*entry, 0)])
        with pytest.raises(ImageDamagedError, match="seek table"):
            SeekTable.read_from(io.BytesIO(blob))


def test_an_index_table_round_trips_and_is_checked() -> None:
    table = SeekTable.read_from(io.BytesIO(BLOB))
    assert table is not None
    again = SeekTable.read_index(io.BytesIO(table.to_bytes()), table.c_offsets[-1])
    assert list(again.c_offsets) == list(table.c_offsets)
    assert list(again.d_offsets) == list(table.d_offsets)
    with pytest.raises(ImageDamagedError):  # it describes more frames than the stream holds
        SeekTable.read_index(io.BytesIO(table.to_bytes()), table.c_offsets[-1] // 2)


def test_scan_refuses_frames_too_large_to_read_at_random() -> None:
    with pytest.raises(ImageDamagedError, match="too many to read at random"):
        SeekTable.scan(io.BytesIO(_rle_frame(MAX_FRAME_CONTENT + BLOCK_MAX, declare=True)))


def test_a_gzip_bomb_is_decoded_in_bounded_pieces() -> None:
    bomb = gzip.compress(b"\0" * (256 << 20), compresslevel=1)
    assert len(bomb) < 2 << 20
    chunks = iter_decompressed_gzip(io.BytesIO(bomb))
    assert max(len(c) for c in chunks) <= 4 << 20
