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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rescue.blockio import is_block_device, open_for_writing
from rescue.errors import ExternalToolError, RefusedError
from rescue.filesystems import registry
from rescue.filesystems.detect import allocation_for
from rescue.filesystems.interface import Op
from rescue.image.manifest import StoredAs
from rescue.image.view import ImagePart, ImageView
from rescue.imagedev.index import open_reader, scratch_dir
from rescue.imagedev.overlay import Overlay
from rescue.imagedev.served import partition_view
from rescue.operations.grow import GPT_BACKUP, MiB, partition_device, resized_script
from rescue.progress import ProgressReporter, check_cancel
from rescue.units import human_size

if TYPE_CHECKING:
    from rescue.imagedev.served import PartitionView

_COPY_CHUNK = 8 * MiB
_TAIL_MAX = MiB
_GAP = 256 << 10
"""Free space shorter than this between used runs is copied rather than skipped."""


def _align_up(n: int, unit: int = MiB) -> int:
    return -(-n // unit) * unit


def _align_down(n: int, unit: int = MiB) -> int:
    return n - n % unit


# --- how small each filesystem can be --------------------------------------------------


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
    return min(part.size, _align_up(least)) if part.size else _align_up(least)


# --- the layout -----------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    name: str
    number: int
    start: int
    size: int
    old_start: int
    old_size: int
    fstype: str | None
    minimum: int

    @property
    def shrinks(self) -> bool:
        return self.size < self.old_size

    @property
    def moves(self) -> bool:
        return self.start != self.old_start


@dataclass(frozen=True)
class Fit:
    """Where every partition goes on a smaller target, and how large it becomes."""

    placements: tuple[Placement, ...]

    def get(self, name: str) -> Placement | None:
        return next((p for p in self.placements if p.name == name), None)

    def script(self, sf_text: str, sector: int) -> str:
        """The saved sfdisk script with the new starts and sizes."""
        return resized_script(sf_text, sector, {p.name: (p.start, p.size) for p in self.placements})

    def describe(self) -> str:
        bits = []
        for p in self.placements:
            if p.shrinks:
                bits.append(
                    f"partition {p.number} ({p.fstype}) shrinks from {human_size(p.old_size)} "
                    f"to {human_size(p.size)}"
                )
            elif p.moves:
                bits.append(f"partition {p.number} ({p.fstype or 'raw'}) moves")
        return "; ".join(bits)


class TooSmallError(RefusedError):
    """Even with every filesystem at its minimum, the partitions do not fit."""


def _pack(
    parts: list[tuple[str, int, int, int, str | None]], sizes: list[int]
) -> list[tuple[int, int]]:
    """(start, size) of the partitions in their order: first where it was, then 1 MiB aligned."""
    placed: list[tuple[int, int]] = []
    for i, size in enumerate(sizes):
        start = parts[0][2] if i == 0 else _align_up(placed[-1][0] + placed[-1][1])
        placed.append((start, size))
    return placed


def plan_fit(
    parts: list[tuple[str, int, int, int, str | None]],
    minimums: dict[str, int],
    table: str | None,
    target_size: int,
) -> Fit:
    """Sizes and places for ``parts`` (name, number, start, size, fstype) on the target.

    Each shrinkable partition gets its minimum plus a share of the spare room in
    proportion to how much it could shrink; no partition grows. Partitions keep
    their order; the first keeps its start, the others follow 1 MiB aligned.
    """
    parts = sorted(parts, key=lambda p: p[2])
    end = _align_down(target_size - (GPT_BACKUP if table == "gpt" else 0))
    floor = [minimums.get(p[0], p[3]) for p in parts]
    packed = _pack(parts, floor)
    least_end = packed[-1][0] + packed[-1][1]
    if least_end > end:
        need = _align_up(least_end + (GPT_BACKUP if table == "gpt" else 0))
        raise TooSmallError(
            f"The target is too small even for the used data: it has {target_size} bytes "
            f"({human_size(target_size)}); with every filesystem shrunk as far as it goes the "
            f"partitions need a disk of at least {need} bytes ({human_size(need)}).",
            hint="Choose a larger target disk.",
        )
    spare = end - least_end
    room = [p[3] - f for p, f in zip(parts, floor, strict=True)]
    total_room = sum(room)
    sizes = []
    for p, f, r in zip(parts, floor, room, strict=True):
        extra = _align_down(spare * r // total_room) if total_room else 0
        sizes.append(min(p[3], f + extra) if r else p[3])
    placed = _pack(parts, sizes)
    return Fit(
        tuple(
            Placement(p[0], p[1], start, size, p[2], p[3], p[4], floor[i])
            for i, (p, (start, size)) in enumerate(zip(parts, placed, strict=True))
        )
    )


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
            [(p.name, p.number or 0, p.start, p.size, p.fstype) for p in parts],
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
    copied = 0
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
        for offset, length in ranges:
            done = 0
            while done < length:
                check_cancel(cancel)
                n = min(_COPY_CHUNK, length - done)
                if source is not None:
                    data = source.pread(offset + done, n)
                else:
                    data = os.pread(src.fileno(), n, offset + done)
                if len(data) != n:
                    raise ExternalToolError(f"Short read from {dev} at byte {offset + done}.")
                os.pwrite(dst_fd, data, dst_base + offset + done)
                done += n
                copied += n
                progress.advance(n)
    os.fsync(dst_fd)
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
                copy_used(view.loop, fstype, source=source, dst_fd=fd, dst_base=base,
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
