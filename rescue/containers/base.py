"""What every container module says about the layer it recognises."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

PROBE_BYTES = 64 * 1024
"""The head of a partition read once for every probe (signatures lie in the first sectors)."""


@dataclass(frozen=True)
class Container:
    """A volume layer found on a partition, as far as it can be read without a key."""

    kind: str
    """``luks``, ``bitlocker``, ``lvm2-pv`` ..."""
    name: str
    """For people: ``LUKS2``, ``BitLocker``, ``LVM2 physical volume``."""
    uuid: str | None = None
    metadata: tuple[tuple[int, int], ...] = field(default=())
    """Byte ranges (offset, length) of the layer's own metadata on the partition."""
    data_offset: int | None = None
    """Where the layer's content (ciphertext, extents) starts, when the header says."""
    details: tuple[tuple[str, str], ...] = ()
    """What else the header tells (cipher, volume group, ...), for ``rescue info``."""

    def describe(self) -> str:
        return f"{self.name} (UUID {self.uuid})" if self.uuid else self.name


Probe = Callable[[bytes, BinaryIO, int], Container | None]
"""A container module's recogniser: (head of the partition, the partition, its size)."""


def read_at(f: BinaryIO, offset: int, size: int) -> bytes:
    """Up to ``size`` bytes at ``offset`` (fewer at the end of the partition)."""
    f.seek(offset)
    return f.read(size)
