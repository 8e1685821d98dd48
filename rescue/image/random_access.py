"""Random access to the partition inside an image: the base of browsing without restoring.

A byte of the partition is found in three steps: its block's rank among the
used blocks (a popcount index over the bitmap), the rank's offset in the
partclone stream (blocks plus one checksum per strip), and the zstd frame
holding that offset (the seek table). Blocks the filesystem did not use read as
zeros. Opening reads only the seek table, the header and the bitmap.
"""

from __future__ import annotations

from pathlib import Path

from rescue.blockio import binary
from rescue.errors import ImageDamagedError, ImageError, UnsupportedImageError
from rescue.image.partclone import (
    HEADER_SIZE,
    BlockRanks,
    PartcloneHeader,
    block_offset,
    named,
    read_bitmap,
)
from rescue.image.seekable import SeekableZstdReader, SeekTable
from rescue.image.volumes import VolumeReader, volume_paths


class PartitionReader:
    """``pread`` on the partition stored in one stream of an image."""

    def __init__(
        self,
        stream: Path,
        *,
        raw: bool = False,
        size: int | None = None,
        table: SeekTable | None = None,
        cache_frames: int = 16,
    ) -> None:
        """Open ``stream`` (split volumes found by name) with its own seek table,
        or with ``table`` when an index built elsewhere describes its frames.

        ``size`` is the partition's size: the header must describe a filesystem
        that fits it, and a bitmap the stream can hold, before the bitmap is read.
        """
        self._volumes = VolumeReader(volume_paths(stream))
        try:
            self._open(stream, raw, size, table, cache_frames)
        except BaseException:
            self._volumes.close()
            raise

    def _open(
        self, stream: Path, raw: bool, size: int | None, table: SeekTable | None, cache: int
    ) -> None:
        f = binary(self._volumes)
        if table is None:
            table = SeekTable.read_from(f)
        if table is None:
            raise UnsupportedImageError(
                f"{stream.name} has no seek table (written by Clonezilla?): "
                "it cannot be opened at random without an index."
            )
        if table.c_offsets[-1] > self._volumes.size:
            raise ImageDamagedError(
                f"{stream.name}: its index describes {table.c_offsets[-1]} bytes of frames, "
                f"but the file holds {self._volumes.size}; delete the index."
            )
        self._z = SeekableZstdReader(f, table, cache_frames=cache)
        self.raw = raw
        if raw:
            self.size = table.size if size is None else size
            return
        try:
            self.header = PartcloneHeader.unpack(self._z.pread(0, HEADER_SIZE))
            h = self.header
            h.check(partition_size=size, stream_size=table.size)
            pos = HEADER_SIZE

            def read(n: int) -> bytes:
                nonlocal pos
                data = self._z.pread(pos, n)
                pos += len(data)
                return data

            self.bitmap = read_bitmap(read, h)
        except ImageError as exc:
            raise named(exc, stream.name) from exc
        self.size = h.device_size if size is None else size
        self._ranks = BlockRanks(self.bitmap)

    def _used(self, block: int) -> bool:
        return self._ranks.used(block)

    def _rank(self, block: int) -> int:
        return self._ranks.rank(block)

    def pread(self, offset: int, length: int) -> bytes:
        """``length`` bytes of the partition at ``offset`` (short only at its end)."""
        end = min(offset + length, self.size)
        if offset >= end:
            return b""
        if self.raw:
            return self._z.pread(offset, end - offset)
        h = self.header
        bs = h.block_size
        out = bytearray(end - offset)
        first = offset // bs
        last = (end - 1) // bs
        fs_blocks = h.total_blocks
        block = first
        rank = self._rank(first) if first < fs_blocks else 0
        while block <= last and block < fs_blocks:
            if not self._used(block):
                block += 1
                continue
            # a run of used blocks inside one checksum strip is contiguous in the stream
            run = 1
            room = (
                h.blocks_per_checksum - rank % h.blocks_per_checksum
                if h.checksum_size
                else last - block + 1
            )
            while (
                block + run <= last and block + run < fs_blocks and run < room
                and self._used(block + run)
            ):  # fmt: skip
                run += 1
            data = self._z.pread(block_offset(h, rank), run * bs)
            if len(data) != run * bs:
                raise ImageDamagedError("The stream ends before the blocks its bitmap promises.")
            lo = block * bs
            a, b = max(lo, offset), min(lo + run * bs, end)
            out[a - offset : b - offset] = data[a - lo : b - lo]
            block += run
            rank += run
        return bytes(out)

    def close(self) -> None:
        self._volumes.close()
