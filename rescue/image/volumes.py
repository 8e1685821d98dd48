"""Split volumes as Clonezilla names them (GNU ``split -a 2``: .aa, .ab, ...).

A stream that fits (or is not split) is one file named after the stream; a
split stream is ``NAME.aa``, ``NAME.ab``, ... each exactly the split size but
the last. The writer hashes each file as it goes; the reader presents the
parts as one seekable file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import mmap
import os
import string
from pathlib import Path
from typing import Any

from rescue.errors import BadInputError, ImageDamagedError
from rescue.image.folder import open_member, plain_name, sealed_folder
from rescue.text import printable

_LETTERS = string.ascii_lowercase
MAX_VOLUMES = 26 * 26


def split_suffix(index: int) -> str:
    """aa, ab, ..., zz (676 volumes, as ``split -a 2`` allows)."""
    if not 0 <= index < MAX_VOLUMES:
        raise ValueError("more than 676 volumes")
    return _LETTERS[index // 26] + _LETTERS[index % 26]


_ALIGN = 4096
_CHUNK = 8 << 20


class VolumeWriter(io.RawIOBase):
    """Writes a stream into one file or split volumes, hashing each file.

    Data goes to disk with O_DIRECT in 8 MiB aligned chunks where the
    destination filesystem allows it: no copy through the page cache (which
    costs as much CPU as compressing on a small machine), no eviction of useful
    cache, and nothing left to flush at the end. The unaligned tail of each file
    is written normally. Filesystems that refuse O_DIRECT get ordinary writes.
    """

    def __init__(
        self,
        base: Path,
        split_size: int | None,
        *,
        direct: bool = True,
        resume_at: int | None = None,
    ) -> None:
        """Start a new stream, or with ``resume_at`` go on with one whose first
        ``resume_at`` bytes are on disk (anything after them is dropped)."""
        super().__init__()
        if split_size is not None and split_size <= 0:
            raise ValueError("split size must be positive")
        self.base = base
        self.split_size = split_size
        self._direct = direct and hasattr(os, "O_DIRECT")
        self._buf = mmap.mmap(-1, _CHUNK)  # page-aligned, as O_DIRECT needs
        self._fill = 0
        self._index = -1
        self._fd = -1
        self._written = 0
        self._done_bytes = 0
        self._hash = hashlib.sha256()
        self._done: list[tuple[Path, int, str]] = []
        self._path: Path | None = None
        self._rehash = resume_at is not None
        if resume_at is None:
            self._open_next()
        else:
            self._reopen(resume_at)

    def _reopen(self, at: int) -> None:
        """Truncate the stream to ``at`` bytes and open it for appending there."""
        k, inner = (0, at) if self.split_size is None else divmod(at, self.split_size)
        if self.split_size is not None and inner == 0 and k > 0:
            k, inner = k - 1, self.split_size
        existing = volume_paths(self.base)
        for extra in existing[k + 1 :]:
            extra.unlink()
        for i in range(k):
            self._index = i
            self._done.append((self._name(), self.split_size or 0, ""))
            self._done_bytes += self.split_size or 0
        self._index = k
        self._path = self._name()
        flags = os.O_RDWR | os.O_CLOEXEC
        fd = os.open(self._path, flags)
        try:
            os.ftruncate(fd, inner)
            aligned = inner - inner % _ALIGN
            tail = os.pread(fd, inner - aligned, aligned)
        finally:
            os.close(fd)
        self._fd = os.open(
            self._path, os.O_WRONLY | os.O_CLOEXEC | (os.O_DIRECT if self._direct else 0)
        )
        os.lseek(self._fd, aligned, os.SEEK_SET)
        self._buf[: len(tail)] = tail
        self._fill = len(tail)
        self._written = inner

    @property
    def durable(self) -> int:
        """Bytes of the stream written to the files (not those still in the buffer)."""
        return self._done_bytes + self._written - self._fill

    def sync(self) -> None:
        """Make :attr:`durable` bytes survive a crash (data and file size)."""
        if self._fd >= 0:
            os.fsync(self._fd)

    def _name(self) -> Path:
        if self.split_size is None:
            return self.base
        return self.base.with_name(f"{self.base.name}.{split_suffix(self._index)}")

    def _open_next(self) -> None:
        self._index += 1
        if self._index >= MAX_VOLUMES:
            raise BadInputError(
                f"Splitting into {self.split_size}-byte volumes needs more than {MAX_VOLUMES} "
                "files (Clonezilla's .aa-.zz names).",
                hint="Choose a larger --split size.",
            )
        self._path = self._name()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        if self._direct:
            try:
                self._fd = os.open(self._path, flags | os.O_DIRECT, 0o644)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self._direct = False
        if not self._direct:
            self._fd = os.open(self._path, flags, 0o644)
        self._written = 0
        self._hash = hashlib.sha256()

    def _write_all(self, view: memoryview) -> None:
        done = 0
        while done < len(view):
            try:
                done += os.write(self._fd, view[done:])
            except OSError as exc:
                if exc.errno != errno.EINVAL or not self._direct_on():
                    raise
                self._buffered()  # the filesystem took O_DIRECT at open but not at write

    def _direct_on(self) -> bool:
        return bool(fcntl.fcntl(self._fd, fcntl.F_GETFL) & os.O_DIRECT)

    def _buffered(self) -> None:
        flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
        fcntl.fcntl(self._fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)

    def _flush(self) -> None:
        """Write the buffer: its aligned part directly, an unaligned tail (file end) normally."""
        view = memoryview(self._buf)[: self._fill]
        aligned = self._fill - self._fill % _ALIGN
        try:
            if aligned:
                self._write_all(view[:aligned])
            if aligned < self._fill:
                if self._direct_on():
                    self._buffered()
                self._write_all(view[aligned:])
        finally:
            view.release()
        self._fill = 0

    def _finish_current(self, fsync: bool) -> None:
        assert self._path is not None
        try:
            self._flush()
            if fsync:
                os.fsync(self._fd)
        finally:  # never leak the descriptor (a full disk must still be unmountable)
            os.close(self._fd)
            self._fd = -1
        self._done.append((self._path, self._written, self._hash.hexdigest()))
        self._done_bytes += self._written

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
            take = min(room, _CHUNK - self._fill)
            piece = view[:take]
            self._buf[self._fill : self._fill + take] = piece
            self._hash.update(piece)
            self._fill += take
            self._written += take
            view = view[take:]
            if self._fill == _CHUNK:
                self._flush()
        return total

    def close(self, fsync: bool = True) -> None:
        """Close (and by default fsync) every volume and the folder holding them.

        Without ``fsync`` (after an error) a failure to write the last buffered
        bytes is ignored: they are past the last checkpoint anyway.
        """
        if self._fd >= 0:
            try:
                self._finish_current(fsync)
            except OSError:
                if fsync:
                    raise
            if fsync:
                dfd = os.open(self.base.parent, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
        if not self._buf.closed:
            # a failed write's traceback may still hold a view of the buffer: the GC frees it
            with contextlib.suppress(BufferError):
                self._buf.close()
        super().close()

    @property
    def files(self) -> list[tuple[Path, int, str]]:
        """(path, size, sha256 hex) of every volume, once closed."""
        if self._rehash and self._done:  # a resumed stream: hash what is on disk
            with VolumeReader([p for p, _, _ in self._done], hashing=True) as v:
                digests = v.digests()
            self._done = [(p, size, d) for p, (_, size, d) in zip(
                [p for p, _, _ in self._done], digests, strict=True)]  # fmt: skip
            self._rehash = False
        return list(self._done)


def _split_names(base: Path) -> list[str]:
    """Names of the folder's entries that look like volumes of ``base`` (NAME.aa ...)."""
    prefix = base.name + "."
    try:
        entries = os.listdir(base.parent)
    except OSError as exc:
        raise ImageDamagedError(f"{base.parent} cannot be listed: {exc.strerror or exc}.") from exc
    return sorted(
        e
        for e in entries
        if len(e) == len(prefix) + 2
        and e.startswith(prefix)
        and e[-2] in _LETTERS
        and e[-1] in _LETTERS
    )


