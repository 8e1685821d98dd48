"""The restore and verify read path: checked batches of blocks, no copies, writeback meanwhile."""

from __future__ import annotations

import fcntl
import io
import os
import random
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rescue import copier
from rescue.blockio import pwritev_all
from rescue.copier import Extent, restore_partclone_stream, restore_raw_stream
from rescue.errors import DeviceError, ImageDamagedError
from rescue.filesystems.base import Allocation, bitmap_from_runs, count_bits
from rescue.image.partclone import (
    HEADER_SIZE,
    BlockEncoder,
    PartcloneHeader,
    StreamReader,
    stream_prefix,
)
from rescue.image.seekable import SeekableZstdWriter, iter_decompressed
from rescue.image.streams import ChunkFile
from rescue.image.volumes import VolumeReader, VolumeWriter, volume_paths
from rescue.progress import NullProgress

BS = 512


def _stream(bits: list[bool], bpc: int, seed: int = 1) -> tuple[bytes, bytes, list[int]]:
    """(stream, filesystem bytes, used block numbers) for a bitmap of ``bits``."""
    total = len(bits)
    used = [i for i, b in enumerate(bits) if b]
    bm = bytes(bitmap_from_runs(total, [(i, 1) for i in used]))
    fs = random.Random(seed).randbytes(total * BS)
    alloc = Allocation("ext4", "EXTFS", BS, total, total * BS, bm, count_bits(bm, total), 0)
    prefix = stream_prefix(alloc, blocks_per_checksum=bpc)
    enc = BlockEncoder(PartcloneHeader.unpack(prefix[:HEADER_SIZE]))
    body = enc.encode(b"".join(fs[n * BS : (n + 1) * BS] for n in used))
    return prefix + body + enc.finish(), fs, used


