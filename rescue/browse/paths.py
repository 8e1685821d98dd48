"""Paths inside a mounted image partition, resolved as if the partition were ``/``.

The files of an image come from another machine: an absolute symlink such as
``/etc/passwd`` means the image's own ``/etc/passwd``, never this system's, and
``..`` cannot climb above the partition's root. :func:`resolve` follows
symlinks that way (like ``openat2(RESOLVE_IN_ROOT)``), so listing and reading
can never leave the partition.
"""

from __future__ import annotations

import os
import stat
from collections import deque
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from rescue.errors import BadInputError

MAX_SYMLINKS = 40  # as the kernel allows in one lookup


def _parts(path: str) -> list[str]:
    return [p for p in PurePosixPath(path).parts if p not in ("/", "", ".")]


def resolve(root: Path, path: str, *, follow_last: bool = True) -> Path:
    """``path`` (inside the partition) as a real path under ``root``, without escaping it."""
    pending = deque(_parts(path))
    done: list[str] = []
    hops = 0
    while pending:
        name = pending.popleft()
        if name == "..":
            if done:
                done.pop()
            continue
        here = root.joinpath(*done, name)
        try:
            st = os.lstat(here)
        except FileNotFoundError as exc:
            shown = "/" + "/".join([*done, name])
            raise BadInputError(f"{shown} does not exist in the image.") from exc
        except NotADirectoryError as exc:
            shown = "/" + "/".join(done)
            raise BadInputError(f"{shown} is not a folder.") from exc
        if stat.S_ISLNK(st.st_mode) and (pending or follow_last):
            hops += 1
            if hops > MAX_SYMLINKS:
                raise BadInputError(f"Too many symbolic links while looking up {path}.")
            target = os.readlink(here)
            if target.startswith("/"):
                done = []
            pending.extendleft(reversed(_parts(target)))
            continue
        if pending and not stat.S_ISDIR(st.st_mode):
            shown = "/" + "/".join([*done, name])
            raise BadInputError(f"{shown} is not a folder.")
        done.append(name)
    return root.joinpath(*done)


def inside(root: Path, real: Path) -> str:
    """The image path of ``real`` (a path under ``root``)."""
    rel = real.relative_to(root)
    return "/" + str(rel) if str(rel) != "." else "/"


@dataclass(frozen=True)
class Entry:
    """One entry of a folder in an image (symlinks not followed)."""

    name: str
    path: str
    """Its path inside the image."""
    kind: str
    """file, dir, symlink or other (device, fifo, socket)."""
    size: int
    mode: int
    mtime_ns: int
    uid: int
    gid: int
    target: str | None = None
    """Where a symlink points, as stored."""


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def entry_of(real: Path, path: str) -> Entry:
    st = os.lstat(real)
    kind = _kind(st.st_mode)
    return Entry(
        name=real.name or "/",
        path=path,
        kind=kind,
        size=st.st_size,
        mode=stat.S_IMODE(st.st_mode),
        mtime_ns=st.st_mtime_ns,
        uid=st.st_uid,
        gid=st.st_gid,
        target=os.readlink(real) if kind == "symlink" else None,
    )


def list_dir(root: Path, path: str = "/") -> list[Entry]:
    """The entries of a folder of the image, folders first, then by name."""
    real = resolve(root, path)
    if not real.is_dir():
        raise BadInputError(f"{path} is not a folder.")
    base = inside(root, real)
    entries = []
    with os.scandir(real) as it:
        for d in it:
            child = base.rstrip("/") + "/" + d.name
            try:
                entries.append(entry_of(Path(d.path), child))
            except OSError as exc:  # an unreadable inode in a damaged image
                entries.append(Entry(d.name, child, "other", 0, 0, 0, 0, 0, f"<{exc.strerror}>"))
    entries.sort(key=lambda e: (e.kind != "dir", e.name))
    return entries
