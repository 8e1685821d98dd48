"""The capture reader places every stream byte straight into its frame: the stream must be
byte for byte the one partclone's layout gives, whatever the block size, the frame size
(boundaries inside checksums, inside the prefix), the gaps read through, the holes of a
sparse file, and from wherever a resumed capture starts again."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from capabilities import need
from diskbench import attach

from rescue.copier import Checkpoint, CompressionOptions, Extent, write_stream
from rescue.filesystems.base import Allocation, bitmap_from_runs, count_bits
from rescue.image.partclone import BlockEncoder, PartcloneHeader, stream_prefix
from rescue.image.seekable import SeekTable, iter_decompressed
from rescue.progress import NullProgress


def _runs(total: int, bs: int, rng: random.Random) -> list[tuple[int, int]]:
    """Used runs of every kind: single blocks, gaps below and above the read-through
    limit, long runs that cross many checksum strips."""
    runs = []
    block = rng.randrange(0, 4)
    while block < total:
        count = rng.choice([1, 1, 2, 3, 17, 255, 256, 257, 700])
        count = min(count, total - block)
        runs.append((block, count))
        gap = rng.choice([bs, 2 * bs, 160 << 10, 300 << 10, 3 << 20])  # read through, or not
        block += count + max(1, gap // bs)
    return runs


def _disk_file(path: Path, size: int, rng: random.Random) -> None:
    """Random bytes with holes (a sparse file reads them as zeros)."""
    with path.open("wb") as f:
        f.truncate(size)
        pos = 0
        while pos < size:
            n = min(rng.randrange(4096, 1 << 20), size - pos)
            if rng.random() < 0.7:
                f.seek(pos)
                f.write(rng.randbytes(n))
            pos += n


def _alloc(size: int, bs: int, runs: list[tuple[int, int]]) -> Allocation:
    total = size // bs
    bitmap = bytes(bitmap_from_runs(total, runs))
    used = count_bits(bitmap, total)
    return Allocation("ext4", "EXTFS", bs, total, size, bitmap, used, used)


def _reference(fd: int, alloc: Allocation) -> bytes:
    prefix = stream_prefix(alloc)
    enc = BlockEncoder(PartcloneHeader.unpack(prefix[:110]))
    out = bytearray(prefix)
    bs = alloc.block_size
    for first, count in alloc.runs():
        out += enc.encode(os.pread(fd, count * bs, first * bs))
    out += enc.finish()
    return bytes(out)


def _capture(
    fd: int,
    path: Path,
    size: int,
    alloc: Allocation,
    out: Path,
    options: CompressionOptions,
    resume: Checkpoint | None = None,
) -> int:
    """Stream bytes of a capture of ``alloc`` from ``fd`` into ``out`` (resumed at ``resume``)."""
    result = write_stream(
        Extent(fd, str(path), 0, size), alloc, out, options,
        progress=NullProgress(), cancel=None, resume=resume,
    )  # fmt: skip
    return result.stream_bytes


def _after(entries: list[tuple[int, int]], k: int) -> Checkpoint:
    """The checkpoint of a capture killed with its first ``k`` frames on disk."""
    return Checkpoint(
        frames=k,
        stream_pos=sum(d for _c, d in entries[:k]),
        file_pos=sum(c for c, _d in entries[:k]),
        raw_frames=(),
        skipped=(),
    )


def _stored(base: Path) -> bytes:
    with base.open("rb") as f:
        return b"".join(iter_decompressed(f))


def _entries(base: Path) -> list[tuple[int, int]]:
    with base.open("rb") as f:
        table = SeekTable.read_from(f)
    assert table is not None
    return list(zip(table.compressed, table.decompressed, strict=True))


@pytest.mark.parametrize(("bs", "frame_size"), [(4096, 1 << 20), (4096, 65543), (1024, 12289),
                                                 (512, 4099)])  # fmt: skip
def test_stream_is_partclones_layout(tmp_path: Path, bs: int, frame_size: int) -> None:
    rng = random.Random(bs * 7 + frame_size)
    size = 24 << 20
    disk = tmp_path / "disk.img"
    _disk_file(disk, size, rng)
    alloc = _alloc(size, bs, _runs(size // bs, bs, rng))
    fd = os.open(disk, os.O_RDONLY)
    try:
        expected = _reference(fd, alloc)
        out = tmp_path / "stream.zst"
        options = CompressionOptions(level=1, frame_size=frame_size, threads=2)
        assert _capture(fd, disk, size, alloc, out, options) == len(expected)
        assert _stored(out) == expected
        # a resumed capture from any frame boundary makes the same stream
        entries = _entries(out)
        assert len(entries) > 3
        for k in sorted({1, 2, len(entries) // 2, len(entries) - 1}):
            again = _capture(fd, disk, size, alloc, out, options, _after(entries, k))
            assert again == len(expected)
            assert _stored(out) == expected, f"resumed after frame {k}"
    finally:
        os.close(fd)


def test_resume_inside_prefix_and_checksum(tmp_path: Path) -> None:
    """Frame boundaries placed inside the bitmap and inside a strip's CRC32."""
    rng = random.Random(5)
    bs = 4096
    size = 16 << 20
    disk = tmp_path / "disk.img"
    _disk_file(disk, size, rng)
    alloc = _alloc(size, bs, [(0, size // bs)])  # every block: strips at fixed places
    prefix_len = len(stream_prefix(alloc))
    # frames end 2 bytes into the first CRC32: prefix + 256 blocks + 2
    frame_size = prefix_len + 256 * bs + 2
    fd = os.open(disk, os.O_RDONLY)
    try:
        expected = _reference(fd, alloc)
        out = tmp_path / "stream.zst"
        options = CompressionOptions(level=1, frame_size=frame_size, threads=2)
        _capture(fd, disk, size, alloc, out, options)
        entries = _entries(out)
        for k in range(1, len(entries)):
            _capture(fd, disk, size, alloc, out, options, _after(entries, k))
            assert _stored(out) == expected, f"resumed after frame {k}"
        # and a stream cut inside the prefix itself (few used blocks: frames are tiny)
        few = _alloc(size, bs, [(3, 5), (900, 2)])
        expected = _reference(fd, few)
        small = CompressionOptions(level=1, frame_size=prefix_len // 3 + 1, threads=2)
        out.unlink()
        _capture(fd, disk, size, few, out, small)
        entries = _entries(out)
        for k in (1, 2, 3, len(entries) - 1):
            _capture(fd, disk, size, few, out, small, _after(entries, k))
            assert _stored(out) == expected, f"resumed after frame {k}"
    finally:
        os.close(fd)


@need("loop")
def test_block_device_source(tmp_path: Path) -> None:
    """The same from a real block device (no holes to skip, reads ahead of the disk)."""
    rng = random.Random(11)
    size = 24 << 20
    backing = tmp_path / "disk.img"
    _disk_file(backing, size, rng)
    alloc = _alloc(size, 4096, _runs(size // 4096, 4096, rng))
    disk = attach(backing, read_only=True)
    try:
        fd = os.open(disk.path, os.O_RDONLY)
        try:
            expected = _reference(fd, alloc)
            out = tmp_path / "stream.zst"
            write_stream(
                Extent(fd, disk.path, 0, size), alloc, out,
                CompressionOptions(level=1, frame_size=1 << 20, threads=2),
                progress=NullProgress(), cancel=None,
            )  # fmt: skip
            assert _stored(out) == expected
        finally:
            os.close(fd)
    finally:
        disk.detach()
