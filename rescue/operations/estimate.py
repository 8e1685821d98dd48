"""How much a capture will store, and how much room a destination has: for the UI to show."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from rescue.blockio import Window, binary
from rescue.devices.model import Disk, Partition
from rescue.errors import RescueError
from rescue.filesystems.detect import allocation_for


def used_bytes(path: str, size: int, fstype: str | None) -> int:
    """Bytes the capture of one filesystem reads (every byte when it is unknown)."""
    if fstype == "swap":
        return 0
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return allocation_for(binary(Window(fd, 0, size)), size, fstype).used_bytes
    except (RescueError, OSError):
        return size
    finally:
        os.close(fd)


def capture_need(dev: Disk | Partition) -> int:
    """Upper bound of the bytes an image of ``dev`` holds before compression."""
    if isinstance(dev, Partition):
        return used_bytes(dev.path, dev.size, dev.fstype)
    if not dev.partitions:
        return used_bytes(dev.path, dev.size, dev.fstype)
    return sum(used_bytes(p.path, p.size, p.fstype) for p in dev.partitions) + (1 << 20)


def free_bytes(folder: Path) -> int:
    """Free room where ``folder`` (or its nearest existing parent) lives."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free
