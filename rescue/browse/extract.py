"""Copy files and folders out of a mounted image partition.

What is copied keeps its modes (set-uid/set-gid bits included), times,
symlinks, extended attributes, FIFOs and sockets; run as root it also keeps
owners, file capabilities and device nodes, as ``tar`` does (where the
destination can hold them). With ``no_special`` the privileges are left behind: no set-uid/set-gid
bit, no file capability, no device node, FIFO or socket (each one listed in the
result, none of them a failure). Sparse files stay sparse: only the ranges the
filesystem holds data for are read and written, and where its driver cannot
tell holes (ntfs-3g) the all-zero blocks of a file that takes less room than
its size are left as holes.

Nothing is ever written outside the destination folder: every file and folder
is created relative to an open handle of its parent with ``O_NOFOLLOW`` and
``O_EXCL``, so neither a ``..`` nor a symlink (from the image or planted in the
destination) can redirect a write; symlinks of the image are copied as links,
never followed. Existing files are never overwritten. A file that cannot be
read (a damaged part of the image) is reported and the copy goes on with the
others; the result lists every problem.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rescue.browse.paths import inside, resolve
from rescue.errors import BadInputError
from rescue.progress import NullProgress, ProgressReporter, check_cancel

_CHUNK = 8 << 20
_ZERO_BLOCK = 64 << 10
"""Where the filesystem cannot tell holes, an all-zero block of this size becomes a hole."""
_ZEROS = bytes(_ZERO_BLOCK)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_SET_ID = stat.S_ISUID | stat.S_ISGID
_CAPABILITY = "security.capability"
_NO_SENDFILE = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP)
_NO_SEEK_DATA = (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS)
_MKNOD_REFUSED = (errno.EPERM, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS)
"""mknod errors that mean the destination (or a run without root) cannot hold the node."""


@dataclass
class ExtractResult:
    files: int = 0
    folders: int = 0
    symlinks: int = 0
    specials: int = 0
    """Device nodes, FIFOs and sockets created."""
    bytes: int = 0
    """Size of the files copied (holes included)."""
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(image path, why) of the special files not created: left out on purpose or not
    creatable in the destination. Not failures."""
    privileges_dropped: list[str] = field(default_factory=list)
    """Entries copied without their set-uid/set-gid bits or file capabilities."""
    failed: list[tuple[str, str]] = field(default_factory=list)
    """(image path, reason) of every entry that could not be copied."""

    @property
    def ok(self) -> bool:
        return not self.failed


def _plan(real: Path) -> int:
    """Bytes of regular files under ``real`` (symlinks not followed)."""
    st = os.lstat(real)
    if stat.S_ISREG(st.st_mode):
        return st.st_size
    if not stat.S_ISDIR(st.st_mode):
        return 0
    total = 0
    for top, _dirs, files in os.walk(real):
        for name in files:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(top, name))
                if stat.S_ISREG(st.st_mode):
                    total += st.st_size
    return total


def _special_kind(st: os.stat_result) -> str:
    mode = st.st_mode
    if stat.S_ISCHR(mode):
        return f"character device {os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    if stat.S_ISBLK(mode):
        return f"block device {os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    return f"file of type {stat.S_IFMT(mode):o}"


