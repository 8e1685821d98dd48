"""What every container module says about the layer it recognises."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO, ClassVar, Protocol, cast

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


class Volume(Protocol):
    """A block device reached through a layer: an unlocked volume's plaintext, an LV.

    Reading goes through ``pread``; ``outer_ranges`` says where bytes of this
    volume lie in the device the layer sits on (its partition, or the volume of
    the layer below), so used ranges found inside can be mapped down and stored
    as they are on disk (ciphertext stays ciphertext).
    """

    name: str
    """For people: ``LUKS2 volume``, ``vg0/root``."""
    size: int
    """Bytes of the volume."""

    def pread(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes of the volume at ``offset`` (fewer only at its end)."""
        ...

    def outer_ranges(self, offset: int, length: int) -> Iterator[tuple[int, int]]:
        """``(offset, length)`` ranges of the outer device that hold these bytes, in order."""
        ...


class VolumeFile(io.RawIOBase):
    """A :class:`Volume` as a read-only binary file, for the filesystem readers."""

    def __init__(self, volume: Volume) -> None:
        super().__init__()
        self.volume = volume
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.volume.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: Any) -> int:  # a writable buffer (collections.abc.Buffer from 3.12)
        view = memoryview(buffer).cast("B")
        data = self.volume.pread(self._pos, min(len(view), max(0, self.volume.size - self._pos)))
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = max(0, self.volume.size - self._pos)
        data = self.volume.pread(self._pos, min(size, max(0, self.volume.size - self._pos)))
        self._pos += len(data)
        return data


def binary_view(volume: Volume) -> BinaryIO:
    """``volume`` as the ``BinaryIO`` the filesystem readers take."""
    return cast(BinaryIO, VolumeFile(volume))


@dataclass(frozen=True)
class Opened:
    """What a layer gives once read through (unlocked, or its metadata parsed)."""

    volumes: tuple[Volume, ...]
    """The inner block devices: one for an unlocked volume, one per readable LV."""
    metadata: tuple[tuple[int, int], ...] = ()
    """Ranges of the outer device that are always stored: headers, keyslots, FVE
    metadata blocks and relocated boot sectors, LVM labels and metadata areas."""
    whole: tuple[tuple[str, tuple[tuple[int, int], ...]], ...] = ()
    """Parts stored whole: ``(reason, outer ranges)`` for what cannot be read
    inside (a thin pool, an LV with extents on another disk, ...)."""
    details: tuple[tuple[str, str], ...] = ()
    """For ``rescue info``: how it was read (``read with``: the tool or library)."""


@dataclass(frozen=True)
class VolumeInfo:
    """One inner volume as capture found it, for the manifest and ``rescue info``."""

    name: str
    size: int
    fstype: str | None = None
    used_bytes: int = 0
    """Bytes stored for it (its filesystem's used blocks, mapped down)."""
    uuid: str | None = None
    label: str | None = None
    note: str | None = None
    """Why it was stored whole, or what else a technician should know."""
    layers: tuple[LayerInfo, ...] = ()
    """A layer inside it (LVM inside LUKS, LUKS inside an LV)."""


@dataclass(frozen=True)
class LayerInfo:
    """One volume layer of a partition as capture read it (or could not)."""

    kind: str
    name: str
    uuid: str | None
    state: str
    """``read`` (the volumes inside were read), ``locked`` (no key) or ``whole``."""
    reason: str | None = None
    metadata_bytes: int = 0
    details: tuple[tuple[str, str], ...] = ()
    volumes: tuple[VolumeInfo, ...] = ()

    READ: ClassVar[str] = "read"
    LOCKED: ClassVar[str] = "locked"
    WHOLE: ClassVar[str] = "whole"
