"""Bare-metal restore onto a larger disk: the last partition and its filesystem grow.

The partition table is written for the target (GPT backup at its real end) with
the last partition extended to the end of the disk (1 MiB aligned); after the
data is back, the filesystem grows to fill it, as its registry entry does it
(:meth:`Filesystem.grow <rescue.filesystems.interface.Filesystem.grow>`):
ext2/3/4 with resize2fs (after an e2fsck), NTFS with ntfsresize, XFS and btrfs
online through a private temporary mount (their tools need one), FAT16/32 in
place by our own code (:func:`rescue.filesystems.fat.grow_fat`). exFAT keeps
its size (no resizer for it exists); the partition still grows and the
restore says so.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from rescue import kernel
from rescue.errors import BadInputError, RefusedError
from rescue.filesystems import registry
from rescue.progress import ProgressReporter

MiB = 1 << 20
GPT_BACKUP = 33 * 512


@dataclass(frozen=True)
class Growth:
    name: str
    number: int
    start: int
    old_size: int
    new_size: int
    fstype: str | None
    moved: tuple[tuple[str, int, int], ...] = ()
    """(name, new start, size) of the partitions after a growing one that is not the last."""

    def starts(self) -> dict[str, int]:
        """New starts of the partitions that move."""
        return {name: start for name, start, _ in self.moved}


def plan_growth(
    parts: list[tuple[str, int | None, int, int, str | None]],
    table: str | None,
    target_size: int,
    number: int | None = None,
) -> Growth | None:
    """How a partition grows on a target of ``target_size`` bytes (None: it does not).

    ``parts`` are (name, number, start, size, fstype) of the image's partitions.
    The partition ``number`` (default: the last) takes the new room; the
    partitions after it move to the end of the disk, keeping their sizes.
    """
    numbered = sorted((p for p in parts if p[1] is not None), key=lambda p: p[2])
    if not numbered or table not in ("gpt", "dos"):
        if number is not None:
            raise BadInputError("The image has no partition table: no partition can grow.")
        return None
    index = len(numbered) - 1
    if number is not None:
        found = [i for i, p in enumerate(numbered) if p[1] == number]
        if not found:
            have = ", ".join(str(p[1]) for p in numbered)
            raise BadInputError(f"The image has no partition {number} (it has {have}).")
        index = found[0]
    name, num, start, size, fstype = numbered[index]
    assert num is not None
    after = numbered[index + 1 :]
    if table == "dos" and any((p[1] or 0) > 4 for p in after):
        raise RefusedError(
            f"Partition {num} cannot grow: logical partitions after it would have to move.",
            hint="Grow the last partition instead (the default).",
        )
    end = target_size - (GPT_BACKUP if table == "gpt" else 0)
    end -= end % MiB
    extra = end - start - size
    if after:
        extra = end - max(p[2] + p[3] for p in numbered)
        extra -= extra % MiB  # the partitions that move keep their alignment
    if extra <= MiB:  # not worth it (or no room)
        return None
    moved = tuple((p[0], p[2] + extra, p[3]) for p in after)
    return Growth(name, num, start, size, size + extra, fstype, moved)


def resized_script(sf_text: str, sector: int, places: dict[str, tuple[int, int]]) -> str:
    """The saved sfdisk script with a new (start, size), in bytes, for the named partitions."""
    out = []
    for line in sf_text.splitlines():
        head, _, rest = line.partition(":")
        place = places.get(head.strip().rsplit("/", 1)[-1])
        if place is None or "size=" not in rest:
            out.append(line)
            continue
        fields = []
        for field in (f.strip() for f in rest.split(",")):
            if field.startswith("start="):
                fields.append(f"start={place[0] // sector}")
            elif field.startswith("size="):
                fields.append(f"size={place[1] // sector}")
            else:
                fields.append(field)
        out.append(f"{head}: {', '.join(fields)}")
    return "\n".join(out) + "\n"


def grown_script(sf_text: str, growth: Growth, sector: int) -> str:
    """The saved sfdisk script with the growing partition's size changed."""
    places = {growth.name: (growth.start, growth.new_size)}
    places.update({name: (start, size) for name, start, size in growth.moved})
    if growth.number > 4:  # a logical partition: the extended partition holding it grows too
        for name, start, size, kind in _script_entries(sf_text, sector):
            inside = start <= growth.start and start + size >= growth.start + growth.old_size
            if kind.lower().removeprefix("0x") in _EXTENDED and inside:
                places[name] = (start, growth.start + growth.new_size - start)
    return resized_script(sf_text, sector, places)


_EXTENDED = ("5", "f", "85")
"""MBR types of an extended partition."""


def _script_entries(sf_text: str, sector: int) -> list[tuple[str, int, int, str]]:
    """(name, start, size, type) of every partition line of an sfdisk script, in bytes."""
    out = []
    for line in sf_text.splitlines():
        head, _, rest = line.partition(":")
        fields = dict(f.strip().partition("=")[::2] for f in rest.split(",") if "=" in f)
        if "start" in fields and "size" in fields:
            name = head.strip().rsplit("/", 1)[-1]
            start, size = int(fields["start"]) * sector, int(fields["size"]) * sector
            out.append((name, start, size, fields.get("type", "").strip()))
    return out


@contextlib.contextmanager
def range_device(path: str, start: int, size: int) -> Iterator[str]:
    """A loop device over ``size`` bytes at ``start`` of a disk file."""
    with kernel.loop_device(path, read_only=False, offset=start, size=size) as loop:
        yield loop


@contextlib.contextmanager
def partition_device(path: str, start: int, size: int, node: str | None) -> Iterator[str]:
    """The partition as a device: its own node, or a loop device over a disk file's range."""
    if node is not None:
        yield node
        return
    with range_device(path, start, size) as loop:
        yield loop


def grow_filesystem(
    growth: Growth, *, disk: str, node: str | None, progress: ProgressReporter
) -> None:
    """Grow the filesystem on the grown partition to fill it."""
    fs = registry.get(growth.fstype)
    if fs is None or not fs.can_grow:
        progress.note(
            f"{growth.name}: the partition grew, its {growth.fstype or 'unknown'} filesystem "
            "keeps its size (no resizer for it here)."
        )
        return
    with partition_device(disk, growth.start, growth.new_size, node) as dev:
        done = fs.grow(dev, growth.new_size)
    progress.note(f"{growth.name}: {done or f'{growth.fstype} grown to fill the partition'}.")
