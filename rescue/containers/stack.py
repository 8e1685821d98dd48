"""What lies on a partition: volume layers first, then a filesystem; and its used bytes.

The probes run in order on the partition's head; the first that recognises its
signature wins, before any filesystem (a BitLocker volume has a FAT-like boot
sector). A layer is then read through when it can be: an LVM physical volume by
its metadata, an encrypted volume with the key the technician gave. Inside, the
same again (LVM inside LUKS, LUKS inside an LV), down to the filesystems, whose
used blocks are mapped back down through every layer to byte ranges of the
partition. Those ranges, with every layer's metadata, are what capture stores —
as they are on disk, so an encrypted volume stays encrypted and opens with the
same keys after a restore, which needs no key.

A layer that cannot be read (no key, a cipher or layout rescue does not read) is
stored whole, with the reason and its cost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

from rescue.blockio import merge_ranges
from rescue.containers import bitlocker, luks, lvm, md
from rescue.containers.base import (
    PROBE_BYTES,
    Container,
    LayerInfo,
    Opened,
    Probe,
    Volume,
    VolumeInfo,
    binary_view,
    read_at,
)
from rescue.containers.keys import Secret
from rescue.errors import BadInputError, FilesystemError, WrongKeyError
from rescue.filesystems import registry
from rescue.filesystems.base import Allocation, bitmap_from_runs, count_bits
from rescue.filesystems.detect import allocation_for as filesystem_allocation
from rescue.filesystems.layers import layer_block_size
from rescue.filesystems.probe import probe_fstype
from rescue.filesystems.raw import raw_allocation
from rescue.units import human_size

log = logging.getLogger(__name__)

PROBES: tuple[Probe, ...] = (md.probe, luks.probe, bitlocker.probe, lvm.probe)
"""Every container type rescue recognises, in the order they are tried (md first: a
member whose superblock is at its end holds anything at its start, LVM or LUKS)."""

ENCRYPTED = ("luks", "bitlocker")
"""Container kinds that need a key to be read inside."""

MAX_DEPTH = 4
"""Layers within layers read at most (LUKS in LVM in LUKS ... is not met in practice)."""

SWAP_HEADER = 64 * 1024
"""What is kept of a swap volume inside a layer: its header, so it is found by its UUID."""

Opener = Callable[[BinaryIO, int, Container, Secret | None], Opened]


def _open_lvm(f: BinaryIO, size: int, found: Container, secret: Secret | None) -> Opened:
    return lvm.open_layer(f, size, found)  # no key: LVM is not encrypted


def _open_md(f: BinaryIO, size: int, found: Container, secret: Secret | None) -> Opened:
    return md.open_layer(f, size, found)


OPENERS: dict[str, Opener] = {
    "luks": luks.open_layer,
    "bitlocker": bitlocker.open_layer,
    "lvm2-pv": _open_lvm,
    "md": _open_md,
}
"""How each container kind is read through; a kind without one is stored whole."""

REGISTRY_NAMES = {"luks": "luks", "bitlocker": "bitlocker", "lvm2-pv": "lvm2", "md": "md"}
"""The registry entry (and image file name) of a partition stored through each layer."""


def find_container(f: BinaryIO, size: int) -> Container | None:
    """The container layer at the start of the device in ``f``, or None."""
    try:
        head = read_at(f, 0, min(PROBE_BYTES, size))
        for probe in PROBES:
            found = probe(head, f, size)
            if found is not None:
                return found
    except OSError as exc:  # an unreadable sector where a signature would be: not a layer
        log.warning("probing for volume layers: %s", exc)
    return None


def stored_whole_reason(found: Container, why: str | None = None) -> str:
    what = (
        "an encrypted volume: stored whole, every block, as ciphertext (it does not compress)"
        if found.kind in ENCRYPTED
        else "a volume layer: stored whole, every block"
    )
    return f"{found.describe()} is {what}" + (f"; {why}" if why else "")


@dataclass
class _Reading:
    """The used byte ranges of one device (a partition, or a volume inside a layer)."""

    ranges: list[tuple[int, int]] = field(default_factory=list)
    layer: LayerInfo | None = None
    alloc: Allocation | None = None
    """The filesystem's own map, when no layer sits on the device."""
    fstype: str | None = None
    """What was found when no map was read: swap, of which only its header is kept."""
    notes: list[str] = field(default_factory=list)


