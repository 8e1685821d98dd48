"""Bare-metal restore onto a larger disk: the last partition and its filesystem grow.

The partition table is written for the target (GPT backup at its real end) with
the last partition extended to the end of the disk (1 MiB aligned); after the
data is back, the filesystem grows to fill it: ext2/3/4 with resize2fs (after
an e2fsck), NTFS with ntfsresize, XFS and btrfs online through a private
temporary mount (their tools need one). FAT and exFAT keep their size (no
resizer is installed); the partition still grows and the restore says so.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from rescue.errors import ExternalToolError
from rescue.operations.private_mount import private_mount
from rescue.progress import ProgressReporter
from rescue.system import output, run

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


def plan_growth(
    parts: list[tuple[str, int | None, int, int, str | None]], table: str | None, target_size: int
) -> Growth | None:
    """How the last partition grows on a target of ``target_size`` bytes (None: it does not).

    ``parts`` are (name, number, start, size, fstype) of the image's partitions.
    """
    numbered = [p for p in parts if p[1] is not None]
    if not numbered or table not in ("gpt", "dos"):
        return None
    name, number, start, size, fstype = max(numbered, key=lambda p: p[2])
    assert number is not None
    end = target_size - (GPT_BACKUP if table == "gpt" else 0)
    end -= end % MiB
    if end - start <= size + MiB:  # not worth it (or no room)
        return None
    return Growth(name, number, start, size, end - start, fstype)


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
    return resized_script(sf_text, sector, {growth.name: (growth.start, growth.new_size)})


@contextlib.contextmanager
def range_device(path: str, start: int, size: int) -> Iterator[str]:
    """A loop device over ``size`` bytes at ``start`` of a disk file."""
    loop = output(
        ["losetup", "--find", "--show", "--offset", str(start), "--sizelimit", str(size), path]
    ).strip()
    try:
        yield loop
    finally:
        run(["losetup", "-d", loop], check=False)


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
    fs = growth.fstype or ""
    with partition_device(disk, growth.start, growth.new_size, node) as dev:
        if fs in ("ext2", "ext3", "ext4"):
            fsck = run(["e2fsck", "-f", "-y", dev], check=False)
            if fsck.returncode > 1:
                raise ExternalToolError(
                    f"e2fsck found problems on {dev} before growing it (exit {fsck.returncode})."
                )
            run(["resize2fs", dev])
        elif fs == "ntfs":
            run(["ntfsresize", "--force", dev], input=b"y\n")
        elif fs == "xfs":
            with private_mount(dev, "xfs", "rw") as mnt:
                run(["xfs_growfs", str(mnt)])
        elif fs == "btrfs":
            with private_mount(dev, "btrfs", "rw") as mnt:
                run(["btrfs", "filesystem", "resize", "max", str(mnt)])
        else:
            progress.note(
                f"{growth.name}: the partition grew, its {fs or 'unknown'} filesystem keeps its "
                "size (no resizer for it here)."
            )
            return
    progress.note(f"{growth.name}: {fs} grown to fill the partition.")