def _data_ranges(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """The (start, end) ranges of ``fd`` that hold data, as its filesystem tells.

    A driver that cannot tell holes (FUSE without lseek, for one) shows the
    whole file as one range of data.
    """
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # a hole from here to the end
                return
            if exc.errno not in _NO_SEEK_DATA:
                raise
            start = pos
        if start >= size:
            return
        try:
            end = os.lseek(fd, start, os.SEEK_HOLE)
        except OSError as exc:
            if exc.errno not in _NO_SEEK_DATA:
                raise
            end = size
        end = min(end, size) if end > start else size
        yield start, end
        pos = end


def _write_all(out: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(out, data, offset)
        data = data[n:]
        offset += n


def _write_nonzero(out: int, data: bytes, offset: int) -> None:
    """Write ``data`` at ``offset`` but its all-zero aligned blocks, which stay holes."""
    view = memoryview(data)
    run: int | None = None  # start of the pending run of non-zero blocks
    i = 0
    while i < len(data):
        j = min(len(data), ((offset + i) // _ZERO_BLOCK + 1) * _ZERO_BLOCK - offset)
        if data[i:j] == _ZEROS[: j - i]:
            if run is not None:
                _write_all(out, view[run:i], offset + run)
                run = None
        elif run is None:
            run = i
        i = j
    if run is not None:
        _write_all(out, view[run:], offset + run)


class _Copier:
    def __init__(
        self,
        root: Path,
        progress: ProgressReporter,
        cancel: threading.Event | None,
        *,
        no_special: bool,
    ) -> None:
        self.root = root
        self.progress = progress
        self.cancel = cancel
        self.no_special = no_special
        self.result = ExtractResult()
        self.keep_owner = os.geteuid() == 0
        self._sendfile = True

    def _xattrs(self, src: Path, name: str, parent: int) -> bool:
        """Extended attributes (ACLs, capabilities, user data) where the destination takes them.

        True when a file capability was left out (``no_special``).
        """
        try:
            keys = os.listxattr(src, follow_symlinks=False)
        except OSError:
            return False
        dropped = self.no_special and _CAPABILITY in keys
        keys = [k for k in keys if not (dropped and k == _CAPABILITY)]
        if not keys:
            return dropped
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        try:
            for key in keys:
                with contextlib.suppress(OSError):  # FAT and others store none
                    os.setxattr(fd, key, os.getxattr(src, key, follow_symlinks=False))
        finally:
            os.close(fd)
        return dropped

    def _meta(self, src: Path, name: str, parent: int, st: os.stat_result) -> None:
        """Owner, extended attributes, mode and times of a created entry.

        In this order: a change of owner clears the set-id bits and the file
        capability, and setting anything changes the times.
        """
        link = stat.S_ISLNK(st.st_mode)
        if self.keep_owner:
            with contextlib.suppress(OSError):
                os.chown(name, st.st_uid, st.st_gid, dir_fd=parent, follow_symlinks=False)
        # none for special files: opening a device node or a FIFO opens the device or waits
        dropped = (
            self._xattrs(src, name, parent)
            if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)
            else False
        )
        if not link:
            mode = stat.S_IMODE(st.st_mode)
            if self.no_special and mode & _SET_ID:
                mode &= ~_SET_ID
                dropped = True
            os.chmod(name, mode, dir_fd=parent)
        if dropped:
            self.result.privileges_dropped.append(inside(self.root, src))
        with contextlib.suppress(NotImplementedError, OSError):
            os.utime(
                name,
                ns=(st.st_atime_ns, st.st_mtime_ns),
                dir_fd=parent,
                follow_symlinks=False,
            )

    def copy(self, src: Path, parent: int, name: str) -> None:
        check_cancel(self.cancel)
        where = inside(self.root, src)
        try:
            st = os.lstat(src)
        except OSError as exc:
            self.result.failed.append((where, exc.strerror or str(exc)))
            return
        try:
            if stat.S_ISDIR(st.st_mode):
                self._dir(src, st, parent, name)
            elif stat.S_ISREG(st.st_mode):
                self._file(src, st, parent, name)
            elif stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(src), name, dir_fd=parent)
                self._meta(src, name, parent, st)
                self.result.symlinks += 1
            else:
                self._special(src, st, parent, name)
        except FileExistsError:
            self.result.failed.append((where, "already exists in the destination; not overwritten"))
        except OSError as exc:
            reason = exc.strerror or str(exc)
            if exc.errno == errno.EIO:
                reason = "unreadable: the image is damaged here (rescue verify names the damage)"
            self.result.failed.append((where, reason))

    def _dir(self, src: Path, st: os.stat_result, parent: int, name: str) -> None:
        # an existing real folder is merged into; a symlink there is refused by O_NOFOLLOW
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o700, dir_fd=parent)
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        try:
            self.result.folders += 1
            with os.scandir(src) as it:
                children = sorted(d.name for d in it)
            for child in children:
                self.copy(src / child, fd, child)
        finally:
            os.close(fd)
        self._meta(src, name, parent, st)

    def _special(self, src: Path, st: os.stat_result, parent: int, name: str) -> None:
        """A device node, FIFO or socket: created as it is (never opened), or listed as skipped."""
        kind = _special_kind(st)
        if self.no_special:
            self.result.skipped.append((inside(self.root, src), f"{kind}, left out"))
            return
        device = stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
        try:
            os.mknod(
                name, stat.S_IFMT(st.st_mode) | 0o600, st.st_rdev if device else 0, dir_fd=parent
            )
        except OSError as exc:
            if exc.errno not in _MKNOD_REFUSED:
                raise
            why = (
                "only root can create it"
                if device and not self.keep_owner
                else f"the destination cannot hold it ({exc.strerror})"
            )
            self.result.skipped.append((inside(self.root, src), f"{kind}, not created: {why}"))
            return
        self._meta(src, name, parent, st)
        self.result.specials += 1

    def _advance(self, n: int) -> None:
        if not n:
            return
        self.result.bytes += n
        self.progress.advance(n)

    def _copy_range(self, fin: int, out: int, start: int, end: int) -> None:
        """Bytes ``start`` to ``end`` as they are (sendfile where the kernel can)."""
        pos = start
        os.lseek(out, start, os.SEEK_SET)
        while pos < end:
            check_cancel(self.cancel)
            n = min(_CHUNK, end - pos)
            if self._sendfile:
                try:
                    n = os.sendfile(out, fin, pos, n)
                except OSError as exc:
                    if exc.errno not in _NO_SENDFILE:
                        raise
                    self._sendfile = False
                    continue
            else:
                data = os.pread(fin, n, pos)
                _write_all(out, memoryview(data), pos)
                n = len(data)
            if n == 0:
                raise OSError(errno.EIO, "the file ends before its size")
            pos += n
            self._advance(n)

    def _copy_nonzero(self, fin: int, out: int, start: int, end: int) -> None:
        """Bytes ``start`` to ``end``, their all-zero blocks left as holes."""
        pos = start
        while pos < end:
            check_cancel(self.cancel)
            data = os.pread(fin, min(_CHUNK, end - pos), pos)
            if not data:
                raise OSError(errno.EIO, "the file ends before its size")
            _write_nonzero(out, data, pos)
            pos += len(data)
            self._advance(len(data))

    def _data(self, fin: int, out: int, st: os.stat_result) -> None:
        """The file's content with its holes: only its data is read and written."""
        size = os.fstat(fin).st_size
        ranges = _data_ranges(fin, size)
        first = next(ranges, None)
        # no hole told, yet the file takes less room than its size: its driver cannot
        # tell holes (ntfs-3g); its zeros are read and left as holes
        blind = first == (0, size) and st.st_blocks * 512 < size
        done = 0
        for start, end in itertools.chain([first] if first else [], ranges):
            self._advance(start - done)  # a hole: nothing to read or write
            if blind:
                self._copy_nonzero(fin, out, start, end)
            else:
                self._copy_range(fin, out, start, end)
            done = end
        self._advance(size - done)
        os.ftruncate(out, size)

    def _file(self, src: Path, st: os.stat_result, parent: int, name: str) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        out = os.open(name, flags, 0o600, dir_fd=parent)
        complete = False
        try:
            with open(src, "rb", buffering=0) as f:
                self._data(f.fileno(), out, st)
            complete = True
        finally:
            os.close(out)
            if not complete:  # never leave a partial file that looks whole
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=parent)
        self._meta(src, name, parent, st)
        self.result.files += 1


