"""Disks and partitions as plain frozen data: what the rest of the tool sees of udev."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# Why a device must not be written (shown to the technician, used by safety checks)
FLAG_BOOT_MEDIUM = "boot-medium"
FLAG_MOUNTED = "mounted"
FLAG_SWAP = "swap-active"
FLAG_IN_USE = "in-use"
FLAG_READ_ONLY = "read-only"

FLAG_REASONS = {
    FLAG_BOOT_MEDIUM: "it holds the running system (the rescue medium or the root filesystem)",
    FLAG_MOUNTED: "it is mounted",
    FLAG_SWAP: "it is in use as swap",
    FLAG_IN_USE: "it is in use by LVM, RAID or device-mapper",
    FLAG_READ_ONLY: "it is read-only",
}


@dataclass(frozen=True)
class Partition:
    path: str
    name: str
    number: int
    start: int
    """Bytes from the start of the disk."""
    size: int
    fstype: str | None
    label: str | None
    uuid: str | None
    partlabel: str | None
    mountpoints: tuple[str, ...]
    flags: tuple[str, ...]
    disk: str
    """Path of the disk holding it."""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mountpoints"] = list(self.mountpoints)
        d["flags"] = list(self.flags)
        del d["disk"]
        del d["name"]
        return d


@dataclass(frozen=True)
class Disk:
    path: str
    name: str
    size: int
    model: str | None
    serial: str | None
    transport: str | None
    removable: bool
    read_only: bool
    rotational: bool
    logical_sector_size: int
    partition_table: str | None
    flags: tuple[str, ...]
    partitions: tuple[Partition, ...]
    backing_file: str | None = None
    fstype: str | None = None
    """Filesystem directly on the disk (no partition table), if any."""
    mountpoints: tuple[str, ...] = ()
    from_udev: bool = True
    """False when udev had no properties and the tool probed the disk itself."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "name": self.name,
            "size": self.size,
            "model": self.model,
            "serial": self.serial,
            "transport": self.transport,
            "removable": self.removable,
            "read_only": self.read_only,
            "rotational": self.rotational,
            "logical_sector_size": self.logical_sector_size,
            "partition_table": self.partition_table,
            "flags": list(self.flags),
            "partitions": [p.to_dict() for p in self.partitions],
            "backing_file": self.backing_file,
            "fstype": self.fstype,
            "mountpoints": list(self.mountpoints),
        }
