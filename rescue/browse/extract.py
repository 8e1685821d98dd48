"""Copy files and folders out of a mounted image partition.

What is copied keeps its modes, times and symlinks (and its owners when run as
root on a destination that stores them). Nothing is ever written outside the
destination folder: every file and folder is created relative to an open
handle of its parent with ``O_NOFOLLOW`` and ``O_EXCL``, so neither a ``..`` nor a
symlink (from the image or planted in the destination) can redirect a write.
Existing files are never overwritten. A file that cannot be read (a damaged
part of the image) is reported and the copy goes on with the others; the
result lists every problem.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path

from rescue.browse.paths import inside, resolve
from rescue.errors import BadInputError
from rescue.progress import NullProgress, ProgressReporter, check_cancel

_CHUNK = 8 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class ExtractResult:
    files: int = 0
    folders: int = 0
    symlinks: int = 0
    bytes: int = 0
    skipped: list[str] = field(default_factory=list)
    """Entries not copied on purpose (device nodes, fifos, sockets)."""
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


class _Copier:
    def __init__(
        self, root: Path, progress: ProgressReporter, cancel: threading.Event | None
    ) -> None:
        self.root = root
        self.progress = progress
        self.cancel = cancel
        self.result = ExtractResult()
        self.keep_owner = os.geteuid() == 0
        self._sendfile = True

    def _xattrs(self, src: Path, name: str, parent: int) -> None:
        """Extended attributes (ACLs, capabilities, user data) where the destination takes them."""
        try:
            keys = os.listxattr(src, follow_symlinks=False)
        except OSError:
            return
        if not keys:
            return
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        try:
            for key in keys:
                with contextlib.suppress(OSError):  # FAT and others store none
                    os.setxattr(fd, key, os.getxattr(src, key, follow_symlinks=False))
        finally:
            os.close(fd)

    def _meta(self, name: str, parent: int, st: os.stat_result, *, link: bool) -> None:
        """Owner, mode and times of a created entry (times last: writing changes them)."""
        if self.keep_owner:
            with contextlib.suppress(OSError):
                os.chown(name, st.st_uid, st.st_gid, dir_fd=parent, follow_symlinks=False)
        if not link:
            os.chmod(name, stat.S_IMODE(st.st_mode), dir_fd=parent)
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
                self._meta(name, parent, st, link=True)
                self.result.symlinks += 1
            else:
                self.result.skipped.append(where)
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
        self._xattrs(src, name, parent)
        self._meta(name, parent, st, link=False)

    def _chunk(self, fin: int, out: int) -> int:
        """Copy the next chunk; 0 at the end of the file."""
        check_cancel(self.cancel)
        if self._sendfile:
            try:
                return os.sendfile(out, fin, None, _CHUNK)
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                self._sendfile = False
        data = os.read(fin, _CHUNK)
        view = memoryview(data)
        while view:
            view = view[os.write(out, view) :]
        return len(data)

    def _file(self, src: Path, st: os.stat_result, parent: int, name: str) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        out = os.open(name, flags, 0o600, dir_fd=parent)
        complete = False
        try:
            with open(src, "rb", buffering=0) as f:
                fin = f.fileno()
                while n := self._chunk(fin, out):
                    self.result.bytes += n
                    self.progress.advance(n)
            complete = True
        finally:
            os.close(out)
            if not complete:  # never leave a partial file that looks whole
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=parent)
        self._xattrs(src, name, parent)
        self._meta(name, parent, st, link=False)
        self.result.files += 1


def extract(
    root: Path,
    paths: list[str],
    dest: Path,
    *,
    progress: ProgressReporter | None = None,
    cancel: threading.Event | None = None,
) -> ExtractResult:
    """Copy each image path (file or folder) into ``dest`` under its own name."""
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
    copier = _Copier(root, progress, cancel)
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


def describe_failures(result: ExtractResult, limit: int = 20) -> str:
    lines = [f"  {path}: {reason}" for path, reason in result.failed[:limit]]
    if len(result.failed) > limit:
        lines.append(f"  ... and {len(result.failed) - limit} more")
    return "\n".join(lines)
