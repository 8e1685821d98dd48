"""Region hashes: one digest for each fixed-size region of a partition's used data.

Every capture stores beside each partition stream a list of digests, one for
each :data:`REGION_SIZE` region of the partition (aligned to the partition's
own offsets) that holds used bytes. A later capture of the same disk compares
its own digests with the list of an earlier image to find what changed without
decompressing that image (FORMAT.md section 12).

A region's digest is XXH3-128 over the region's used bytes in order, then each
run of used bytes in the region (its offset in the region and its length, two
little-endian u32; adjacent runs joined), then the number of runs (u32): a
block that becomes used or free changes the digest as surely as a changed byte,
and how the bytes were read (in which pieces) does not. A region that held
unreadable bytes when it was read gets :data:`UNKNOWN` (it never matches anything).

The list is a zstd stream of 24-byte records (u64 region index, digest) in
increasing index order; it is written as the partition is read, never held in
memory (a 1 TB partition has about 15 million regions).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from typing import IO

import xxhash
import zstandard

REGION_SIZE = 64 * 1024
RECORD = struct.Struct("<Q16s")
UNKNOWN = b"\xff" * 16
"""The digest of a region that could not be read whole."""
SUFFIX = ".rescue-regions.zst"
_RUN = struct.Struct("<II")
_LEVEL = 3
_BATCH = 4096
"""Records gathered before they go to the compressor."""


def regions_name(part: str) -> str:
    """The region list's file name for partition ``part`` (``sda1.rescue-regions.zst``).

    It holds neither ``-ptcl-img`` nor ``-img``: Clonezilla's own file patterns
    do not take it for a stream."""
    return f"{part}{SUFFIX}"


class RegionHasher:
    """Takes a partition's used bytes in increasing offset order; writes the region list.

    ``feed`` the used bytes as they are read, ``spoil`` the ranges that could not
    be read, ``close`` at the end (it writes the last region and ends the zstd
    stream, leaving ``out`` open).
    """

    def __init__(self, out: IO[bytes], region_size: int = REGION_SIZE) -> None:
        self.region_size = region_size
        self._writer = zstandard.ZstdCompressor(level=_LEVEL).stream_writer(
            out, closefd=False, write_return_read=True
        )
        self._batch: list[bytes] = []
        self._region = -1
        self._hash = xxhash.xxh3_128()
        self._runs: list[tuple[int, int]] = []
        """The current region's used runs (offset in the region, length)."""
        self._spoiled: list[tuple[int, int]] = []
        self._last = -1

    def spoil(self, lo: int, hi: int) -> None:
        """Bytes ``[lo, hi)`` of the partition could not be read: their regions are UNKNOWN."""
        if hi > lo:
            self._spoiled.append((lo, hi))

    def feed(self, offset: int, views: Iterable[memoryview | bytes]) -> None:
        """The used bytes starting at partition byte ``offset``, contiguous, in ``views``."""
        size = self.region_size
        for v in views:
            n = len(v)
            at = 0
            while at < n:
                region, within = divmod(offset, size)
                if region != self._region:
                    self._next(region)
                take = min(n - at, size - within)
                runs = self._runs
                if runs and runs[-1][0] + runs[-1][1] == within:
                    runs[-1] = (runs[-1][0], runs[-1][1] + take)
                else:
                    runs.append((within, take))
                self._hash.update(v[at : at + take])
                offset += take
                at += take

    def _next(self, region: int) -> None:
        self._finish()
        if region <= self._last:
            raise ValueError("region hashes must be fed in increasing offset order")
        self._region = region
        self._hash.reset()
        self._runs = []

    def _finish(self) -> None:
        r = self._region
        if r < 0:
            return
        lo, hi = r * self.region_size, (r + 1) * self.region_size
        self._spoiled = [(a, b) for a, b in self._spoiled if b > lo]
        bad = any(a < hi for a, _b in self._spoiled)
        h = self._hash
        for within, n in self._runs:
            h.update(_RUN.pack(within, n))
        h.update(len(self._runs).to_bytes(4, "little"))
        self._batch.append(RECORD.pack(r, UNKNOWN if bad else h.digest()))
        self._last = r
        self._region = -1
        if len(self._batch) >= _BATCH:
            self._flush()

    def _flush(self) -> None:
        if self._batch:
            self._writer.write(b"".join(self._batch))
            self._batch = []

    def close(self) -> None:
        self._finish()
        self._flush()
        self._writer.close()  # type: ignore[no-untyped-call]


def read_regions(f: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """(region index, digest) of every region in a region list, in order."""
    reader = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True)
    tail = b""
    while chunk := reader.read(RECORD.size * _BATCH):
        data = tail + chunk
        whole = len(data) - len(data) % RECORD.size
        yield from RECORD.iter_unpack(data[:whole])
        tail = data[whole:]
    if tail:
        raise ValueError("the region list ends inside a record")
