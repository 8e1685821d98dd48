"""Every filesystem rescue knows, by the names blkid (and image file names) give them.

One entry per filesystem, each declared in its own module (see
:mod:`rescue.filesystems.interface`). Operations ask here, never compare names::

    fs = registry.get(part.fstype)
    if fs is not None and fs.can_grow:
        fs.grow(dev, size)
"""

from __future__ import annotations

from rescue.errors import UnsupportedOperationError
from rescue.filesystems.btrfs import BTRFS
from rescue.filesystems.exfat import EXFAT
from rescue.filesystems.ext import EXT
from rescue.filesystems.fat import FAT
from rescue.filesystems.interface import Filesystem
from rescue.filesystems.layers import LAYERS
from rescue.filesystems.ntfs import NTFS
from rescue.filesystems.raw import RAW
from rescue.filesystems.swap import SWAP
from rescue.filesystems.xfs import XFS

_BY_NAME: dict[str, Filesystem] = {}
"""Every name and alias -> its entry."""
_BY_MOUNT_TYPE: dict[str, Filesystem] = {}
_ALL: list[Filesystem] = []


def register(fs: Filesystem) -> Filesystem:
    """Add ``fs`` under its names and aliases; refuse an entry that declares an operation
    twice or not at all, or a name another entry has."""
    problems = fs.declaration_problems()
    for name in (*fs.names, *fs.aliases):
        if name in _BY_NAME:
            problems.append(f"{name} is already the name of {_BY_NAME[name]!r}")
    for kind in fs.mount_types:
        if kind in _BY_MOUNT_TYPE:
            problems.append(f"mount type {kind} is already {_BY_MOUNT_TYPE[kind]!r}'s")
    if problems:
        raise TypeError("; ".join(problems))
    for name in (*fs.names, *fs.aliases):
        _BY_NAME[name] = fs
    for kind in fs.mount_types:
        _BY_MOUNT_TYPE[kind] = fs
    _ALL.append(fs)
    return fs


for _fs in (EXT, NTFS, FAT, EXFAT, XFS, BTRFS, SWAP, RAW, *LAYERS):
    register(_fs)


def get(name: str | None) -> Filesystem | None:
    """The entry for a blkid name or alias (``ext4``, ``ntfs3``, ``fat32``, ``dd``); None if
    rescue knows no such filesystem."""
    if not name:
        return None
    return _BY_NAME.get(name)


def require(name: str | None) -> Filesystem:
    """The entry for ``name``; an error in words when rescue knows no such filesystem."""
    fs = get(name)
    if fs is None:
        raise UnsupportedOperationError(
            f"rescue knows no filesystem called {name or '(none)'}: it can only copy such a "
            "partition byte for byte."
        )
    return fs


def canonical(name: str) -> str:
    """``name`` with an alias replaced by its filesystem's name (``fat32`` -> ``vfat``)."""
    fs = get(name)
    return name if fs is None else fs.canonical(name)


def for_mount_type(kind: str | None) -> Filesystem | None:
    """The entry for a type the mount table shows (``vfat``, ``fuse.fusefat``, ...)."""
    if not kind:
        return None
    return _BY_MOUNT_TYPE.get(kind)


def all_filesystems() -> tuple[Filesystem, ...]:
    """Every registered entry, in registration order."""
    return tuple(_ALL)
