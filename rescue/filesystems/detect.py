"""Pick the allocation reader for a partition; fall back to a raw copy, never half-right."""

from __future__ import annotations

import importlib
import logging
from typing import BinaryIO

from rescue.errors import FilesystemError
from rescue.filesystems.base import Allocation
from rescue.filesystems.probe import probe_fstype
from rescue.filesystems.raw import raw_allocation

log = logging.getLogger(__name__)

SUPPORTED: dict[str, str] = {
    "ext2": "ext",
    "ext3": "ext",
    "ext4": "ext",
    "ntfs": "ntfs",
    "vfat": "fat",
    "exfat": "exfat",
    "xfs": "xfs",
    "btrfs": "btrfs",
}
"""Filesystem type (blkid's name) → module in rescue.filesystems with read_allocation()."""


def allocation_for(f: BinaryIO, size: int, fstype: str | None = None) -> Allocation:
    """Used blocks of the partition in ``f``; every block (raw) when that cannot be known.

    Swap is not imaged: the caller records it and recreates it on restore.
    """
    probed = probe_fstype(f)
    if fstype is None or (probed is not None and probed != fstype):
        # trust the superblock over a stale udev/blkid name
        fstype = probed
    if fstype is None:
        return raw_allocation(size, reason="no known filesystem: imaging every block")
    if fstype == "swap":
        raise FilesystemError("swap is recreated on restore, not imaged")
    module_name = SUPPORTED.get(fstype)
    if module_name is None:
        return raw_allocation(
            size, reason=f"{fstype} is not a filesystem rescue reads: imaging every block"
        )
    try:
        module = importlib.import_module(f"rescue.filesystems.{module_name}")
    except ImportError:
        return raw_allocation(
            size, reason=f"{fstype} support is not in this rescue yet: imaging every block"
        )
    try:
        alloc: Allocation = module.read_allocation(f, size)
    except FilesystemError as exc:
        log.warning("%s: %s", fstype, exc)
        return raw_allocation(
            size,
            reason=f"the {fstype} filesystem here looks damaged ({exc}): imaging every block",
        )
    return alloc