def _check_member(path: Path) -> None:
    """``path`` is a regular file of its folder (no link, FIFO, device or folder)."""
    os.close(open_member(path.parent, path.name, "a stream"))


def volume_paths(base: Path) -> list[Path]:
    """The files holding the stream ``base``: itself, or its .aa, .ab, ... volumes in order.

    Each is a regular file directly inside the stream's folder: a symbolic
    link, a FIFO, a device or a folder in its place is damage, found at once.
    In an unlocked encrypted image, the files of the stream's sealed copy.
    """
    plain_name(base.name, "a stream")
    handler = sealed_folder(base.parent)
    if handler is not None and handler.is_sealed(base.name):
        base = base.with_name(handler.stored_name(base.name))
    try:
        os.lstat(base)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ImageDamagedError(
            f"{printable(base.name)} in {base.parent} cannot be read: {exc.strerror or exc}."
        ) from exc
    else:
        _check_member(base)
        return [base]
    names = _split_names(base)
    if not names:
        raise ImageDamagedError(f"{base} is missing (no file and no split volumes).")
    parts = []
    for i, name in enumerate(names):
        want = f"{base.name}.{split_suffix(i)}"
        if name != want:
            raise ImageDamagedError(
                f"Split volume {printable(want)} is missing (found {printable(name)} after it)."
            )
        path = base.with_name(name)
        _check_member(path)
        parts.append(path)
    return parts


