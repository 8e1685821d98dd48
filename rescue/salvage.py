"""Data off a failing disk: retry passes, then the recovered bytes patched into the stream.

The first pass of a capture (:mod:`rescue.copier`) reads the used data in large
spans and skips past read errors, leaving zeros in the stream and noting each
skipped range. The frames holding those ranges (and the CRCs of their strips)
are stored as raw zstd blocks, whose size does not depend on their content.

Then, like GNU ddrescue but only inside used blocks:

1. the skipped ranges are read again in 64 KiB pieces;
2. pieces that still fail are read sector by sector;
3. sectors that still fail are retried ``retries`` times.

Every recovered byte is written into its raw frame in place, the CRC of each
touched strip is computed again, the seek table's checksums are updated and the
volumes hashed again. What stays unreadable is returned as ranges for the
manifest (zeros in the image).
"""

from __future__ import annotations

import bisect
import mmap
import os
import struct
import threading
from dataclasses import dataclass

from rescue.blockio import GONE_ERRORS, MEDIA_ERRORS, binary, merge_ranges
from rescue.errors import DeviceError, DeviceGoneError, ImageDamagedError
from rescue.image.partclone import BlockRanks, PartcloneHeader, block_offset, crc32
from rescue.image.seekable import (
    SeekableZstdReader,
    SeekTable,
    content_checksum,
    raw_frame,
    raw_frame_content,
)
from rescue.image.volumes import VolumeReader
from rescue.progress import ProgressReporter, check_cancel

PIECE = 64 * 1024
UNIT = 4096
"""Smallest unit re-read: a page (reads of a block device go through the page cache)."""


@dataclass
class Recovery:
    recovered: list[tuple[int, bytes]]
    """(partition offset, bytes) read by the retry passes."""
    unreadable: list[tuple[int, int]]
    """(partition offset, length) that no pass could read."""


class _DirectReader:
    """Reads that bypass the page cache, so that one bad sector fails only its own unit.

    Through the page cache a read fails for a whole folio (up to 64 KiB on
    recent kernels), which would hide good sectors next to bad ones.
    """

    def __init__(self, fd: int, path: str) -> None:
        self.path = path
        self.fd = fd
        self.direct = -1
        try:
            self.direct = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
        except OSError:
            self.direct = -1  # no O_DIRECT here (tmpfs): buffered reads
        self._buf = mmap.mmap(-1, PIECE)  # page-aligned, as O_DIRECT needs

    def read(self, offset: int, length: int) -> bytes | None:
        """``length`` bytes at ``offset`` or None when the disk cannot read them."""
        aligned = offset % UNIT == 0 and length % UNIT == 0 and length <= PIECE
        try:
            if self.direct >= 0 and aligned:
                view = memoryview(self._buf)[:length]
                n = os.preadv(self.direct, [view], offset)
                data = bytes(view[:n])
            else:
                data = os.pread(self.fd, length, offset)
        except OSError as exc:
            if exc.errno in GONE_ERRORS:
                raise DeviceGoneError(
                    f"{self.path} disappeared during the retry passes: was it unplugged?"
                ) from exc
            if exc.errno in MEDIA_ERRORS:
                return None
            raise DeviceError(
                f"Read error on {self.path} at byte {offset}: {exc.strerror}."
            ) from exc
        return data if len(data) == length else None

    def close(self) -> None:
        if self.direct >= 0:
            os.close(self.direct)
        self._buf.close()


def retry_passes(
    fd: int,
    path: str,
    base: int,
    skipped: list[tuple[int, int]],
    *,
    retries: int,
    progress: ProgressReporter,
    cancel: threading.Event | None,
) -> Recovery:
    """Read what the first pass skipped, ever more finely; ``skipped`` is partition-relative."""
    todo = merge_ranges(skipped)
    recovered: list[tuple[int, bytes]] = []
    reader = _DirectReader(fd, path)

    def sweep(ranges: list[tuple[int, int]], unit: int, name: str) -> list[tuple[int, int]]:
        failed = []
        progress.note(name)
        for off, n in ranges:
            pos = off
            while pos < off + n:
                check_cancel(cancel)
                take = min(unit - (pos % unit) if unit > UNIT else unit, off + n - pos)
                data = reader.read(base + pos, take)
                if data is None:
                    failed.append((pos, take))
                else:
                    recovered.append((pos, data))
                pos += take
        got = sum(n for _, n in ranges) - sum(n for _, n in failed)
        progress.note(
            f"  recovered {got // 1024} KiB; {_mib(merge_ranges(failed))} still unreadable"
        )
        return merge_ranges(failed)

    try:
        left = sweep(todo, PIECE, f"Rescue pass 2: re-reading {_mib(todo)} around read errors")
        if left:
            left = sweep(left, UNIT, f"Rescue pass 3: {_mib(left)} sector by sector")
        for attempt in range(retries):
            if not left:
                break
            left = sweep(
                left, UNIT, f"Rescue pass {4 + attempt}: retrying {_mib(left)} of bad sectors"
            )
    finally:
        reader.close()
    return Recovery(recovered, left)


