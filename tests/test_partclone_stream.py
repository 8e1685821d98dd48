"""The partclone v2 stream: byte-identical to partclone's own, checked by its tools."""

from __future__ import annotations

import io
import random
import struct
import subprocess
from pathlib import Path

import pytest
from capabilities import need
from hypothesis import given, settings
from hypothesis import strategies as st

from rescue.errors import ImageDamagedError, NotAnImageError, UnsupportedImageError
from rescue.filesystems.base import Allocation, bitmap_from_runs, bitmap_runs, count_bits
from rescue.filesystems.ext import read_allocation
from rescue.image.partclone import (
    HEADER_SIZE,
    PIECE,
    Bitmap,
    BlockEncoder,
    BlockRanks,
    PartcloneHeader,
    StreamReader,
    block_offset,
    crc32,
    header_for,
    stream_prefix,
)

pytestmark = need("partclone")


def _encode(alloc: Allocation, fs: bytes, chunk_blocks: int = 37) -> bytes:
    """A stream made the way the copier makes it: prefix, then blocks in odd-sized pieces."""
    prefix = stream_prefix(alloc)
    enc = BlockEncoder(PartcloneHeader.unpack(prefix[:HEADER_SIZE]))
    bs = alloc.block_size
    used = [n for first, count in alloc.runs() for n in range(first, first + count)]
    out = [prefix]
    out.extend(
        enc.encode(b"".join(fs[n * bs : (n + 1) * bs] for n in used[i : i + chunk_blocks]))
        for i in range(0, len(used), chunk_blocks)
    )
    out.append(enc.finish())
    return b"".join(out)


