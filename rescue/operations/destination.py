"""Where images go: a partition of the technician's own drive, mounted read-write."""

from __future__ import annotations

import os
from pathlib import Path

from rescue import kernel
from rescue.devices.model import Disk, Partition
from rescue.errors import BadInputError, RefusedError
from rescue.system import which


def dest_root() -> Path:
    """Where destination drives are mounted (``$RESCUE_DEST_ROOT``, default /mnt/rescue)."""
    return Path(os.environ.get("RESCUE_DEST_ROOT") or "/mnt/rescue")


_FUSE = {"ntfs": "ntfs-3g", "exfat": "mount.exfat-fuse"}


def destination_candidates(disks: list[Disk], source: Disk | None) -> list[Partition]:
    """Partitions that can hold images: a filesystem, not on the source, not protected."""
    found = []
    for d in disks:
        if source is not None and d.path == source.path:
            continue
        for p in d.partitions:
            if p.fstype in (None, "swap") or "boot-medium" in p.flags or "in-use" in p.flags:
                continue
            found.append(p)
    return found


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
    fuse = _FUSE.get(part.fstype or "")
    kernel_has = fuse is None or kernel.kernel_supports(part.fstype or "")
    if kernel_has:
        kernel.mount(part.path, target, "rw")
    else:
        assert fuse is not None
        if which(fuse) is None:
            raise BadInputError(f"Mounting {part.fstype} needs {fuse}, which is not installed.")
        kernel.mount_fuse(fuse, part.path, target, "rw")
    return target
