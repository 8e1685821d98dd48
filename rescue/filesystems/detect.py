"""Pick the allocation reader for a partition; fall back to a raw copy, never half-right."""

from __future__ import annotations

import logging
from typing import BinaryIO

from rescue.errors import FilesystemError
from rescue.filesystems import registry
from rescue.filesystems.base import Allocation
from rescue.filesystems.probe import probe_fstype
from rescue.filesystems.raw import raw_allocation

log = logging.getLogger(__name__)


def allocation_for(f: BinaryIO, size: int, fstype: str | None = None) -> Allocation:
    """Used blocks of the partition in ``f``; every block (raw) when that cannot be known.

    The reader is the registry entry's for ``fstype`` (or what the superblock
    says). Swap is not imaged: the caller records it and recreates it on restore.
    """
    probed = probe_fstype(f)
    if fstype is None or (probed is not None and probed != fstype):
        # trust the superblock over a stale udev/blkid name
        fstype = probed
    if fstype is None:
        return raw_allocation(size, reason="no known filesystem: imaging every block")
    fs = registry.get(fstype)
    if fs is not None and fs.recreated:
        raise FilesystemError(f"{fstype} is recreated on restore, not imaged")
    if fs is None or not fs.imaged:
        return raw_allocation(
            size, reason=f"{fstype} is not a filesystem rescue reads: imaging every block"
        )
    try:
        return fs.read_allocation(f, size)
    except FilesystemError as exc:
        log.warning("%s: %s", fstype, exc)
        return raw_allocation(
            size,
            reason=f"the {fstype} filesystem here looks damaged ({exc}): imaging every block",
        )
