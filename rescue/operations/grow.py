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

from rescue import kernel
from rescue.filesystems import registry
from rescue.filesystems.interface import Op
from rescue.operations.layout_plan import Growth
from rescue.progress import ProgressReporter


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
    if fs is not None and not fs.can_grow and not fs.raw:
        progress.note(f"{growth.name}: {fs.refusal(Op.GROW).message}")
        return
    if fs is None or not fs.can_grow:
        progress.note(
            f"{growth.name}: the partition grew, its {growth.fstype or 'unknown'} filesystem "
            "keeps its size (no resizer for it here)."
        )
        return
    with partition_device(disk, growth.start, growth.new_size, node) as dev:
        done = fs.grow(dev, growth.new_size)
    progress.note(f"{growth.name}: {done or f'{growth.fstype} grown to fill the partition'}.")
