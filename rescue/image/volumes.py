"""Split volumes as Clonezilla names them (GNU ``split -a 2``: .aa, .ab, ...).

A stream that fits (or is not split) is one file named after the stream; a
split stream is ``NAME.aa``, ``NAME.ab``, ... each exactly the split size but
the last. The writer hashes each file as it goes; the reader presents the
parts as one seekable file.
"""

from __future__ import annotations

import hashlib
import io
import os
import string
from pathlib import Path

from rescue.errors import ImageDamagedError

_LETTERS = string.ascii_lowercase


def split_suffix(index: int) -> str:
    """aa, ab, ..., zz (676 volumes, as ``split -a 2`` allows)."""
    if not 0 <= index < 26 * 26:
        raise ValueError("more than 676 volumes")
    return _LETTERS[index // 26] + _LETTERS[index % 26]


class VolumeWriter(io.RawIOBase):
    """Writes a stream into one file or split volumes, hashing each file."""

    def __init__(self, base: Path, split_size: int | None) -> None:
        super().__init__()
        if split_size is not None and split_size <= 0:
            raise ValueError("split size must be positive")
        self.base = base
        self.split_size = split_size
        self._index = -1
        self._fd = -1
        self._written = 0
        self._hash = hashlib.sha256()
        self._done: list[tuple[Path, int, str]] = []
        self._path: Path | None = None
        self._open_next()

    def _name(self) -> Path:
        if self.split_size is None:
            return self.base
        return self.base.with_name(f"{self.base.name}.{split_suffix(self._index)}")

    def _open_next(self) -> None:
        self._index += 1
        self._path = self._name()
        self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        self._written = 0
        self._hash = hashlib.sha256()

    def _finish_current(self, fsync: bool) -> None:
        assert self._path is not None
        if fsync:
            os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1
        self._done.append((self._path, self._written, self._hash.hexdigest()))

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(data).cast("B")
        total = len(view)
        while view:
            room = len(view)
            if self.split_size is not None:
                room = min(room, self.split_size - self._written)
                if room == 0:
                    self._finish_current(fsync=True)
                    self._open_next()
                    continue
            piece = view[:room]
            done = 0
            while done < len(piece):
                done += os.write(self._fd, piece[done:])
            self._hash.update(piece)
            self._written += len(piece)
            view = view[room:]
        return total

    def close(self, fsync: bool = True) -> None:
        """Close (and by default fsync) every volume and the folder holding them."""
        if self._fd >= 0:
            self._finish_current(fsync)
            if fsync:
                dfd = os.open(self.base.parent, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
        super().close()

    @property
    def files(self) -> list[tuple[Path, int, str]]:
        """(path, size, sha256 hex) of every volume, once closed."""
        return list(self._done)


def volume_paths(base: Path) -> list[Path]:
    """The files holding the stream ``base``: itself, or its .aa, .ab, ... volumes in order."""
    if base.exists():
        return [base]
    parts = sorted(base.parent.glob(f"{base.name}.[a-z][a-z]"))
    if not parts:
        raise ImageDamagedError(f"{base} is missing (no file and no split volumes).")
    for i, p in enumerate(parts):
        want = base.with_name(f"{base.name}.{split_suffix(i)}")
        if p != want:
            raise ImageDamagedError(
                f"Split volume {want.name} is missing (found {p.name} after it)."
            )
    return parts


class VolumeReader(io.RawIOBase):
    """One read-only, seekable file over a stream's volumes."""

    def __init__(self, paths: list[Path]) -> None:
        super().__init__()
        self._paths = paths
        self._fds = [os.open(p, os.O_RDONLY | os.O_CLOEXEC) for p in paths]
        self._starts = [0]
        for fd in self._fds:
            self._starts.append(self._starts[-1] + os.fstat(fd).st_size)
        self._pos = 0

    @property
    def size(self) -> int:
        return self._starts[-1]

    def current_volume(self) -> str | None:
        """Name of the volume the last read ended in (for error messages)."""
        for k in range(len(self._paths)):
            if self._starts[k] <= max(0, self._pos - 1) < self._starts[k + 1]:
                return self._paths[k].name
        return self._paths[-1].name if self._paths else None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + pos < 0:
            raise ValueError("negative seek position")
        self._pos = base + pos
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._pos < self.size:
            i = next(k for k in range(len(self._fds)) if self._starts[k + 1] > self._pos)
            inner = self._pos - self._starts[i]
            want = min(len(view) - done, self._starts[i + 1] - self._pos)
            n = os.preadv(self._fds[i], [view[done : done + want]], inner)
            if n == 0:
                raise ImageDamagedError(f"{self._paths[i]} shrank while being read.")
            done += n
            self._pos += n
        return done

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        super().close()