class VolumeReader(io.RawIOBase):
    """One read-only, seekable file over a stream's volumes.

    Each volume is opened as :func:`rescue.image.folder.open_member` opens a
    file of an image folder: never through a symbolic link, never a FIFO or a
    device, never waiting. The volumes of a sealed stream (an unlocked encrypted
    image) read as the plain stream: positions, sizes and reads are the plain
    stream's, every chunk authenticated as it is read; ``hashing`` and
    :meth:`digests` are of the files as stored.
    """

    def __init__(
        self,
        paths: list[Path],
        *,
        hashing: bool = False,
        writable: bool = False,
        unfinished: bool = False,
    ) -> None:
        """``unfinished``: the volumes of a capture that was interrupted (a sealed stream
        has no last chunk then)."""
        super().__init__()
        self._fds: list[int] = []
        self._paths = paths
        self._hashes = [hashlib.sha256() for _ in paths] if hashing else None
        self._hashed = 0
        """With ``hashing``: bytes from the start hashed so far (sequential reads are hashed
        as they pass, so a verify reads each file once)."""
        try:
            for p in paths:
                if writable:  # the capture's own volumes, just written
                    fd = os.open(p, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
                else:
                    fd = open_member(p.parent, p.name, "a stream volume")
                self._fds.append(fd)
        except BaseException:
            for fd in self._fds:
                os.close(fd)
            self._fds = []
            raise
        self._starts = [0]
        for fd in self._fds:
            self._starts.append(self._starts[-1] + os.fstat(fd).st_size)
        self._pos = 0
        self._opener: Any = None
        handler = sealed_folder(paths[0].parent) if paths else None
        stream = handler.stream_name(paths[0].name) if handler is not None else None
        if handler is not None and stream is not None:
            try:
                self._opener = handler.opener(stream, self._starts[-1], self._raw_pread,
                                              self._place, unfinished=unfinished)  # fmt: skip
            except BaseException:
                self.close()
                raise
        self._size = self._starts[-1] if self._opener is None else self._opener.size

    @property
    def size(self) -> int:
        return self._size

    @property
    def stored_size(self) -> int:
        """Bytes of the files as stored (the sealed files of an encrypted image's stream)."""
        return self._starts[-1]

    def _place(self, stored: int) -> tuple[str, int]:
        """The volume (its path) holding stored byte ``stored``, and the offset in it."""
        for k, p in enumerate(self._paths):
            if stored < self._starts[k + 1] or k == len(self._paths) - 1:
                return f"{p.parent}/{printable(p.name)}", stored - self._starts[k]
        return "", stored

    def _stored_at(self, offset: int) -> int:
        if self._opener is None:
            return offset
        return int(self._opener.sealed_offset(offset // self._opener.chunk_size))

    def _raw_pread(self, offset: int, n: int) -> bytes:
        """Stored bytes of a sealed stream (hashed when read in order, with ``hashing``)."""
        return bytes(self._stored(offset, n, hashing=self._hashes is not None))

    def _stored(self, offset: int, n: int, *, hashing: bool) -> bytearray:
        """``n`` stored bytes at ``offset`` (fewer at the end), read from the volumes."""
        n = max(0, min(n, self._starts[-1] - offset))
        out = bytearray(n)
        view = memoryview(out)
        done = 0
        while done < n:
            pos = offset + done
            i = next(k for k in range(len(self._fds)) if self._starts[k + 1] > pos)
            want = min(n - done, self._starts[i + 1] - pos)
            got = os.preadv(self._fds[i], [view[done : done + want]], pos - self._starts[i])
            if got == 0:
                raise ImageDamagedError(f"{self._paths[i]} shrank while being read.")
            if hashing and self._hashes is not None and pos == self._hashed:
                self._hashes[i].update(view[done : done + got])
                self._hashed += got
            done += got
        return out

    def volume_at(self, offset: int) -> str | None:
        """Name of the volume holding byte ``offset`` of the stream."""
        offset = self._stored_at(offset)
        for k in range(len(self._paths)):
            if self._starts[k] <= offset < self._starts[k + 1]:
                return self._paths[k].name
        return None

    def current_volume(self) -> str | None:
        """Name of the volume the last read ended in (for error messages)."""
        at = self._stored_at(max(0, self._pos - 1))
        for k in range(len(self._paths)):
            if self._starts[k] <= at < self._starts[k + 1]:
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
        if self._opener is not None:
            data = self._opener.read_at(self._pos, len(view))
            view[: len(data)] = data
            self._pos += len(data)
            return len(data)
        done = 0
        while done < len(view) and self._pos < self.size:
            i = next(k for k in range(len(self._fds)) if self._starts[k + 1] > self._pos)
            inner = self._pos - self._starts[i]
            want = min(len(view) - done, self._starts[i + 1] - self._pos)
            n = os.preadv(self._fds[i], [view[done : done + want]], inner)
            if n == 0:
                raise ImageDamagedError(f"{self._paths[i]} shrank while being read.")
            if self._hashes is not None and self._pos == self._hashed:
                self._hashes[i].update(view[done : done + n])
                self._hashed += n
            done += n
            self._pos += n
        return done

    def willneed(self, offset: int, length: int) -> None:
        """Ask the kernel to start reading stream bytes ``offset`` to ``offset + length``
        into its cache now (it does not wait): a later read finds them there."""
        end = min(offset + length, self.size)
        if self._opener is not None:
            offset, end = self._stored_at(offset), self._stored_at(end) + self._opener.chunk_span
            end = min(end, self._starts[-1])
        for k, fd in enumerate(self._fds):
            lo, hi = max(offset, self._starts[k]), min(end, self._starts[k + 1])
            if lo < hi:
                with contextlib.suppress(OSError):
                    os.posix_fadvise(fd, lo - self._starts[k], hi - lo, os.POSIX_FADV_WILLNEED)

    def pread(self, offset: int, n: int) -> bytearray:
        """``n`` bytes at ``offset`` (fewer at the end) without moving the position: safe
        from several threads at once (it never hashes)."""
        n = max(0, min(n, self.size - offset))
        if self._opener is not None:
            return bytearray(self._opener.read_at(offset, n))
        return self._stored(offset, n, hashing=False)

    def pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Overwrite stream bytes in place (the volumes never grow); opened ``writable``."""
        view = memoryview(data).cast("B")
        if offset + len(view) > self.size:
            raise ValueError("write past the end of the stream")
        if self._opener is not None:
            for at, sealed in self._opener.patched(offset, bytes(view)):
                self._raw_pwrite(at, sealed)
            return
        self._raw_pwrite(offset, view)

    def _raw_pwrite(self, offset: int, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            pos = offset + done
            i = next(k for k in range(len(self._fds)) if self._starts[k + 1] > pos)
            want = min(len(view) - done, self._starts[i + 1] - pos)
            done += os.pwrite(self._fds[i], view[done : done + want], pos - self._starts[i])

    def fsync(self) -> None:
        for fd in self._fds:
            os.fsync(fd)

    def digests(self) -> list[tuple[str, int, str]]:
        """(name, size, sha256) of every volume: hashes whatever was not read in order."""
        if self._hashes is None:
            raise ValueError("VolumeReader made without hashing")
        if self._opener is not None:
            while self._hashed < self._starts[-1]:
                self._raw_pread(self._hashed, 8 << 20)
        else:
            self.seek(self._hashed)
            while self._hashed < self.size:
                self.read(8 << 20)
        return [
            (p.name, self._starts[k + 1] - self._starts[k], self._hashes[k].hexdigest())
            for k, p in enumerate(self._paths)
        ]

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        super().close()