def _mib(ranges: list[tuple[int, int]]) -> str:
    total = sum(n for _, n in ranges)
    return f"{total / (1 << 20):.1f} MiB" if total >= 1 << 20 else f"{total // 1024} KiB"


class StreamPatcher:
    """Writes bytes into the raw frames of a finished stream, in place."""

    def __init__(self, volumes: VolumeReader, raw_frames: set[int]) -> None:
        self._v = volumes
        table = SeekTable.read_from(binary(volumes))
        if table is None:
            raise ImageDamagedError("The stream just written has no seek table.")
        self.table = table
        self._raw = raw_frames
        self._cache: dict[int, bytearray] = {}

    def _content(self, i: int) -> bytearray:
        if i not in self._cache:
            if i not in self._raw:
                raise ImageDamagedError(f"Frame {i} holds recovered bytes but was not stored raw.")
            t = self.table
            self._v.seek(t.c_offsets[i])
            frame = self._v.read(t.compressed[i])
            self._cache[i] = bytearray(raw_frame_content(frame))
        return self._cache[i]

    def read(self, offset: int, length: int) -> bytes:
        """Stream bytes, with the patches made so far (any frame, raw or not)."""

        out = bytearray()
        reader = SeekableZstdReader(binary(self._v), self.table, cache_frames=2)
        pos = offset
        d = self.table.d_offsets
        while pos < offset + length:
            i = bisect.bisect_right(d, pos) - 1
            take = min(offset + length - pos, d[i + 1] - pos)
            if i in self._cache:
                out += self._cache[i][pos - d[i] : pos - d[i] + take]
            else:
                out += reader.pread(pos, take)
            pos += take
        return bytes(out)

    def write(self, offset: int, data: bytes) -> None:
        d = self.table.d_offsets
        pos = 0
        while pos < len(data):
            i = bisect.bisect_right(d, offset + pos) - 1
            inner = offset + pos - d[i]
            take = min(len(data) - pos, d[i + 1] - (offset + pos))
            self._content(i)[inner : inner + take] = data[pos : pos + take]
            pos += take

    def flush(self) -> None:
        """Rewrite every patched frame and its seek-table checksum."""
        t = self.table
        table_start = t.c_offsets[-1]
        for i, content in sorted(self._cache.items()):
            frame = raw_frame(content)
            if len(frame) != t.compressed[i]:
                raise ImageDamagedError(f"Frame {i} changed size while being patched.")
            self._v.pwrite(t.c_offsets[i], frame)
            entry = table_start + 8 + 12 * i + 8
            self._v.pwrite(entry, struct.pack("<I", content_checksum(content)))
        self._v.fsync()
        self._cache.clear()


def patch_stream(
    volumes: VolumeReader,
    raw_frames: set[int],
    recovered: list[tuple[int, bytes]],
    *,
    header: PartcloneHeader | None,
    ranks: BlockRanks | None,
) -> None:
    """Put recovered partition bytes into a finished stream (partclone or raw)."""
    patcher = StreamPatcher(volumes, raw_frames)
    if header is None or ranks is None:  # a raw stream: partition offset = stream offset
        for off, data in recovered:
            patcher.write(off, data)
        patcher.flush()
        return
    bs = header.block_size
    strips: set[int] = set()
    for off, data in recovered:
        pos = 0
        while pos < len(data):
            block, inner = divmod(off + pos, bs)
            take = min(len(data) - pos, bs - inner)
            if ranks.used(block):
                rank = ranks.rank(block)
                patcher.write(block_offset(header, rank) + inner, data[pos : pos + take])
                strips.add(rank // header.blocks_per_checksum)
            pos += take
    if header.checksum_size:
        for k in sorted(strips):
            r0 = k * header.blocks_per_checksum
            r1 = min(r0 + header.blocks_per_checksum, header.used_blocks)
            start = block_offset(header, r0)
            strip = patcher.read(start, (r1 - r0) * bs)
            crc_at = block_offset(header, r1 - 1) + bs
            patcher.write(crc_at, struct.pack("<I", crc32(strip)))
    patcher.flush()
