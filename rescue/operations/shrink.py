"""Restore onto a smaller target: partitions and filesystems shrink so the used data fits.

A filesystem can only be shrunk whole, and the image is read-only and
compressed. So each partition that must shrink is served as a copy-on-write
device (:func:`rescue.imagedev.served.partition_view`: the image underneath,
writes in a sparse scratch file), its own tool shrinks it there (its registry
entry's :meth:`~rescue.filesystems.interface.Filesystem.shrink`: resize2fs
after e2fsck, ntfsresize, ``btrfs filesystem resize`` through a private
mount), and the used blocks of the shrunk filesystem are copied to the target
partition. Nothing is written to the target before every minimum is known and
the plan fits.

A filesystem that cannot shrink but can be rebuilt (XFS) gets a fresh
filesystem of the smaller size like the old one, and its files are copied in
(:meth:`~rescue.filesystems.interface.Filesystem.rebuild`).

The minimum of each filesystem comes from its own tool, run on a read-only
view of the image (:meth:`~rescue.filesystems.interface.Filesystem.minimum_size`).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from rescue.blockio import is_block_device, open_for_writing
from rescue.copier import Extent, copy_ranges
from rescue.errors import DeviceError, ExternalToolError, RefusedError
from rescue.filesystems import registry
from rescue.filesystems.detect import allocation_for
from rescue.filesystems.interface import Op
from rescue.image.manifest import StoredAs
from rescue.image.view import ImagePart, ImageView
from rescue.imagedev.index import open_reader, scratch_dir
from rescue.imagedev.overlay import Overlay
from rescue.imagedev.served import partition_view
from rescue.operations.grow import partition_device
from rescue.operations.layout_plan import (
    Fit,
    MiB,
    Placement,
    Slot,
    TooSmallError,
    align_up,
    plan_fit,
)
from rescue.progress import ProgressReporter, check_cancel
from rescue.units import human_size

if TYPE_CHECKING:
    from rescue.imagedev.served import PartitionView

_TAIL_MAX = MiB
_GAP = 256 << 10
"""Free space shorter than this between used runs is copied rather than skipped."""


def can_shrink(part: ImagePart) -> bool:
    fs = registry.get(part.fstype)
    return part.stored_as == StoredAs.PARTCLONE and fs is not None and fs.restores_smaller


def minimum_size(
    folder: Path, part: ImagePart, progress: ProgressReporter, cancel: threading.Event | None
) -> int:
    """Smallest partition (MiB aligned) that holds ``part``'s filesystem; its size if fixed."""
    if not can_shrink(part):
        return part.size

    fs = registry.require(part.fstype)
    with partition_view(folder, part, progress=progress, cancel=cancel) as view:
        least = fs.minimum_size(view.loop)
    return min(part.size, align_up(least)) if part.size else align_up(least)


def fit_image(
    image: ImageView,
    target: str,
    target_size: int,
    progress: ProgressReporter,
    cancel: threading.Event | None,
) -> Fit:
    """How ``image`` fits a smaller target; refuses (before any write) when it cannot."""
    parts = list(image.parts)
    if image.kind == "disk":
        if image.table not in ("gpt", "dos") or any(p.number is None for p in parts):
            raise RefusedError(
                f"{target} is smaller than the image's disk, and its layout cannot be "
                f"shrunk (no partition table): the target needs {image.required_size} bytes."
            )
        if image.table == "dos" and any((p.number or 0) > 4 for p in parts):
            raise RefusedError(
                "The image's MBR table has logical partitions; shrinking it is not supported: "
                f"the target needs at least {image.required_size} bytes "
                f"({human_size(image.required_size)}).",
                hint="Restore onto a disk at least as large as the source.",
            )
    progress.phase("Working out how small each filesystem can be", None)
    minimums = {}
    for part in parts:
        check_cancel(cancel)
        if can_shrink(part):
            minimums[part.name] = minimum_size(image.folder, part, progress, cancel)
    if image.kind != "disk":
        part = parts[0]
        least = minimums.get(part.name, part.size)
        if not can_shrink(part) or least > target_size:
            what = part.fstype or "raw"
            raise TooSmallError(
                f"{target} is too small: it has {target_size} bytes "
                f"({human_size(target_size)}); the {what} filesystem needs at least "
                f"{least} bytes ({human_size(least)}).",
                hint="Choose a larger target partition.",
            )
        fit = Fit((Placement(part.name, 0, 0, target_size, 0, part.size, part.fstype, least),))
    else:
        fit = plan_fit(
            [Slot(p.name, p.number, p.start, p.size, p.fstype) for p in parts],
            minimums,
            image.table,
            target_size,
        )
    _check_scratch_room(image, fit)
    return fit


def _check_scratch_room(image: ImageView, fit: Fit) -> None:
    """Refuse now, not halfway, when the scratch space for a shrink has no room."""

    for part in image.parts:
        place = fit.get(part.name)
        fs = registry.get(part.fstype)
        in_place = fs is not None and fs.can_shrink  # one rebuilt smaller needs no scratch
        if place is None or not place.shrinks or not in_place or part.stream is None:
            continue
        scratch_dir(part.stream, part.used_bytes)  # one at a time: the largest must fit


