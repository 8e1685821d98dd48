"""Disk discovery: every disk and partition as frozen data, found through udev."""

from __future__ import annotations

import json
import os

from rescue.devices.model import Disk, Partition
from rescue.devices.system_state import devnum_of
from rescue.devices.udev import list_disks, udev_running
from rescue.errors import DeviceNotFoundError

__all__ = ["Disk", "Partition", "find_device", "list_disks", "to_json", "udev_running"]


def find_device(path: str) -> Disk | Partition:
    """The disk or partition at ``path`` (any node or /dev/disk/by-* link to it)."""
    num = devnum_of(path)
    if num is None:
        raise DeviceNotFoundError(f"{path} is not a disk or partition.")
    for disk in list_disks():
        if devnum_of(disk.path) == num:
            return disk
        for part in disk.partitions:
            if devnum_of(part.path) == num:
                return part
    raise DeviceNotFoundError(
        f"{path} ({os.path.realpath(path)}) is not among the disks rescue can use.",
        hint="See `rescue list`.",
    )


def to_json(disks: list[Disk]) -> str:
    return json.dumps([d.to_dict() for d in disks], indent=2)