@pytest.fixture(scope="module")
def ext4(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    d = tmp_path_factory.mktemp("ext4")
    tree = d / "tree"
    tree.mkdir()
    rng = random.Random(7)
    for i in range(40):
        (tree / f"f{i}").write_bytes(rng.randbytes(rng.randrange(1, 300_000)))
    img = d / "fs.img"
    with img.open("wb") as f:
        f.truncate(96 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-b", "4096", "-d", str(tree), str(img)], check=True)
    return img, img.read_bytes()


def test_stream_is_byte_identical_to_partclones(ext4: tuple[Path, bytes]) -> None:
    img, fs = ext4
    theirs = subprocess.run(
        ["partclone.ext4", "-c", "-s", str(img), "-o", "-", "-L", "/dev/null"],
        check=True,
        capture_output=True,
    ).stdout
    # the same map partclone used (ours skips never-used inode tables: tests/test_fs_ext.py)
    h = PartcloneHeader.unpack(theirs[:HEADER_SIZE])
    bitmap = theirs[HEADER_SIZE : HEADER_SIZE + h.bitmap_bytes]
    alloc = Allocation("ext4", h.fs, h.block_size, h.total_blocks, h.device_size, bitmap,
                       h.used_blocks, h.used_blocks_sb)  # fmt: skip
    assert _encode(alloc, fs) == theirs


def test_partclone_checks_and_restores_our_stream(ext4: tuple[Path, bytes], tmp_path: Path) -> None:
    img, fs = ext4
    with img.open("rb") as f:
        alloc = read_allocation(f, len(fs))
    ours = _encode(alloc, fs)
    subprocess.run(["partclone.chkimg", "-s", "-", "-L", "/dev/null"], input=ours, check=True,
                   capture_output=True)  # fmt: skip
    out = tmp_path / "restored.img"
    with out.open("wb") as f:
        f.truncate(len(fs))
    subprocess.run(["partclone.restore", "-s", "-", "-O", str(out), "-L", "/dev/null"],
                   input=ours, check=True, capture_output=True)  # fmt: skip
    subprocess.run(["e2fsck", "-fn", str(out)], check=True, capture_output=True)
    restored = out.read_bytes()
    bs = alloc.block_size
    for first, count in alloc.runs():
        assert restored[first * bs : (first + count) * bs] == fs[first * bs : (first + count) * bs]


def test_reader_yields_exactly_partclones_blocks(ext4: tuple[Path, bytes]) -> None:
    img, fs = ext4
    for extra in ([], ["-a0"], ["-k", "7"]):
        theirs = subprocess.run(
            ["partclone.ext4", "-c", *extra, "-s", str(img), "-o", "-", "-L", "/dev/null"],
            check=True,
            capture_output=True,
        ).stdout
        reader = StreamReader(io.BytesIO(theirs))
        h = reader.header
        got = 0
        for first, data in reader.iter_runs(max_bytes=100_000):
            assert data == fs[first * h.block_size : first * h.block_size + len(data)]
            got += len(data) // h.block_size
        assert got == h.used_blocks == reader.bitmap.count(h.total_blocks)
        assert reader.end_offset == len(theirs) == h.stream_size


def test_block_offset_matches_the_stream(ext4: tuple[Path, bytes]) -> None:
    img, fs = ext4
    with img.open("rb") as f:
        alloc = read_allocation(f, len(fs))
    stream = _encode(alloc, fs)
    h = header_for(alloc)
    bs = h.block_size
    used = [n for first, count in alloc.runs() for n in range(first, first + count)]
    for rank in (0, 1, h.blocks_per_checksum - 1, h.blocks_per_checksum, len(used) - 1):
        off = block_offset(h, rank)
        assert stream[off : off + bs] == fs[used[rank] * bs : (used[rank] + 1) * bs]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.booleans(), min_size=1, max_size=300),
    st.integers(1, 9),
    st.integers(1, 50),
)
def test_round_trip_random_bitmaps(bits: list[bool], bpc: int, chunk: int) -> None:
    total, bs = len(bits), 512
    runs = [(i, 1) for i, b in enumerate(bits) if b]
    bm = bytes(bitmap_from_runs(total, runs))
    fs = random.Random(total).randbytes(total * bs)
    alloc = Allocation("ext4", "EXTFS", bs, total, total * bs, bm, count_bits(bm, total), 0)
    prefix = stream_prefix(alloc, blocks_per_checksum=bpc)
    enc = BlockEncoder(PartcloneHeader.unpack(prefix[:HEADER_SIZE]))
    used = [i for i, b in enumerate(bits) if b]
    body = [enc.encode(b"".join(fs[n * bs : (n + 1) * bs] for n in used[i : i + chunk]))
            for i in range(0, len(used), chunk)]  # fmt: skip
    stream = prefix + b"".join(body) + enc.finish()
    reader = StreamReader(io.BytesIO(stream))
    rebuilt = {}
    for first, data in reader.iter_runs(max_bytes=3 * bs):
        for k in range(len(data) // bs):
            rebuilt[first + k] = data[k * bs : (k + 1) * bs]
    assert sorted(rebuilt) == used
    assert all(rebuilt[n] == fs[n * bs : (n + 1) * bs] for n in used)
    assert len(stream) == reader.header.stream_size


def _damaged(ext4: tuple[Path, bytes], offset: int | None = None, cut: int | None = None) -> bytes:
    img, fs = ext4
    with img.open("rb") as f:
        stream = bytearray(_encode(read_allocation(f, len(fs)), fs))
    if offset is not None:
        stream[offset % len(stream)] ^= 0x01
    if cut is not None:
        del stream[cut:]
    return bytes(stream)


def _read_all(stream: bytes) -> None:
    for _ in StreamReader(io.BytesIO(stream)).iter_runs():
        pass


@pytest.mark.parametrize("offset", [20, 60, HEADER_SIZE + 3, 5000, 400_000, -3])
def test_any_flipped_byte_is_detected(ext4: tuple[Path, bytes], offset: int) -> None:
    with pytest.raises((ImageDamagedError, NotAnImageError, UnsupportedImageError)):
        _read_all(_damaged(ext4, offset=offset))


@pytest.mark.parametrize("cut", [50, HEADER_SIZE + 10, 300_000, -1])
def test_truncation_is_detected(ext4: tuple[Path, bytes], cut: int) -> None:
    with pytest.raises(ImageDamagedError, match="truncated"):
        _read_all(_damaged(ext4, cut=cut))


def test_not_a_partclone_stream() -> None:
    with pytest.raises(NotAnImageError):
        StreamReader(io.BytesIO(b"x" * 200))


# --- what a reader enforces: header fields first, then a bitmap only as the stream holds it ---


def _header(**fields: int) -> bytes:
    base = {
        "device_size": 1 << 30,
        "total_blocks": 1 << 18,
        "used_blocks_sb": 0,
        "used_blocks": 0,
        "block_size": 4096,
    }
    return PartcloneHeader(fs="EXTFS", **{**base, **fields}).pack()  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"block_size": 3000}, "block size"),
        ({"block_size": 256}, "block size"),
        ({"block_size": 1 << 26}, "block size"),
        ({"total_blocks": 1 << 60, "device_size": (1 << 64) - 4096}, "device of"),
        ({"total_blocks": 1 << 40}, "do not fit"),
        ({"used_blocks": (1 << 18) + 1}, "blocks used"),
    ],
)
def test_impossible_header_fields_are_damage(fields: dict[str, int], words: str) -> None:
    with pytest.raises(ImageDamagedError, match=words):
        PartcloneHeader.unpack(_header(**fields))