# --- shrinking and copying ---------------------------------------------------------------


def copy_used(
    dev: str,
    fstype: str,
    *,
    source: Overlay | None = None,
    dst_fd: int,
    dst_path: str,
    dst_base: int,
    size: int,
    progress: ProgressReporter,
    cancel: threading.Event | None,
) -> int:
    """Copy the used blocks of the (shrunk) filesystem on ``dev`` into ``size`` bytes at the target.

    Also copies the few bytes after the last block (NTFS keeps its backup boot
    sector there). The filesystem's maps are read from ``dev``, the data from
    ``source`` when given (the same bytes, read faster). Returns the bytes copied.
    """
    with open(dev, "rb", buffering=0) as src:
        alloc = allocation_for(src, os.fstat(src.fileno()).st_size or size, fstype)
        fs_end = alloc.total_blocks * alloc.block_size
        if fs_end > size:
            raise ExternalToolError(
                f"The shrunk {fstype} filesystem still ends at byte {fs_end}, past the "
                f"{size} bytes of its new partition; nothing of it was copied."
            )
        ranges: list[tuple[int, int]] = []
        for first, count in alloc.runs():
            offset, length = first * alloc.block_size, count * alloc.block_size
            if ranges and offset - sum(ranges[-1]) <= _GAP:
                # a small hole between used runs is copied along: fewer, larger reads
                ranges[-1] = (ranges[-1][0], offset + length - ranges[-1][0])
            else:
                ranges.append((offset, length))
        tail = min(size, fs_end + _TAIL_MAX) - fs_end
        if tail > 0:
            ranges.append((fs_end, tail))
        fd = src.fileno()
        read = source.pread if source is not None else (lambda off, n: os.pread(fd, n, off))
        copied = copy_ranges(
            read,
            ranges,
            Extent(dst_fd, dst_path, dst_base, size),
            source=dev,
            progress=progress,
            cancel=cancel,
        )
    try:
        os.fsync(dst_fd)
    except OSError as exc:
        raise DeviceError(f"Could not flush {dst_path}: {exc.strerror or exc}.") from exc
    return copied


def check_filesystem(dev: str, fstype: str) -> None:
    """A read-only check of a restored filesystem; raise when it is not clean."""
    fs = registry.get(fstype)
    if fs is None or not fs.supports(Op.CHECK):
        return
    res = fs.check(dev)
    if not res.ok:
        raise ExternalToolError(
            f"The shrunk {fstype} filesystem on {dev} does not check clean "
            f"({res.tool} exit {res.code}): {' / '.join(res.last_lines(3))}"
        )


def restore_shrunk(
    folder: Path,
    part: ImagePart,
    size: int,
    where: tuple[str, int],
    *,
    progress: ProgressReporter,
    cancel: threading.Event | None,
) -> None:
    """Put ``part`` into ``size`` bytes at ``where`` (path, offset): shrunk, or copied file by file.

    The filesystem shrinks on a scratch view of the image, then its used blocks
    are copied; the result is checked with the filesystem's own checker.
    """

    path, base = where
    fstype = part.fstype or ""
    fs = registry.require(fstype)
    node = None if base or not is_block_device(path) else path
    if not fs.can_shrink and fs.can_rebuild:
        with (
            partition_view(folder, part, progress=progress, cancel=cancel) as src,
            partition_device(path, base, size, node) as dst,
        ):
            fs.rebuild(src.loop, dst, progress, cancel)
            check_filesystem(dst, fstype)
        progress.advance(part.used_bytes)
        return
    progress.note(
        f"{part.name}: shrinking its {fstype} filesystem to {human_size(size)} on a scratch "
        "copy of the image (the image itself is not changed)."
    )
    with partition_view(folder, part, writable=True, progress=progress, cancel=cancel) as view:
        fs.shrink(view.loop, size)
        check_cancel(cancel)
        source = _direct_reader(view)
        try:
            fd = open_for_writing(path)
            try:
                copy_used(view.loop, fstype, source=source, dst_fd=fd, dst_path=path, dst_base=base,
                          size=size, progress=progress, cancel=cancel)  # fmt: skip
            finally:
                os.close(fd)
        finally:
            source.close()
    with partition_device(path, base, size, node) as dst:
        check_filesystem(dst, fstype)
    progress.note(f"{part.name}: {fstype} shrunk to {human_size(size)}, copied and checked clean.")


def _direct_reader(view: PartitionView) -> Overlay:
    """The shrunk partition's bytes without the FUSE round trip for what the shrink left alone.

    Blocks the resizer wrote come from the view (the loop device); every other
    block is decompressed from the image in this process, about three times
    faster than through the server. Read once the resizer has finished.
    """

    written = bytearray(view.written_map())
    base = open_reader(view.spec)
    try:
        top = os.open(view.loop, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        base.close()
        raise
    return Overlay(base, top, written)
