"""How much a capture will store, and how much room a destination has: for the UI to show."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from rescue.blockio import Window, binary
from rescue.containers.stack import allocation_for
from rescue.devices.model import Disk, Partition
from rescue.errors import RescueError
from rescue.filesystems import registry


def used_bytes(path: str, size: int, fstype: str | None) -> int | None:
    """Bytes the capture of one filesystem reads; None when the device cannot be read."""
    fs = registry.get(fstype)
    if fs is not None and not fs.imaged:  # swap: nothing of it is stored
        return 0
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return allocation_for(binary(Window(fd, 0, size)), size, fstype).used_bytes
    except (RescueError, OSError):
        return size  # unreadable maps: the capture falls back to every block
    finally:
        os.close(fd)


def capture_need(
    dev: Disk | Partition,
    used: Callable[[str, int, str | None], int | None] = used_bytes,
) -> int | None:
    """Upper bound of the bytes an image of ``dev`` holds before compression (None: unknown)."""
    if isinstance(dev, Partition) or not dev.partitions:
        return used(dev.path, dev.size, dev.fstype)
    sizes = [used(p.path, p.size, p.fstype) for p in dev.partitions]
    if any(s is None for s in sizes):
        return None
    return sum(s for s in sizes if s is not None) + (1 << 20)


def free_bytes(folder: Path) -> int:
    """Free room where ``folder`` (or its nearest existing parent) lives."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free