def _fs_ranges(alloc: Allocation) -> list[tuple[int, int]]:
    """The used blocks of a filesystem inside a layer, and the bytes after its last block.

    Those bytes are what capture keeps as the tail of a bare partition: NTFS keeps
    its backup boot sector in the sector after its last one, which ntfsfix and
    Windows' chkdsk look for. Inside a layer they are kept in the stream, up to
    one block (the most a filesystem that fills its volume leaves; one made
    smaller than its volume ends there).
    """
    bs = alloc.block_size
    ranges = [
        (first * bs, min(count * bs, alloc.device_size - first * bs))
        for first, count in alloc.runs()
        if first * bs < alloc.device_size
    ]
    fs_end = alloc.total_blocks * bs
    if not alloc.raw and fs_end < alloc.device_size:
        ranges.append((fs_end, min(bs, alloc.device_size - fs_end)))
    return ranges


def _read_volume(f: BinaryIO, size: int, secret: Secret | None, depth: int) -> _Reading:
    """A volume inside a layer: another layer, a filesystem, swap (its header) or raw."""
    found = find_container(f, size) if depth < MAX_DEPTH else None
    if found is not None:
        return _read_layer(f, size, found, secret, depth)
    fstype = probe_fstype(f)
    fs = registry.get(fstype)
    if fs is not None and fs.recreated:
        return _Reading(ranges=[(0, min(SWAP_HEADER, size))], fstype=fs.name, notes=[
            f"{fs.human_name}: only its header is kept (it holds nothing worth keeping)"
        ])  # fmt: skip
    alloc = filesystem_allocation(f, size, fstype)
    return _Reading(ranges=_fs_ranges(alloc), alloc=alloc, notes=list(alloc.warnings))


def _read_layer(
    f: BinaryIO, size: int, found: Container, secret: Secret | None, depth: int
) -> _Reading:
    opener = OPENERS.get(found.kind)

    def stored_whole(state: str, reason: str) -> _Reading:
        info = LayerInfo(found.kind, found.name, found.uuid, state, reason, details=found.details)
        return _Reading([(0, size)], info)

    if opener is None:
        return stored_whole(
            LayerInfo.WHOLE, stored_whole_reason(found, "rescue does not read inside it yet")
        )
    try:
        opened = opener(f, size, found, secret)
    except WrongKeyError:
        if secret is not None:
            raise
        reason = stored_whole_reason(
            found, f"it is locked (no key was given): {human_size(size)} that a key would "
            "shrink to the used blocks inside"
        )  # fmt: skip
        return stored_whole(LayerInfo.LOCKED, reason)
    except FilesystemError as exc:
        reason = stored_whole_reason(found, f"it cannot be read inside: {exc.message}")
        log.warning("%s", reason)
        return stored_whole(LayerInfo.WHOLE, reason)
    ranges = list(found.metadata) + list(opened.metadata)
    metadata = _total(merge_ranges(ranges))
    notes: list[str] = []
    volumes = []
    for vol in opened.volumes:
        inner = _read_volume(binary_view(vol), vol.size, secret, depth + 1)
        mapped = [r for off, n in inner.ranges for r in vol.outer_ranges(off, n)]
        ranges += mapped
        alloc = inner.alloc
        # a layer inside says its own notes, on its volumes (the partition's warnings list all)
        note = "; ".join(inner.notes) if inner.layer is None else None
        volumes.append(
            VolumeInfo(
                name=vol.name,
                size=vol.size,
                fstype=alloc.fstype if alloc is not None else inner.fstype,
                used_bytes=_total(merge_ranges(mapped)),
                uuid=alloc.uuid if alloc is not None else None,
                label=alloc.label if alloc is not None else None,
                note=note or None,
                layers=(inner.layer,) if inner.layer is not None else (),
            )
        )
        notes += [f"{vol.name}: {n}" for n in inner.notes]
    for reason, kept in opened.whole:
        ranges += kept
        notes.append(reason)
    said = dict(opened.details)
    layer = LayerInfo(
        found.kind, found.name, found.uuid, LayerInfo.READ, metadata_bytes=metadata,
        details=tuple((k, v) for k, v in found.details if k not in said) + opened.details,
        volumes=tuple(volumes), reason="; ".join(r for r, _ in opened.whole) or None,
    )  # fmt: skip
    return _Reading(ranges, layer, notes=notes)