def test_the_header_is_checked_against_the_partition_and_the_stream() -> None:
    h = PartcloneHeader.unpack(_header())
    h.check(partition_size=1 << 30, stream_size=h.data_start)
    with pytest.raises(ImageDamagedError, match="larger than its"):
        h.check(partition_size=(1 << 30) - 1)
    with pytest.raises(ImageDamagedError, match="more than the"):
        h.check(stream_size=h.data_start - 1)


def test_a_vast_empty_bitmap_costs_no_memory() -> None:
    """A header claiming 2^26 free blocks: 8 MiB of zero bitmap, held as shared pieces."""
    total = 1 << 26
    head = _header(total_blocks=total, device_size=total * 4096)
    bitmap = bytes(total // 8)
    stream = head + bitmap + struct.pack("<I", crc32(bitmap))
    reader = StreamReader(io.BytesIO(stream), name="sda1.ext4-ptcl-img.zst")
    assert len({id(p) for p in reader.bitmap.pieces}) == 1
    assert list(reader.iter_runs()) == []


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, (3 << 23) - 1), max_size=40), st.booleans())
def test_bitmap_pieces_answer_as_the_bytes_do(bits: list[int], full: bool) -> None:
    """Runs, counts and ranks across 1 MiB pieces (some of them shared) match the bytes."""
    total = 3 << 23  # three pieces
    bm = bytearray(b"\xff" * (total // 8) if full else total // 8)
    for b in bits:
        bm[b >> 3] ^= 1 << (b & 7)
    data = bytes(bm)
    pieces = Bitmap([Bitmap.shared(data[i : i + PIECE]) for i in range(0, len(data), PIECE)])
    assert list(pieces.runs(total)) == list(bitmap_runs(data, total))
    assert pieces.count(total) == count_bits(data, total)
    plain, sparse = BlockRanks(data), BlockRanks(pieces)
    for b in [0, total - 1, PIECE * 8, *bits]:
        assert sparse.rank(b) == plain.rank(b)
        assert sparse.used(b) == plain.used(b)
    used = count_bits(data, total)
    for r in {0, used // 2, max(used - 1, 0)}:
        assert sparse.select(r) == plain.select(r)


def test_errors_name_the_stream() -> None:
    with pytest.raises(NotAnImageError, match=r"^sda1\.ext4-ptcl-img\.zst: "):
        StreamReader(io.BytesIO(b"x" * 200), name="sda1.ext4-ptcl-img.zst")
    with pytest.raises(ImageDamagedError, match=r"^sda1\.ext4-ptcl-img\.zst: .*bitmap"):
        StreamReader(io.BytesIO(_header() + b"\0" * 100), name="sda1.ext4-ptcl-img.zst")
