"""Random access to the partition inside an image: the base of browsing without restoring.

A byte of the partition is found in three steps: its block's rank among the
used blocks (a popcount index over the bitmap), the rank's offset in the
partclone stream (blocks plus one checksum per strip), and the zstd frame
holding that offset (the seek table). Blocks the filesystem did not use read as
zeros. Opening reads only the seek table, the header and the bitmap.

A read finds the runs of used blocks it covers from the bitmap's bits a word
at a time (not block by block), and builds its answer from views into the
decoded frames, copied once.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from rescue.blockio import binary
from rescue.errors import ImageDamagedError, ImageError, UnsupportedImageError
from rescue.image.partclone import (
    HEADER_SIZE,
    PIECE,
    BlockRanks,
    PartcloneHeader,
    block_offset,
    named,
    read_bitmap,
)
from rescue.image.seekable import INFLIGHT, SeekableZstdReader, SeekTable
from rescue.image.volumes import VolumeReader, volume_paths

_ZERO = memoryview(bytes(1 << 20))
_WINDOW = 4096
"""Blocks looked at per bitmap word (bounds the size of the integers the run search shifts)."""

Piece = bytes | memoryview


def zeros(n: int) -> Iterator[memoryview]:
    """``n`` zero bytes as views of one shared buffer (what unused blocks read as)."""
    while n > 0:
        take = min(n, len(_ZERO))
        yield _ZERO[:take]
        n -= take


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
        cache_bytes: int = INFLIGHT,
        prefetch: int = 0,
    ) -> None:
        """Open ``stream`` (split volumes found by name) with its own seek table,
        or with ``table`` when an index built elsewhere describes its frames.

        ``size`` is the partition's size: the header must describe a filesystem
        that fits it, and a bitmap the stream can hold, before the bitmap is read.
        ``cache_frames``, ``cache_bytes`` and ``prefetch`` are for the
        :class:`SeekableZstdReader` of the stream.
        """
        self._volumes = VolumeReader(volume_paths(stream))
        try:
            self._open(
                stream,
                raw,
                size,
                table,
                cache=cache_frames,
                cache_bytes=cache_bytes,
                prefetch=prefetch,
            )
        except BaseException:
            self._volumes.close()
            raise

    def _open(
        self,
        stream: Path,
        raw: bool,
        size: int | None,
        table: SeekTable | None,
        *,
        cache: int,
        cache_bytes: int,
        prefetch: int,
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
        self._z = SeekableZstdReader(
            f, table, cache_frames=cache, cache_bytes=cache_bytes, prefetch=prefetch
        )
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

    @property
    def stream_size(self) -> int:
        """Bytes of the decoded stream."""
        return self._z.size

    def limit_cache(self, cache_bytes: int) -> None:
        """Keep at most ``cache_bytes`` of decoded frames from now on."""
        self._z.limit_cache(cache_bytes)

    def _rank(self, block: int) -> int:
        return self._ranks.rank(block)

    def _bits(self, lo: int, hi: int) -> int:
        """Bitmap bytes ``lo`` to ``hi`` as one little-endian integer (bit n: block 8*lo+n)."""
        bm = self._ranks.bitmap
        k = (hi - 1) // PIECE
        if lo // PIECE == k:
            return int.from_bytes(bm.span(lo, hi), "little")
        low = bm.span(lo, k * PIECE)
        return int.from_bytes(low, "little") | int.from_bytes(bm.span(k * PIECE, hi), "little") << (
            8 * len(low)
        )

    def used_runs(self, first: int, stop: int) -> Iterator[tuple[int, int]]:
        """The used blocks from ``first`` up to ``stop`` (< total blocks) as ``(block, count)``
        runs, in order; a run never crosses a multiple of :data:`_WINDOW` blocks."""
        for base in range(first - first % _WINDOW, stop, _WINDOW):
            a, b = max(first, base), min(stop, base + _WINDOW)
            bits = self._bits(a >> 3, ((b - 1) >> 3) + 1) >> (a & 7) & ((1 << (b - a)) - 1)
            block = a
            while bits:
                skip = (bits & -bits).bit_length() - 1
                bits >>= skip
                block += skip
                ones = (~bits & (bits + 1)).bit_length() - 1
                yield block, ones
                bits >>= ones
                block += ones

    def pieces(self, offset: int, length: int) -> list[Piece]:
        """The bytes of :meth:`pread` as pieces (views into decoded frames, zeros) to join."""
        end = min(offset + length, self.size)
        if offset >= end:
            return []
        if self.raw:
            return list(self._z.views(offset, end - offset))
        h = self.header
        bs = h.block_size
        per_strip = h.blocks_per_checksum if h.checksum_size else 0
        out: list[Piece] = []
        pos = offset
        data_end = min(end, h.total_blocks * bs)
        if pos < data_end:
            rank = -1
            for block, count in self.used_runs(pos // bs, (data_end - 1) // bs + 1):
                # the blocks between two runs are unused: the rank goes on from the last run
                rank = self._ranks.rank(block) if rank < 0 else rank
                lo = block * bs
                if lo > pos:
                    out.extend(zeros(lo - pos))
                    pos = lo
                left = count
                while left:
                    # a run of used blocks inside one checksum strip is contiguous in the stream
                    n = min(left, per_strip - rank % per_strip) if per_strip else left
                    b = min(lo + n * bs, data_end)
                    want = b - pos
                    views = self._z.views(block_offset(h, rank) + pos - lo, want)
                    if sum(len(v) for v in views) != want:
                        raise ImageDamagedError(
                            "The stream ends before the blocks its bitmap promises."
                        )
                    out.extend(views)
                    pos = b
                    lo += n * bs
                    rank += n
                    left -= n
        if pos < end:
            out.extend(zeros(end - pos))
        return out

    def pread(self, offset: int, length: int) -> bytes:
        """``length`` bytes of the partition at ``offset`` (short only at its end)."""
        parts = self.pieces(offset, length)
        if len(parts) == 1:
            return bytes(parts[0])
        return b"".join(parts)

    def close(self) -> None:
        if hasattr(self, "_z"):
            self._z.close()
        self._volumes.close()
