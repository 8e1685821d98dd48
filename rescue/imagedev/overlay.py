"""A copy-on-write view of an image partition: the image underneath, a scratch file on top.

Shrinking a filesystem needs the whole filesystem on a writable device, and an
image is read-only (and compressed). The overlay serves the partition's bytes
from the image until a block is written; a written 4 KiB block lives in a
sparse scratch file from then on. The image is never written, and the scratch
file only grows by what the resizing tool actually writes.

The scratch file is unlinked as soon as it is open: nothing is left behind
whatever happens to the process serving it.
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path
from typing import Protocol

from rescue.blockio import punch_hole

BLOCK = 4096


class RandomAccess(Protocol):
    size: int

    def pread(self, offset: int, length: int) -> bytes: ...

    def close(self) -> None: ...


class Overlay:
    """``base`` with the blocks marked in ``written`` read from the file ``fd`` instead."""

    def __init__(self, base: RandomAccess, fd: int, written: bytearray | None = None) -> None:
        self._base = base
        self.size = base.size
        self._fd = fd
        blocks = (self.size + BLOCK - 1) // BLOCK
        self._written = written if written is not None else bytearray((blocks + 7) // 8)
        self._lock = threading.Lock()
        self.written_blocks = 0

    @classmethod
    def create(cls, base: RandomAccess, path: Path) -> Overlay:
        """A writable overlay whose writes go to a new scratch file at ``path`` (then unlinked)."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        os.unlink(path)
        return cls(base, fd)

    def written_map(self) -> bytes:
        """Which 4 KiB blocks were written (bit ``n & 7`` of byte ``n >> 3``)."""
        with self._lock:
            return bytes(self._written)

    def _is_written(self, block: int) -> bool:
        return bool(self._written[block >> 3] >> (block & 7) & 1)

    def _mark(self, block: int) -> None:
        if not self._is_written(block):
            self._written[block >> 3] |= 1 << (block & 7)
            self.written_blocks += 1

    def _any_written(self, first: int, last: int) -> bool:
        return any(self._written[first >> 3 : (last >> 3) + 1])

    def pread(self, offset: int, length: int) -> bytes:
        length = max(0, min(length, self.size - offset))
        if length == 0:
            return b""
        first, last = offset // BLOCK, (offset + length - 1) // BLOCK
        with self._lock:
            if not self._any_written(first, last):
                runs = [(False, offset, offset + length)]
            else:
                runs = self._runs(offset, offset + length, first, last)
            parts = [
                os.pread(self._fd, b - a, a) if top else b"" for top, a, b in runs
            ]  # overlay bytes are read under the lock: a concurrent write cannot tear them
        out = bytearray()
        for (top, a, b), data in zip(runs, parts, strict=True):
            out += data if top else self._base.pread(a, b - a)
        return bytes(out)

    def _runs(self, start: int, end: int, first: int, last: int) -> list[tuple[bool, int, int]]:
        """(written?, from, to) pieces of ``start..end``, split where the block state changes."""
        runs: list[tuple[bool, int, int]] = []
        for block in range(first, last + 1):
            a, b = max(start, block * BLOCK), min(end, (block + 1) * BLOCK)
            top = self._is_written(block)
            if runs and runs[-1][0] == top:
                runs[-1] = (top, runs[-1][1], b)
            else:
                runs.append((top, a, b))
        return runs

    def pwrite(self, offset: int, data: bytes) -> int:
        if offset + len(data) > self.size:
            raise OSError(errno.ENOSPC, "write past the end of the partition")
        if not data:
            return 0
        first, last = offset // BLOCK, (offset + len(data) - 1) // BLOCK
        with self._lock:
            # a block written in part takes the rest of its bytes from the image first
            for block in {first, last}:
                lo, hi = block * BLOCK, min((block + 1) * BLOCK, self.size)
                covered = offset <= lo and offset + len(data) >= hi
                if not covered and not self._is_written(block):
                    self._write_exact(self._base.pread(lo, hi - lo), lo)
                    self._mark(block)
            self._write_exact(data, offset)
            for block in range(first, last + 1):
                self._mark(block)
        return len(data)

    def zero(self, offset: int, length: int) -> None:
        """Make ``length`` bytes from ``offset`` read as zeros: what a discard or a
        write-zeroes request of the block layer asks. Whole blocks become a hole in the
        scratch file (no space taken); the pieces of blocks at either end are written."""
        end = offset + length
        if offset < 0 or end > self.size:
            raise OSError(errno.ENOSPC, "zeroing past the end of the partition")
        lo, hi = -(-offset // BLOCK) * BLOCK, end // BLOCK * BLOCK
        if lo >= hi:
            if end > offset:
                self.pwrite(offset, bytes(end - offset))
            return
        if offset < lo:
            self.pwrite(offset, bytes(lo - offset))
        if hi < end:
            self.pwrite(hi, bytes(end - hi))
        with self._lock:
            if os.fstat(self._fd).st_size < hi:
                os.ftruncate(self._fd, hi)  # a hole past the end of the file would read short
            if not punch_hole(self._fd, lo, hi - lo):
                chunk = bytes(min(hi - lo, 1 << 20))
                for at in range(lo, hi, len(chunk)):
                    self._write_exact(chunk[: min(len(chunk), hi - at)], at)
            for block in range(lo // BLOCK, hi // BLOCK):
                self._mark(block)

    def _write_exact(self, data: bytes, offset: int) -> None:
        """All of ``data`` into the scratch file, or ENOSPC (what the block layer above expects)."""
        view = memoryview(data)
        done = 0
        while done < len(view):
            n = os.pwrite(self._fd, view[done:], offset + done)
            if n == 0:
                raise OSError(errno.ENOSPC, "the scratch file is full")
            done += n

    def close(self) -> None:
        os.close(self._fd)
        self._base.close()