def extract(
    root: Path,
    paths: list[str],
    dest: Path,
    *,
    progress: ProgressReporter | None = None,
    cancel: threading.Event | None = None,
    no_special: bool = False,
) -> ExtractResult:
    """Copy each image path (file or folder) into ``dest`` under its own name.

    ``no_special``: no set-uid/set-gid bit or file capability, no device node,
    FIFO or socket (listed in the result, not failures).
    """
    progress = progress or NullProgress()
    if not paths:
        raise BadInputError("Name at least one file or folder to extract.")
    sources: list[tuple[Path, str | None]] = []
    for p in paths:
        real = resolve(root, p, follow_last=False)
        if real == root:
            sources.append((real, None))
        else:
            sources.append((real, real.name))
    names = [n for _, n in sources if n]
    if len(set(names)) != len(names):
        raise BadInputError("Two of the paths have the same name; extract them separately.")
    dest.mkdir(parents=True, exist_ok=True)
    try:
        dest_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise BadInputError(f"Cannot open the destination {dest}: {exc.strerror}.") from exc
    copier = _Copier(root, progress, cancel, no_special=no_special)
    try:
        total = sum(_plan(real) for real, _ in sources)
        progress.phase(f"Copying {len(paths)} item(s) to {dest}", total)
        for real, name in sources:
            if name is None:  # the whole partition: its entries go straight into dest
                with os.scandir(real) as it:
                    for child in sorted(d.name for d in it):
                        copier.copy(real / child, dest_fd, child)
            else:
                copier.copy(real, dest_fd, name)
        os.sync()  # all copied data on the destination before saying it is done
    finally:
        os.close(dest_fd)
    return copier.result


def _listed(lines: list[str], limit: int) -> str:
    shown = [f"  {line}" for line in lines[:limit]]
    if len(lines) > limit:
        shown.append(f"  ... and {len(lines) - limit} more")
    return "\n".join(shown)


def describe_failures(result: ExtractResult, limit: int = 20) -> str:
    return _listed([f"{path}: {reason}" for path, reason in result.failed], limit)


def describe_left_out(result: ExtractResult, limit: int = 20) -> str:
    """What was not copied on purpose or as it was: special files skipped, privileges dropped."""
    parts = []
    if result.skipped:
        parts.append(
            f"{len(result.skipped)} special file(s) not created (not failures):\n"
            + _listed([f"{path}: {why}" for path, why in result.skipped], limit)
        )
    if result.privileges_dropped:
        parts.append(
            f"{len(result.privileges_dropped)} item(s) copied without their set-uid/set-gid "
            "bits or file capabilities:\n" + _listed(result.privileges_dropped, limit)
        )
    return "\n".join(parts)