def _total(ranges: list[tuple[int, int]]) -> int:
    return sum(n for _, n in ranges)


@dataclass(frozen=True)
class PartitionReading:
    """How a partition is stored: its allocation map, and the layers it was read through."""

    alloc: Allocation
    layers: tuple[LayerInfo, ...] = ()


def read_partition(
    f: BinaryIO, size: int, fstype: str | None = None, secret: Secret | None = None
) -> PartitionReading:
    """The used blocks of the partition in ``f``, through every layer rescue can read.

    A wrong ``secret`` raises :class:`WrongKeyError` (nothing is stored); no secret
    for an encrypted layer stores it whole, with the reason in the warnings.
    """
    found = find_container(f, size)
    if found is None:
        return PartitionReading(filesystem_allocation(f, size, fstype))
    reading = _read_layer(f, size, found, secret, 0)
    assert reading.layer is not None
    layer = reading.layer
    if layer.state != LayerInfo.READ:
        return PartitionReading(raw_allocation(size, reason=layer.reason), (layer,))
    block = layer_block_size(size)
    runs = []
    for off, n in merge_ranges(reading.ranges):
        end = min(off + n, size)
        if end > off:
            first = off // block
            runs.append((first, -(-end // block) - first))
    total = size // block
    bitmap = bitmap_from_runs(total, runs)
    used = count_bits(bytes(bitmap), total)
    entry = registry.require(REGISTRY_NAMES[found.kind])
    assert entry.partclone_name is not None
    alloc = Allocation(
        fstype=entry.name, partclone_fs=entry.partclone_name, block_size=block,
        total_blocks=total, device_size=size, bitmap=bytes(bitmap), used_blocks=used,
        fs_used_blocks=used, uuid=found.uuid, warnings=tuple(reading.notes),
    )  # fmt: skip
    return PartitionReading(alloc, (layer,))


def allocation_for(
    f: BinaryIO, size: int, fstype: str | None = None, secret: Secret | None = None
) -> Allocation:
    """Used blocks of the partition in ``f`` (see :func:`read_partition`)."""
    return read_partition(f, size, fstype, secret).alloc


def volumes_inside(f: BinaryIO, size: int, secret: Secret | None, depth: int = 0) -> list[Volume]:
    """The innermost volumes of the layers on the device in ``f``: what holds filesystems.

    A partition with no layer has none. A locked layer without ``secret`` raises
    :class:`WrongKeyError`, as does a wrong one.
    """
    found = find_container(f, size) if depth < MAX_DEPTH else None
    if found is None:
        return []
    opener = OPENERS.get(found.kind)
    if opener is None:
        raise FilesystemError(f"{found.describe()}: rescue does not read inside it yet.")
    leaves: list[Volume] = []
    for vol in opener(f, size, found, secret).volumes:
        inner = volumes_inside(binary_view(vol), vol.size, secret, depth + 1)
        leaves += inner or [vol]
    return leaves


def choose_volume(volumes: list[Volume], name: str | None, what: str) -> Volume:
    """The volume called ``name`` (``VG/LV``), or the only one when no name is given."""
    names = ", ".join(v.name for v in volumes)
    if name is None:
        if len(volumes) == 1:
            return volumes[0]
        raise BadInputError(
            f"{what} holds {len(volumes)} volumes: {names}. Choose one by its name "
            "(--volume VG/LV on the command line, the volume field in the browser)."
        )
    for vol in volumes:
        if vol.name == name:
            return vol
    raise BadInputError(f"{what} holds no volume {name!r}; it holds: {names or 'none'}.")
