"""Capture against a base image: what may be compared with it, and what changed.

A partition is stored as a difference from the base (FORMAT.md section 13) only
when the base holds the same partition the same way: same place and size on the
disk, same filesystem (type, UUID, block size and count), a partclone stream
with a region list of the same region size. Anything else is stored whole, and
the technician is told why. Nothing here reads the base's streams: the
comparison is between region lists.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path

from rescue.blockio import Window, binary
from rescue.containers.stack import allocation_for
from rescue.devices.model import Disk, Partition
from rescue.errors import BadInputError, RescueError
from rescue.filesystems import registry
from rescue.filesystems.base import Allocation
from rescue.image.chain import manifest_digest
from rescue.image.manifest import (
    BaseRef,
    Delta,
    Manifest,
    PartitionRecord,
    StoredAs,
    read_manifest,
)
from rescue.image.names import MANIFEST_NAME
from rescue.image.partclone import Bitmap
from rescue.image.regions import REGION_SIZE, UNKNOWN, read_regions
from rescue.image.sealing import is_encrypted
from rescue.image.view import ImageView, open_image
from rescue.image.volumes import VolumeReader


@dataclass(frozen=True)
class Base:
    """The base image of a capture, opened and checked (its whole chain readable)."""

    folder: Path
    manifest: Manifest
    ref: BaseRef

    def record(self, number: int | None) -> PartitionRecord | None:
        """The base's partition with this number (None: the one partition of a partition
        image): kernel names change with the port a disk is plugged into, numbers do not."""
        parts = self.manifest.partitions
        if number is None:
            return parts[0] if len(parts) == 1 and parts[0].number is None else None
        return next((r for r in parts if r.number == number), None)


def open_base(base: Path, image_dir: Path) -> Base:
    """The image ``base`` for a capture into ``image_dir``: complete, plain, readable down to
    its full image, and in the same folder as the new image (chains are found by name)."""
    if base.resolve().parent != image_dir.absolute().parent.resolve():
        raise BadInputError(
            f"The base {base} is not in the folder the new image goes to "
            f"({image_dir.absolute().parent}).",
            hint="Capture into a folder beside the base: an incremental image finds its base "
            "by name in its own folder.",
        )
    if base.resolve() == image_dir.absolute().resolve():
        raise BadInputError("The base and the new image are the same folder.")
    if is_encrypted(base):
        raise BadInputError(
            f"{base} is an encrypted image: this rescue does not capture against an encrypted "
            "base.",
            hint="Capture a full image, or capture against a plain one.",
        )
    view: ImageView = open_image(base)
    manifest = view.manifest
    if manifest is None:
        raise BadInputError(
            f"{base} was not made by rescue: it has no region hashes to compare with.",
            hint="Capture a full image with rescue first; later captures can build on it.",
        )
    if not any(r.regions for r in manifest.partitions):
        raise BadInputError(
            f"{base} was made by an older rescue without region hashes: nothing can be "
            "compared with it.",
            hint="Capture a full image first; later captures can build on it.",
        )
    ref = BaseRef(name=base.resolve().name, sha256=manifest_digest(base), created=manifest.created)
    return Base(base, manifest, ref)


def same_disk(base: Base, serial: str | None, size: int) -> str | None:
    """Why the base is not an image of this disk (None: it may be)."""
    src = base.manifest.source
    if src.serial and serial and src.serial != serial:
        return f"the base is an image of another disk (serial {src.serial}, this one {serial})"
    if src.size != size:
        return f"the base's disk had {src.size} bytes, this one has {size}"
    return None


def why_whole(
    record: PartitionRecord | None,
    *,
    start: int,
    size: int,
    uuid: str | None,
    alloc: Allocation,
) -> str | None:
    """Why a partition cannot be stored as a difference from ``record`` (None: it can)."""
    if record is None:
        return "the base has no such partition"
    if alloc.raw:
        return "it is stored raw (every byte), which is always stored whole"
    if record.stored_as != StoredAs.PARTCLONE or not record.regions:
        return "the base holds it without region hashes"
    if record.region_size != REGION_SIZE or REGION_SIZE % alloc.block_size:
        return "its blocks do not fit the region size"
    if (record.start, record.size) != (start, size):
        return (
            f"it moved or changed size since the base (bytes {record.start}+{record.size}, "
            f"now {start}+{size})"
        )
    if record.fstype != alloc.fstype or (record.uuid and uuid and record.uuid != uuid):
        return (
            f"it holds another filesystem than in the base ({record.fstype} {record.uuid or ''}, "
            f"now {alloc.fstype} {uuid or ''})"
        )
    if (record.block_size, record.total_blocks) != (alloc.block_size, alloc.total_blocks):
        return (
            f"its filesystem was resized since the base ({record.total_blocks} blocks of "
            f"{record.block_size}, now {alloc.total_blocks} of {alloc.block_size})"
        )
    return None


def _records(path: Path) -> VolumeReader:
    return VolumeReader([path])


@dataclass(frozen=True)
class Changes:
    """What a partition's region list says changed since the base's."""

    flags: bytearray
    """One byte per region of the partition: 1 where the region is to be stored."""
    changed: int
    total: int
    """Regions holding used data (records of the new list)."""


_SET = re.compile(rb"\x01+")


def changed_regions(new_list: Path, base_list: Path, regions: int) -> Changes:
    """Which of the partition's ``regions`` hold used data whose digest the base does not
    have (new, changed, or unreadable in either), both lists read as streams; one byte a
    region is all that is kept (16 MB for a 1 TB partition)."""
    flags = bytearray(regions)
    changed = total = 0
    with _records(new_list) as nv, _records(base_list) as bv:
        old = read_regions(binary(bv))
        have = next(old, None)
        try:
            for region, digest in read_regions(binary(nv)):
                total += 1
                while have is not None and have[0] < region:
                    have = next(old, None)
                if have is None or have[0] != region or digest == UNKNOWN or have[1] != digest:
                    if region >= regions:
                        raise ValueError(f"region {region} lies past the partition's end")
                    flags[region] = 1
                    changed += 1
        except ValueError as exc:
            raise RescueError(f"A region list is damaged: {exc}.") from exc
    return Changes(flags, changed, total)


def delta_allocation(
    alloc: Allocation, changes: Changes, base_name: str
) -> tuple[Allocation, Delta]:
    """``alloc`` with only the used blocks of the changed regions marked: the blocks a
    delta stream holds, and what it records of the whole."""
    bpr = REGION_SIZE // alloc.block_size
    bitmap = alloc.bitmap
    masked = bytearray(len(bitmap))
    for m in _SET.finditer(changes.flags):  # runs of changed regions, found in C
        first, stop = m.start() * bpr, min(m.end() * bpr, alloc.total_blocks)
        if bpr % 8 == 0:  # whole bitmap bytes
            masked[first // 8 : -(-stop // 8)] = bitmap[first // 8 : -(-stop // 8)]
            continue
        for b in range(first, stop):
            if bitmap[b >> 3] >> (b & 7) & 1:
                masked[b >> 3] |= 1 << (b & 7)
    count = Bitmap.from_bytes(masked).count(alloc.total_blocks)
    stored = dataclasses.replace(alloc, bitmap=bytes(masked), used_blocks=count)
    delta = Delta(base_name, alloc.used_blocks, alloc.used_bytes, changes.total, changes.changed)
    return stored, delta


# --- the base a capture screen offers ---------------------------------------------------------


def _same_source(m: Manifest, source: Disk | Partition) -> bool:
    """The image was made of this disk (or partition): the same serial where both have one,
    else the same filesystem UUIDs."""
    if isinstance(source, Disk):
        if m.source.kind != "disk":
            return False
        if m.source.serial and source.serial:
            return m.source.serial == source.serial
        mine = {p.uuid for p in source.partitions if p.uuid}
        return bool(mine) and mine == {r.uuid for r in m.partitions if r.uuid}
    return (
        m.source.kind == "partition"
        and bool(source.uuid)
        and [r.uuid for r in m.partitions] == [source.uuid]
    )


def find_base(destination: Path, source: Disk | Partition) -> Base | None:
    """The newest complete, plain image of ``source`` directly inside ``destination``, with
    region hashes (so a capture can build on it); None when there is none."""
    found: list[tuple[str, int, Base]] = []
    try:
        folders = [p for p in destination.iterdir() if p.is_dir() and not p.is_symlink()]
    except OSError:
        return None
    for folder in folders:
        if not (folder / MANIFEST_NAME).is_file() or is_encrypted(folder):
            continue
        try:
            m = read_manifest(folder)
            if _same_source(m, source) and any(r.regions for r in m.partitions):
                # two captures begun in the same second (``created`` has no finer steps)
                # are told apart by when each manifest was written
                written = (folder / MANIFEST_NAME).stat().st_mtime_ns
                found.append(
                    (m.created, written, Base(folder, m, BaseRef(folder.name, "", m.created)))
                )
        except (RescueError, OSError):
            continue  # damaged or unreadable: not one to build on
    return max(found, key=lambda f: f[:2])[2] if found else None


def surely_new(source: Disk | Partition, base: Base) -> int | None:
    """Used bytes of ``source`` in regions where the base held no used data: an increment
    stores at least these (what was rewritten in place shows only once the disk is read).
    None when a filesystem's map cannot be read."""
    parts = source.partitions if isinstance(source, Disk) else (source,)
    total = 0
    for p in parts:
        number = p.number if isinstance(source, Disk) else None
        record = base.record(number)
        fs = registry.get(p.fstype)
        if fs is not None and not fs.imaged:
            continue
        try:
            fd = os.open(p.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            alloc = allocation_for(binary(Window(fd, 0, p.size)), p.size, p.fstype)
        except (RescueError, OSError):
            return None
        finally:
            os.close(fd)
        start = p.start if isinstance(source, Disk) else 0  # a partition image starts at 0
        if record is None or why_whole(record, start=start, size=p.size, uuid=p.uuid, alloc=alloc):
            total += alloc.used_bytes
            continue
        total += _outside(alloc, base.folder / record.regions[0].name)
    return total


def _outside(alloc: Allocation, base_list: Path) -> int:
    """Used bytes of ``alloc`` in regions the list has no record of."""
    bpr = REGION_SIZE // alloc.block_size
    held = bytearray(-(-alloc.total_blocks // bpr))
    with _records(base_list) as v:
        for region, _digest in read_regions(binary(v)):
            if region < len(held):
                held[region] = 1
    out = 0
    for first, n in alloc.runs():
        for r in range(first // bpr, (first + n - 1) // bpr + 1):
            if not held[r]:
                lo, hi = max(first, r * bpr), min(first + n, (r + 1) * bpr)
                out += (hi - lo) * alloc.block_size
    return out
