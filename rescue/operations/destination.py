"""Where images go: a partition of the technician's own drive, mounted read-write."""

from __future__ import annotations

import os
from pathlib import Path

from rescue import kernel
from rescue.devices.model import Disk, Partition
from rescue.errors import BadInputError, RefusedError
from rescue.filesystems import registry
from rescue.filesystems.interface import Op


def dest_root() -> Path:
    """Where destination drives are mounted (``$RESCUE_DEST_ROOT``, default /mnt/rescue)."""
    return Path(os.environ.get("RESCUE_DEST_ROOT") or "/mnt/rescue")


def destination_candidates(disks: list[Disk], source: Disk | None) -> list[Partition]:
    """Partitions that can hold images: a filesystem, not on the source, not protected."""
    found = []
    for d in disks:
        if source is not None and d.path == source.path:
            continue
        for p in d.partitions:
            if not _holds_files(p.fstype) or "boot-medium" in p.flags or "in-use" in p.flags:
                continue
            found.append(p)
    return found


def _holds_files(fstype: str | None) -> bool:
    """A filesystem that can be mounted read-write (swap cannot; an unknown one may)."""
    if fstype is None:
        return False
    fs = registry.get(fstype)
    return fs is None or fs.supports(Op.MOUNT_RW)


def mount_destination(part: Partition) -> Path:
    """The partition's folder for images: where it is mounted, or a new read-write mount."""
    if "read-only" in part.flags:
        raise RefusedError(f"{part.path} is read-only; images cannot be written there.")
    for mp in part.mountpoints:
        return Path(mp)
    target = dest_root() / part.name
    target.mkdir(parents=True, exist_ok=True)
    if any(target.iterdir()):
        raise BadInputError(f"{target} is not empty; cannot mount {part.path} there.")
    fs = registry.get(part.fstype)
    if fs is None:  # not one rescue knows: the kernel may
        kernel.mount(part.path, target, "rw")
    else:  # by the kernel, or its FUSE driver where the kernel has none
        fs.mount_at(part.path, target, writable=True)
    return target
