"""What every filesystem module returns: which blocks of a partition hold data.

The bitmap has partclone's layout (block ``n`` is bit ``n & 7`` of byte ``n >> 3``,
least significant bit first), so it can be written into an image stream as is.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from rescue.errors import FilesystemError

RAW_FSTYPE = "dd"
"""The name of a raw copy (every byte) in image file names and dev-fs.list, as Clonezilla's."""

_NONZERO = re.compile(rb"[^\x00]+")
_NOT_FF = re.compile(rb"[^\xff]")


@dataclass(frozen=True)
class Allocation:
    """The used blocks of one filesystem, read from its own on-disk structures."""

    fstype: str
    """Name in image file names and dev-fs.list: ext4, ntfs, vfat, xfs, btrfs, dd, ..."""
    partclone_fs: str
    """Filesystem name in the partclone header (EXTFS, NTFS, FAT32, ...); "raw" for dd."""
    block_size: int
    total_blocks: int
    device_size: int
    """Bytes of the partition (may exceed total_blocks * block_size, e.g. NTFS)."""
    bitmap: bytes = field(repr=False)
    used_blocks: int
    """Number of set bits in ``bitmap``."""
    fs_used_blocks: int
    """Used blocks as the filesystem's own counters say (may differ from the bitmap)."""
    label: str | None = None
    uuid: str | None = None
    warnings: tuple[str, ...] = ()

    @property
    def raw(self) -> bool:
        """Every block is kept: no filesystem was read (a dd stream)."""
        return self.fstype == RAW_FSTYPE

    @property
    def used_bytes(self) -> int:
        return self.used_blocks * self.block_size

    def is_used(self, block: int) -> bool:
        return bool(self.bitmap[block >> 3] >> (block & 7) & 1)

    def runs(self) -> Iterator[tuple[int, int]]:
        """Used blocks as ``(first_block, count)`` runs in ascending order."""
        return bitmap_runs(self.bitmap, self.total_blocks)


def read_at(f: BinaryIO, offset: int, size: int, fs: str) -> bytes:
    """Exactly ``size`` bytes at ``offset``; a short read means the structures lie."""
    f.seek(offset)
    data = f.read(size)
    if len(data) != size:
        raise FilesystemError(f"{fs}: cannot read {size} bytes at {offset} (the partition ends).")
    return data


def bitmap_runs(bitmap: bytes, total_blocks: int) -> Iterator[tuple[int, int]]:
    """Runs of set bits as ``(first, count)``, merged, never past ``total_blocks``.

    Scans whole bytes with regular expressions (in C) and looks at single bits
    only at the edges of a run, so a 32 MiB bitmap takes well under a second.
    """
    start = -1
    end = -1
    for m in _NONZERO.finditer(bitmap):
        lo, hi = m.start(), m.end()
        chunk = bitmap[lo:hi]
        pos = 0
        while pos < len(chunk):
            full = _NOT_FF.search(chunk, pos)
            if full is None:
                # bytes pos..end are all 0xff
                a, b = (lo + pos) * 8, hi * 8
                pos = len(chunk)
            elif full.start() > pos:
                a, b = (lo + pos) * 8, (lo + full.start()) * 8
                pos = full.start()
            else:
                byte = chunk[pos]
                base = (lo + pos) * 8
                for bit in range(8):
                    if byte >> bit & 1:
                        n = base + bit
                        if n == end:
                            end += 1
                        else:
                            if start >= 0:
                                yield start, min(end, total_blocks) - start
                            start, end = n, n + 1
                pos += 1
                continue
            if a == end:
                end = b
            else:
                if start >= 0:
                    yield start, min(end, total_blocks) - start
                start, end = a, b
    if start >= 0 and start < total_blocks:
        yield start, min(end, total_blocks) - start


def bitmap_from_runs(total_blocks: int, runs: Iterable[tuple[int, int]]) -> bytearray:
    """A partclone-layout bitmap with the given ``(first, count)`` runs set."""
    bm = bytearray((total_blocks + 7) // 8)
    for first, count in runs:
        set_run(bm, first, count)
    return bm


def set_run(bm: bytearray, first: int, count: int) -> None:
    """Set bits ``first .. first+count-1`` of ``bm``."""
    if count <= 0:
        return
    last = first + count  # exclusive
    lo_byte = (first + 7) >> 3
    hi_byte = last >> 3
    if lo_byte <= hi_byte:
        bm[lo_byte:hi_byte] = b"\xff" * (hi_byte - lo_byte)
        for n in range(first, min(last, lo_byte * 8)):
            bm[n >> 3] |= 1 << (n & 7)
        for n in range(max(first, hi_byte * 8), last):
            bm[n >> 3] |= 1 << (n & 7)
    else:
        for n in range(first, last):
            bm[n >> 3] |= 1 << (n & 7)


def clear_run(bm: bytearray, first: int, count: int) -> None:
    """Clear bits ``first .. first+count-1`` of ``bm``."""
    last = first + count
    lo_byte = (first + 7) >> 3
    hi_byte = last >> 3
    if lo_byte <= hi_byte:
        bm[lo_byte:hi_byte] = bytes(hi_byte - lo_byte)
        edges = [*range(first, min(last, lo_byte * 8)), *range(max(first, hi_byte * 8), last)]
    else:
        edges = list(range(first, last))
    for n in edges:
        bm[n >> 3] &= ~(1 << (n & 7)) & 0xFF


def count_bits(bitmap: bytes, total_blocks: int) -> int:
    """Set bits among the first ``total_blocks`` bits."""
    n = int.from_bytes(bitmap, "little").bit_count()
    extra = len(bitmap) * 8 - total_blocks
    if extra > 0:
        n -= (bitmap[-1] >> (8 - extra)).bit_count()
    return n
