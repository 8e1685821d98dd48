"""Seekable zstd: random access, parallel and sequential decoding, damage detection."""

from __future__ import annotations

import io
import os
import random
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rescue.errors import ImageDamagedError
from rescue.image.seekable import (
    SeekableZstdReader,
    SeekableZstdWriter,
    SeekTable,
    iter_decompressed,
    iter_decompressed_gzip,
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
