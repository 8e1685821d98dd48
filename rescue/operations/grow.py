"""Bare-metal restore onto a larger disk: the last partition and its filesystem grow.

The partition table is written for the target (GPT backup at its real end) with
the last partition extended to the end of the disk (1 MiB aligned); after the
data is back, the filesystem grows to fill it: ext2/3/4 with resize2fs (after
an e2fsck), NTFS with ntfsresize, XFS and btrfs online through a private
temporary mount (their tools need one), FAT16/32 in place by our own code
(:mod:`rescue.filesystems.fatgrow`). exFAT keeps its size (no resizer for it
exists); the partition still grows and the restore says so.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rescue import kernel
from rescue.errors import ExternalToolError
from rescue.filesystems.fatgrow import grow_fat
from rescue.kernel import private_mount
from rescue.operations.layout_plan import Growth
from rescue.progress import ProgressReporter
from rescue.system import run


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
        elif fs == "vfat":
            progress.note(f"{growth.name}: {grow_fat(dev, growth.new_size)}.")
            return
        else:
            progress.note(
                f"{growth.name}: the partition grew, its {fs or 'unknown'} filesystem keeps its "
                "size (no resizer for it here)."
            )
            return
    progress.note(f"{growth.name}: {fs} grown to fill the partition.")