def _chunks(data: bytes, sizes: list[int]) -> Iterator[bytes]:
    pos, k = 0, 0
    while pos < len(data):
        n = sizes[k % len(sizes)]
        yield data[pos : pos + n]
        pos += n
        k += 1


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.booleans(), min_size=1, max_size=400),
    st.integers(1, 9),
    st.integers(1, 12),
    st.lists(st.integers(1, 5000), min_size=1, max_size=5),
)
def test_pieces_are_the_used_blocks_in_contiguous_batches(
    bits: list[bool], bpc: int, batch: int, sizes: list[int]
) -> None:
    stream, fs, used = _stream(bits, bpc)
    reader = StreamReader(ChunkFile(_chunks(stream, sizes)))
    seen: list[int] = []
    last_end = -1
    for first, pieces, n in reader.iter_pieces(max_bytes=batch * BS):
        assert all(isinstance(p, memoryview) for p in pieces)
        data = b"".join(pieces)
        assert len(data) == n and n % BS == 0 and 0 < n <= batch * BS
        assert data == fs[first * BS : first * BS + n]
        # a batch ends only where the used blocks stop being contiguous or it is full
        assert first != last_end or n <= batch * BS
        seen.extend(range(first, first + n // BS))
        last_end = first + n // BS
    assert seen == used
    assert reader.end_offset == len(stream)


def test_pieces_share_the_decoded_chunks() -> None:
    """No copy: every piece is a view of a chunk the decoder made."""
    stream, _fs, _used = _stream([True] * 300, 8)
    chunks = list(_chunks(stream, [4096, 777]))
    reader = StreamReader(ChunkFile(iter(chunks)))
    ids = {id(c) for c in chunks}
    for _first, pieces, _n in reader.iter_pieces():
        assert all(id(p.obj) in ids for p in pieces)


@pytest.mark.parametrize("strip", [0, 3, 7])
def test_a_damaged_strip_is_never_given_out(strip: int) -> None:
    """The checksum is checked before the blocks it covers leave the reader."""
    bpc = 8
    bits = [i % 5 != 2 for i in range(100)]
    stream, _fs, used = _stream(bits, bpc)
    head = PartcloneHeader.unpack(stream[:HEADER_SIZE])
    bad = bytearray(stream)
    # a byte in the middle of the chosen strip's blocks
    bad[head.data_start + strip * (bpc * BS + 4) + 3 * BS + 11] ^= 0x40
    given_out: list[int] = []
    with pytest.raises(ImageDamagedError, match="CRC32 mismatch"):
        for first, _pieces, n in StreamReader(io.BytesIO(bytes(bad))).iter_pieces(max_bytes=3 * BS):
            given_out.extend(range(first, first + n // BS))
    # only blocks of the strips before it (those still in a batch being gathered stay in)
    assert given_out == used[: len(given_out)]
    assert len(given_out) <= strip * bpc


def test_the_last_partial_strip_is_checked_before_it_is_given_out() -> None:
    bits = [True] * 21  # strips of 8, 8 and 5
    stream, _fs, used = _stream(bits, 8)
    bad = bytearray(stream)
    bad[-10] ^= 1  # in the last strip's blocks
    given_out: list[int] = []
    with pytest.raises(ImageDamagedError):
        for first, _pieces, n in StreamReader(io.BytesIO(bytes(bad))).iter_pieces():
            given_out.extend(range(first, first + n // BS))
    assert given_out == used[: len(given_out)]
    assert len(given_out) <= 16


def test_read_pieces_and_read_mix() -> None:
    data = bytes(range(256)) * 40
    f = ChunkFile(_chunks(data, [100, 3, 1000]))
    assert f.read(5) == data[:5]
    assert b"".join(f.read_pieces(2000)) == data[5:2005]
    assert f.read(7) == data[2005:2012]
    assert b"".join(f.read_pieces(1 << 20)) == data[2012:]
    assert f.read_pieces(10) == []
    assert f.tell() == len(data)


def _target(tmp_path: Path, size: int) -> tuple[int, Path]:
    path = tmp_path / "target.img"
    path.write_bytes(b"")
    os.truncate(path, size)
    return os.open(path, os.O_RDWR), path


def test_restore_writes_the_blocks_and_starts_writeback_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bits = [i % 7 not in (3, 4) for i in range(3000)]
    stream, fs, used = _stream(bits, 16)
    advised: list[tuple[int, int, int]] = []
    real = os.posix_fadvise

    def recording(fd: int, offset: int, length: int, advice: int) -> None:
        advised.append((offset, length, advice))
        real(fd, offset, length, advice)

    def slow(data: bytes) -> Iterator[bytes]:
        for chunk in _chunks(data, [65536]):
            yield chunk
            time.sleep(0.002)  # the flusher thread gets its turn

    monkeypatch.setattr(copier, "FLUSH_EVERY", 64 * 1024)
    monkeypatch.setattr(copier.os, "posix_fadvise", recording)
    fd, path = _target(tmp_path, len(fs) + 4096)
    try:
        restore_partclone_stream(
            slow(stream), Extent(fd, str(path), 4096, len(fs)),
            progress=NullProgress(), cancel=None,
        )  # fmt: skip
    finally:
        os.close(fd)
    out = path.read_bytes()[4096:]
    for n in used:
        assert out[n * BS : (n + 1) * BS] == fs[n * BS : (n + 1) * BS]
    assert advised, "no writeback was started during the restore"
    for offset, length, advice in advised:  # only what this restore wrote
        assert advice == os.POSIX_FADV_DONTNEED
        assert offset >= 4096 and offset + length <= 4096 + len(fs)
    assert not any(t.name == "rescue-flush" for t in threading.enumerate())


def test_a_target_that_takes_no_advice_is_restored_all_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream, fs, _used = _stream([i % 7 not in (3, 4) for i in range(3000)], 16)

    def refusing(fd: int, offset: int, length: int, advice: int) -> None:
        raise OSError(29, "Illegal seek")

    monkeypatch.setattr(copier, "FLUSH_EVERY", 32 * 1024)
    monkeypatch.setattr(copier.os, "posix_fadvise", refusing)
    fd, path = _target(tmp_path, len(fs))
    try:
        restore_partclone_stream(
            _chunks(stream, [65536]), Extent(fd, str(path), 0, len(fs)),
            progress=NullProgress(), cancel=None,
        )  # fmt: skip
        assert restore_raw_stream(
            _chunks(fs, [65536]), Extent(fd, str(path), 0, len(fs)),
            progress=NullProgress(), cancel=None,
        ) == len(fs)  # fmt: skip
    finally:
        os.close(fd)
    assert path.read_bytes() == fs
    assert not any(t.name == "rescue-flush" for t in threading.enumerate())


def test_the_flusher_stops_when_the_restore_fails(tmp_path: Path) -> None:
    stream, fs, _used = _stream([True] * 3000, 16)
    bad = bytearray(stream)
    bad[-5000] ^= 1
    fd, path = _target(tmp_path, len(fs))
    try:
        with pytest.raises(ImageDamagedError):
            restore_partclone_stream(
                _chunks(bytes(bad), [65536]), Extent(fd, str(path), 0, len(fs)),
                progress=NullProgress(), cancel=None,
            )  # fmt: skip
    finally:
        os.close(fd)
    assert not any(t.name == "rescue-flush" for t in threading.enumerate())


def test_pwritev_all_goes_on_after_short_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.pwritev

    def short(fd: int, bufs: list[memoryview], offset: int) -> int:
        first = bufs[0][:3] if len(bufs[0]) > 3 else bufs[0]
        return real(fd, [first], offset)

    monkeypatch.setattr(copier.os, "pwritev", short)
    fd, path = _target(tmp_path, 100)
    try:
        pwritev_all(fd, [b"abcdefg", memoryview(b"hi"), b"", b"jklmnop"], 10, str(path))
    finally:
        os.close(fd)
    assert path.read_bytes()[10:26] == b"abcdefghijklmnop"


def test_pwritev_all_names_the_target_on_error(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "ro", os.O_RDONLY | os.O_CREAT)
    try:
        with pytest.raises(DeviceError, match="Write error on /some/disk at byte 5"):
            pwritev_all(fd, [b"x"], 5, "/some/disk")
    finally:
        os.close(fd)


def test_split_volumes_read_ahead_and_hash_as_read(tmp_path: Path) -> None:
    """Frames read straight into their buffers across split volumes, hashed once."""
    data = random.Random(3).randbytes(3 << 20) + bytes(2 << 20)
    base = tmp_path / "s.zst"
    vw = VolumeWriter(base, 700_000, direct=False)
    w = SeekableZstdWriter(vw, frame_size=256 * 1024)
    w.write(data)
    w.close()
    vw.close()
    with VolumeReader(volume_paths(base), hashing=True) as reader:
        assert b"".join(iter_decompressed(reader)) == data  # type: ignore[arg-type]
        got = {name: digest for name, _size, digest in reader.digests()}
    assert got == {p.name: d for p, _size, d in vw.files}


def _stream4k(total: int, runs: list[tuple[int, int]], seed: int) -> tuple[bytes, bytes]:
    """(stream, filesystem bytes) of a filesystem of 4 KiB blocks with ``runs`` used."""
    bs = 4096
    bm = bytes(bitmap_from_runs(total, runs))
    fs = random.Random(seed).randbytes(total * bs)
    alloc = Allocation("ext4", "EXTFS", bs, total, total * bs, bm, count_bits(bm, total), 0)
    prefix = stream_prefix(alloc)
    enc = BlockEncoder(PartcloneHeader.unpack(prefix[:HEADER_SIZE]))
    body = b"".join(enc.encode(fs[a * bs : (a + n) * bs]) for a, n in runs)
    return prefix + body + enc.finish(), fs


def _expected(fs: bytes, runs: list[tuple[int, int]], size: int, base: int) -> bytes:
    out = bytearray(size)
    for a, n in runs:
        out[base + a * 4096 : base + (a + n) * 4096] = fs[a * 4096 : (a + n) * 4096]
    return bytes(out)


# runs of every kind: one block, a run longer than the 8 MiB gather buffer, gaps
RUNS_4K = [(0, 1), (2, 3), (10, 2500), (2600, 1), (2602, 40), (4000, 95)]


@pytest.mark.parametrize("where", ["file", "loop"])
def test_direct_writes_put_every_block_in_place(tmp_path: Path, where: str) -> None:
    """4 KiB blocks go out with O_DIRECT (the page cache is left alone) onto a disk file
    and a real block device, at a partition offset, whatever the runs."""
    stream, fs = _stream4k(4096, RUNS_4K, seed=3)
    size, base = 20 << 20, 1 << 20
    backing = tmp_path / "target.img"
    with backing.open("wb") as f:
        f.truncate(size)
    path = str(backing)
    if where == "loop":
        path = subprocess.run(["losetup", "-f", "--show", str(backing)], check=True,
                              capture_output=True, text=True).stdout.strip()  # fmt: skip
    try:
        fd = os.open(path, os.O_RDWR)
        try:
            writer = copier._target_writer(Extent(fd, path, base, size - base), 4096)
            assert isinstance(writer, copier._DirectWriter)
            writer.close()
            restore_partclone_stream(
                iter([stream]), Extent(fd, path, base, size - base),
                progress=NullProgress(), cancel=None,
            )  # fmt: skip
            os.fsync(fd)
            assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT == 0  # given back as it was
        finally:
            os.close(fd)
    finally:
        if where == "loop":
            subprocess.run(["losetup", "-d", path], check=False)
    assert backing.read_bytes() == _expected(fs, RUNS_4K, size, base)


def test_raw_stream_tail_and_a_target_without_direct_io(tmp_path: Path) -> None:
    """A raw stream whose length is not a multiple of 4 KiB: the aligned part direct, the
    last bytes through the cache; on tmpfs (no O_DIRECT) all of it through the cache."""
    data = random.Random(9).randbytes((9 << 20) + 1536)
    for folder in (tmp_path, Path("/dev/shm")):
        target = folder / f"raw-{os.getpid()}.img"
        try:
            with target.open("wb") as f:
                f.truncate(len(data) + 8192)
            fd = os.open(target, os.O_RDWR)
            try:
                dst = Extent(fd, str(target), 4096, len(data))
                chunks = [
                    data[i : i + (3 << 20) + 512] for i in range(0, len(data), (3 << 20) + 512)
                ]
                assert restore_raw_stream(iter(chunks), dst, progress=NullProgress(),
                                          cancel=None) == len(data)  # fmt: skip
            finally:
                os.close(fd)
            assert target.read_bytes() == bytes(4096) + data + bytes(4096)
        finally:
            target.unlink(missing_ok=True)


def test_a_direct_write_error_names_the_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream, _fs = _stream4k(4096, RUNS_4K, seed=4)
    target = tmp_path / "target.img"
    with target.open("wb") as f:
        f.truncate(20 << 20)
    real = os.pwrite

    def failing(fd: int, data: memoryview, offset: int) -> int:
        if offset >= 4 << 20:
            raise OSError(5, "Input/output error")
        return real(fd, data, offset)

    monkeypatch.setattr(copier.os, "pwrite", failing)
    fd = os.open(target, os.O_RDWR)
    try:
        with pytest.raises(DeviceError, match=r"target\.img at byte \d+: Input/output error"):
            restore_partclone_stream(
                iter([stream]), Extent(fd, str(target), 0, 20 << 20),
                progress=NullProgress(), cancel=None,
            )  # fmt: skip
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT == 0
    finally:
        os.close(fd)
    assert not any(t.name == "rescue-write" for t in threading.enumerate())


def test_a_target_refusing_direct_writes_is_written_through_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EINVAL on a direct write (a filesystem that takes the flag but not the writes):
    the same bytes, through the cache, from then on."""
    stream, fs = _stream4k(4096, RUNS_4K, seed=5)
    target = tmp_path / "target.img"
    with target.open("wb") as f:
        f.truncate(20 << 20)
    real = os.pwrite
    refused = []

    def picky(fd: int, data: memoryview, offset: int) -> int:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(offset)
            raise OSError(22, "Invalid argument")
        return real(fd, data, offset)

    monkeypatch.setattr(copier.os, "pwrite", picky)
    fd = os.open(target, os.O_RDWR)
    try:
        restore_partclone_stream(
            iter([stream]), Extent(fd, str(target), 0, 20 << 20),
            progress=NullProgress(), cancel=None,
        )  # fmt: skip
    finally:
        os.close(fd)
    assert len(refused) == 1
    assert target.read_bytes() == _expected(fs, RUNS_4K, 20 << 20, 0)
