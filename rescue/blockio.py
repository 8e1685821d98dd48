"""Reading and writing disks and disk files: sizes, windows, aligned I/O.

A partition is read as a window of its disk (offset + size), so a block device
and a regular file holding a raw disk are read the same way.
"""

from __future__ import annotations

import ctypes
import errno
import io
import os
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import BinaryIO, cast

from rescue.errors import DeviceError, DeviceNotFoundError

MEDIA_ERRORS = frozenset({errno.EIO, errno.ENODATA, errno.EILSEQ, errno.EBADMSG})
"""Errors of an unreadable sector: the capture goes on around them."""
GONE_ERRORS = frozenset({errno.ENODEV, errno.ENXIO, errno.ENOMEDIUM})
"""Errors of a device that disappeared: the capture stops."""


def device_size(path: str | Path) -> int:
    """Size in bytes of a block device or regular file."""
    try:
        st = os.stat(path)
    except FileNotFoundError as exc:
        raise DeviceNotFoundError(f"{path} does not exist.") from exc
    if stat.S_ISREG(st.st_mode):
        return st.st_size
    if not stat.S_ISBLK(st.st_mode):
        raise DeviceError(f"{path} is neither a disk, a partition nor a regular file.")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise DeviceError(f"{path} cannot be opened: {exc.strerror or exc}.") from exc
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def sysfs_text(path: Path) -> str | None:
    """A sysfs attribute's text, None when absent or empty."""
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def is_block_device(path: str | Path) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except FileNotFoundError:
        return False


def open_for_writing(path: str, *, read: bool = False) -> int:
    """A write (``read``: read-write) descriptor for a target; a block device exclusively."""
    flags = (os.O_RDWR if read else os.O_WRONLY) | os.O_CLOEXEC
    if is_block_device(path):
        flags |= os.O_EXCL
    try:
        return os.open(path, flags)
    except OSError as exc:
        raise DeviceError(f"Cannot open {path} for writing: {exc.strerror}.") from exc


def binary(f: io.RawIOBase) -> BinaryIO:
    """Our raw file objects where an API asks for ``BinaryIO`` (read/seek/tell are all it uses)."""
    return cast(BinaryIO, f)


class Window(io.RawIOBase):
    """A read-only file object over ``size`` bytes of ``fd`` starting at ``offset``.

    Uses ``pread``, so several windows may share one descriptor. Reads past the
    window's end return short, as at the end of a file.
    """

    def __init__(self, fd: int, offset: int, size: int) -> None:
        super().__init__()
        self._fd = fd
        self._offset = offset
        self._size = size
        self._pos = 0

    @property
    def size(self) -> int:
        return self._size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            new = pos
        elif whence == io.SEEK_CUR:
            new = self._pos + pos
        elif whence == io.SEEK_END:
            new = self._size + pos
        else:
            raise ValueError(f"bad whence {whence}")
        if new < 0:
            raise ValueError("negative seek position")
        self._pos = new
        return new

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        want = min(len(buffer), max(0, self._size - self._pos))
        if want == 0:
            return 0
        view = memoryview(buffer).cast("B")[:want]
        got = os.preadv(self._fd, [view], self._offset + self._pos)
        self._pos += got
        return got

    def pread(self, offset: int, length: int) -> bytes:
        """Bytes at ``offset`` within the window (short only at its end)."""
        length = min(length, max(0, self._size - offset))
        return os.pread(self._fd, length, self._offset + offset) if length else b""


IOV_MAX = 1024
"""The most pieces one vectored read or write takes (Linux's UIO_MAXIOV)."""


def advance_views(views: list[memoryview], n: int) -> list[memoryview]:
    """``views`` without their first ``n`` bytes: what a short vectored read or write left."""
    k = 0
    while k < len(views) and n >= len(views[k]):
        n -= len(views[k])
        k += 1
    rest = views[k:]
    if n:
        rest[0] = rest[0][n:]
    return rest


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int, path: str) -> None:
    """Write all of ``data`` at ``offset`` (a short write goes on); an error names ``path``."""
    pwritev_all(fd, [data], offset, path)


def pwritev_all(
    fd: int, pieces: Sequence[bytes | bytearray | memoryview], offset: int, path: str
) -> None:
    """Write ``pieces`` back to back at ``offset`` with as few ``pwritev`` calls as the
    kernel allows (a short write goes on); an error names ``path``."""
    views = [memoryview(p).cast("B") for p in pieces if len(p)]
    done = 0
    while views:
        try:
            n = os.pwritev(fd, views[:IOV_MAX], offset + done)
        except OSError as exc:
            raise DeviceError(
                f"Write error on {path} at byte {offset + done}: {exc.strerror or exc}."
            ) from exc
        if n == 0:
            raise DeviceError(f"Write error on {path} at byte {offset + done}: no room left.")
        done += n
        views = advance_views(views, n)


def write_all(fd: int, data: bytes | bytearray | memoryview, path: str | Path) -> None:
    """Write all of ``data`` at the file position (a short write goes on); errors name ``path``."""
    view = memoryview(data)
    done = 0
    while done < len(view):
        try:
            n = os.write(fd, view[done:])
        except OSError as exc:
            raise DeviceError(f"Write error on {path}: {exc.strerror or exc}.") from exc
        if n == 0:
            raise DeviceError(f"Write error on {path}: no room left.")
        done += n


def write_durable(path: Path, data: bytes | bytearray | memoryview, *, new: bool = False) -> None:
    """Write ``path`` whole and fsync it (``new``: it must not exist yet); errors name it."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_EXCL if new else os.O_TRUNC)
    fd = os.open(path, flags, 0o644)
    try:
        write_all(fd, data, path)
        os.fsync(fd)
    finally:
        os.close(fd)


def merge_ranges(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """``(offset, length)`` ranges sorted, overlapping and touching ones joined, empty dropped."""
    out: list[tuple[int, int]] = []
    for off, n in sorted(r for r in ranges if r[1] > 0):
        if out and off <= out[-1][0] + out[-1][1]:
            last_off, last_n = out[-1]
            out[-1] = (last_off, max(last_n, off + n - last_off))
        else:
            out.append((off, n))
    return out


FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]


def punch_hole(fd: int, offset: int, length: int) -> bool:
    """Free ``length`` bytes of a file from ``offset`` on, which then read as zeros (the
    file keeps its size); False where the filesystem cannot (the caller writes zeros)."""
    mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
    return int(_LIBC.fallocate(fd, mode, offset, length)) == 0
