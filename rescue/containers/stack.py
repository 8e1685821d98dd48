"""What lies on a partition: a container layer first, then a filesystem.

The probes run in order on the partition's head; the first that recognises its
signature wins. A recognised container is stored whole for now (every block:
an encrypted one's ciphertext does not compress, which the reason says), so a
restore gives back exactly the volume that was there, openable with the same
keys. Anything else goes to the filesystems' own detection.
"""

from __future__ import annotations

from typing import BinaryIO

from rescue.containers import bitlocker, luks, lvm
from rescue.containers.base import PROBE_BYTES, Container, Probe, read_at
from rescue.filesystems.base import Allocation
from rescue.filesystems.detect import allocation_for as filesystem_allocation
from rescue.filesystems.raw import raw_allocation

PROBES: tuple[Probe, ...] = (luks.probe, bitlocker.probe, lvm.probe)
"""Every container type rescue recognises, in the order they are tried."""

_ENCRYPTED = ("luks", "bitlocker")


def find_container(f: BinaryIO, size: int) -> Container | None:
    """The container layer at the start of the partition in ``f``, or None."""
    try:
        head = read_at(f, 0, min(PROBE_BYTES, size))
    except OSError:
        return None
    for probe in PROBES:
        found = probe(head, f, size)
        if found is not None:
            return found
    return None


def stored_whole_reason(found: Container) -> str:
    what = (
        "an encrypted volume: stored whole, every block, as ciphertext (it does not "
        "compress), so the restored volume opens with the same keys"
        if found.kind in _ENCRYPTED
        else "a volume layer: stored whole, every block, so it is restored as it was"
    )
    return f"{found.describe()} is {what}; rescue does not read inside it yet"


def allocation_for(f: BinaryIO, size: int, fstype: str | None = None) -> Allocation:
    """Used blocks of the partition in ``f``: a container's every block, or its filesystem's."""
    found = find_container(f, size)
    if found is not None:
        return raw_allocation(size, reason=stored_whole_reason(found))
    return filesystem_allocation(f, size, fstype)
