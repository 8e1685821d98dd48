"""Restore: write an image back onto a disk or a partition, safely."""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rescue import kernel
from rescue.blockio import device_size, is_block_device, open_for_writing, pwrite_all
from rescue.copier import (
    Extent,
    restore_partclone_stream,
    restore_raw_stream,
)
from rescue.devices import find_device
from rescue.devices.safety import check_target
from rescue.errors import BadInputError, DeviceError, ImageDamagedError, RefusedError
from rescue.filesystems import registry
from rescue.filesystems.interface import Filesystem
from rescue.image import layout as layout_mod
from rescue.image.manifest import DATA_STREAMS, StoredAs
from rescue.image.streams import (
    check_raw_stream,
    check_stream,
    stream_error,
)
from rescue.image.view import ImagePart, ImageView, check_all_present, open_image, part_chunks
from rescue.operations.bootcheck import check_fstabs
from rescue.operations.grow import grow_filesystem
from rescue.operations.layout_plan import Fit, Growth, Slot, fixed_size_reason, plan_growth
from rescue.operations.newids import give_new_ids
from rescue.operations.shrink import fit_image, restore_shrunk
from rescue.operations.source import Source, refuse_if_on_device, resolve_source
from rescue.operations.uefi import ESP_TYPES, repair_uefi_boot
from rescue.progress import NullProgress, ProgressReporter, check_cancel
from rescue.units import human_size


@dataclass(frozen=True)
class RestorePlan:
    image: ImageView
    target: Source
    summary: str
    """What will be overwritten, for the confirmation."""
    growth: Growth | None = None
    """The last partition grows to fill a larger target (layout "grow")."""
    new_ids: bool = False
    """Give the restored disk new GUIDs and filesystem UUIDs (and fix its fstab to match)."""
    fit: Fit | None = None
    """Partitions shrink (and move) to fit a smaller target (layout "fit")."""


def describe_target(target: Source) -> str:
    """Model, serial, size and path: what a confirmation must name."""
    bits = [target.path]
    if target.model:
        bits.append(f"model {target.model}")
    if target.serial:
        bits.append(f"serial {target.serial}")
    bits.append(f"{human_size(target.size)} ({target.size} bytes)")
    return ", ".join(bits)


LAYOUTS = ("auto", "keep", "grow", "fit")


def plan_restore(
    image_dir: Path,
    target_path: str,
    layout: str = "auto",
    *,
    new_ids: bool = False,
    grow: int | None = None,
    progress: ProgressReporter | None = None,
    cancel: threading.Event | None = None,
) -> RestorePlan:
    """Check everything that can be checked before writing; raise if the restore must not run.

    ``layout``: "keep" writes the partitions as they were; "grow" (and "auto",
    the default, on a larger target) extends the last partition and its
    filesystem to the end of the target; "fit" (and "auto" on a smaller
    target) shrinks partitions and filesystems so the used data fits, after
    asking each filesystem's tool how small it can be (this reads the image).
    ``grow`` picks the partition that takes a larger target's room (default:
    the last); the partitions after it move to the end.
    """
    if layout not in LAYOUTS:
        raise BadInputError(f"Unknown layout {layout!r}: choose {', '.join(LAYOUTS)}.")
    if grow is not None and layout in ("keep", "fit"):
        raise BadInputError(f"Choosing the partition that grows needs layout grow, not {layout}.")
    image = open_image(image_dir)
    check_all_present(image)
    check_streams(image)
    if is_block_device(target_path):
        # before anything opens it: the boot disk or a mounted one is refused unread
        _check_device_safety(target_path)
    target = resolve_source(target_path)
    if image.kind == "disk" and target.is_partition:
        raise BadInputError(
            f"{image_dir} holds a whole disk; {target.path} is a partition.",
            hint="Restore a whole-disk image onto a disk.",
        )
    refuse_if_on_device(image_dir, target.path, "the image would overwrite itself")
    need = image.required_size
    fit = None
    if target.size < need:
        if layout in ("keep", "grow"):
            raise RefusedError(
                f"{target.path} is too small for the layout as it was: it has {target.size} bytes "
                f"({human_size(target.size)}), the partitions need {need} bytes "
                f"({human_size(need)}).",
                hint="Use --layout fit to shrink the partitions so the used data fits.",
            )
        if grow is not None:
            raise BadInputError(
                f"{target.path} is smaller than the image's disk: no partition can grow."
            )
        fit = fit_image(image, target.path, target.size, progress or NullProgress(), cancel)
    what = ", ".join(f"{p.name} ({p.fstype or 'raw'}, {human_size(p.size)})" for p in image.parts)
    summary = (
        f"Everything on {describe_target(target)} will be overwritten "
        f"with the image {image_dir} ({what})."
    )
    growth = None
    if image.kind == "disk" and layout != "keep" and fit is None:
        growth = plan_growth(
            [Slot(p.name, p.number, p.start, p.size, p.fstype) for p in image.parts],
            image.table,
            target.size,
            grow,
        )
    if growth is not None:
        summary += (
            f" Partition {growth.number} ({growth.fstype or 'raw'}) grows from "
            f"{human_size(growth.old_size)} to {human_size(growth.new_size)} to fill the disk."
        )
        if growth.moved:
            summary += " The partitions after it move to the end of the disk."
    elif (
        image.kind == "disk" and layout != "keep" and fit is None and (fixed := _last_fixed(image))
    ):
        summary += f" The layout is kept: {fixed}."
    elif layout == "grow":
        summary += " The target has no room to grow the last partition: the layout is kept."
    if fit is not None:
        summary += f" The target is smaller than the source: {fit.describe()}."
    elif layout == "fit":
        summary += " The image fits the target as it is: the layout is kept."
    if new_ids:
        summary += " The restored disk gets new GUIDs and filesystem UUIDs (fstab updated)."
    return RestorePlan(
        image=image, target=target, summary=summary, growth=growth, new_ids=new_ids, fit=fit
    )


def check_streams(image: ImageView) -> None:
    """Every stream a restore reads: its volumes, seek table, header and bitmap, checked
    against the manifest and the partition sizes before the first byte is written.

    Nothing of the data is decoded (``--verify-first`` does that); what this cannot see
    (a damaged frame in the middle) stops the restore when it is reached.
    """
    for part in image.parts:
        if part.stored_as not in DATA_STREAMS or part.stream is None:
            continue
        size = part.size or None
        if part.stored_as != StoredAs.PARTCLONE:
            check_raw_stream(part.stream, part.compression, partition_size=size)
            continue
        header = check_stream(
            part.stream, part.compression, partition_size=size, expect_fstype=part.fstype
        )
        record = next(
            (
                r
                for r in (image.manifest.partitions if image.manifest else ())
                if r.name == part.name
            ),
            None,
        )
        if record is not None and (
            (header.block_size, header.total_blocks, header.used_blocks)
            != (record.block_size, record.total_blocks, record.used_blocks)
        ):
            raise ImageDamagedError(
                f"{part.stream.name}: its header says {header.used_blocks} used of "
                f"{header.total_blocks} blocks of {header.block_size} bytes; the manifest "
                f"records {record.used_blocks} of {record.total_blocks} of {record.block_size}."
            )
        for link in part.links[1:]:  # the images an incremental one builds on
            check_stream(link.stream, "zst", partition_size=size, expect_fstype=part.fstype)


def _check_device_safety(path: str) -> None:
    check_target(find_device(path))


def _last_fixed(image: ImageView) -> str | None:
    """Why the image's last partition keeps its size, when it must."""
    numbered = [p for p in image.parts if p.number is not None]
    if not numbered:
        return None
    last = max(numbered, key=lambda p: p.start)
    reason = fixed_size_reason(Slot(last.name, last.number, last.start, last.size, last.fstype))
    return f"partition {last.number}: {reason}" if reason else None


def restore(
    plan: RestorePlan,
    *,
    confirmed: bool,
    progress: ProgressReporter | None = None,
    cancel: threading.Event | None = None,
) -> None:
    """Run a checked plan; the front end must have had the technician confirm it."""
    progress = progress or NullProgress()
    if not confirmed:
        raise RefusedError(f"Not confirmed: nothing was written to {plan.target.path}.")
    image, target = plan.image, plan.target
    if image.manifest is not None:
        lost = sum(n for p in image.manifest.partitions for _, n in p.unreadable)
        if lost:
            progress.note(
                f"The source disk was damaged: {lost} bytes of used data could not be read "
                "when it was captured; zeros are written there (the ranges are in rescue.json)."
            )
    progress.phase(f"Restoring {image.folder} to {target.path}", image.used_bytes)
    with disk_lock(target.path):
        if image.kind == "disk":
            assert image.disk_name is not None
            growth, fit = plan.growth, plan.fit
            edit = growth.script if growth else fit.script if fit else None
            layout_mod.restore_partition_table(
                image.folder, image.disk_name, target.path, target.size, edit=edit
            )
            moved = growth.starts() if growth else {}
            for part in image.parts:
                check_cancel(cancel)
                place = fit.get(part.name) if fit else None
                start = place.start if place else moved.get(part.name, part.start)
                where = _part_node(target, part, start)
                if place is not None and place.shrinks:
                    restore_shrunk(image.folder, part, place.size, where, progress=progress,
                                   cancel=cancel)  # fmt: skip
                else:
                    _restore_part(part, target, where, progress, cancel)
                fs = registry.get(part.fstype)
                if start != part.start and fs is not None and fs.records_start:
                    _moved(fs, where, place.size if place else part.size, start // 512)
        else:
            part = image.parts[0]
            if plan.fit is not None:
                where = (target.path, 0)
                restore_shrunk(image.folder, part, target.size, where, progress=progress,
                               cancel=cancel)  # fmt: skip
            else:
                _restore_part(part, target, (target.path, 0), progress, cancel)
    _settle(target, image.kind == "disk")
    if plan.growth is not None:
        node = (
            None if target.is_file else layout_mod.partition_device(target.path, plan.growth.number)
        )
        grow_filesystem(plan.growth, disk=target.path, node=node, progress=progress)
        _settle(target, new_table=False)
    if plan.new_ids:
        parts = _restored_nodes(image, target)
        give_new_ids(target.path, image.table, parts, progress)
        _settle(target, new_table=False)
    if image.kind == "disk" and not target.is_file:
        _repair_uefi(image, target, progress)
        _check_boot_config(image, target, progress)


def _repair_uefi(image: ImageView, target: Source, progress: ProgressReporter) -> None:
    """Make each restored EFI system partition bootable (fallback loader, firmware entry)."""
    if image.table != "gpt":
        return
    for part in image.parts:
        fs = registry.get(part.fstype)
        if part.number is None or fs is None or not fs.esp:
            continue
        node = layout_mod.partition_device(target.path, part.number, wait=2.0)
        if node is None:
            continue
        if kernel.blkid(node).get("PART_ENTRY_TYPE", "").lower() in ESP_TYPES:
            repair_uefi_boot(
                target.path, node, part.number, label=f"restored {image.folder.name}"[:36],
                progress=progress,
            )  # fmt: skip


def _restored_nodes(image: ImageView, target: Source) -> list[tuple[str, str | None]]:
    """(device node, filesystem) of every restored partition that has a node."""
    if image.kind != "disk":
        return [(target.path, image.parts[0].fstype)]
    nodes = []
    for part in image.parts:
        if part.number is None:
            continue
        node = layout_mod.partition_device(target.path, part.number, wait=2.0)
        if node is not None:
            nodes.append((node, part.fstype))
    return nodes


def _check_boot_config(image: ImageView, target: Source, progress: ProgressReporter) -> None:
    """Report fstab entries of the restored system that name no filesystem of the target."""
    for report in check_fstabs(_restored_nodes(image, target)):
        if report.missing:
            progress.note(
                f"WARNING: the fstab on {report.partition} names filesystems that are not on "
                f"{target.path}: {', '.join(report.missing)}. The restored system may stop at "
                "boot waiting for them; edit its fstab or restore them too."
            )
        else:
            progress.note(
                f"The fstab on {report.partition}: all {report.checked} filesystems it names "
                f"are on {target.path}."
            )


def _part_node(target: Source, part: ImagePart, start: int) -> tuple[str, int]:
    """Where to write a partition: its own node on a disk, its offset (``start``) in a file."""
    if target.is_file or part.number is None:
        return target.path, start
    node = layout_mod.partition_device(target.path, part.number)
    if node is None:
        return target.path, start
    return node, 0


def _moved(fs: Filesystem, where: tuple[str, int], size: int, start_sector: int) -> None:
    """Tell a moved filesystem that keeps its partition's start (NTFS) where it is now."""
    fd = open_for_writing(where[0], read=True)
    try:
        fs.record_start(fd, where[1], size, start_sector)
    finally:
        os.close(fd)


def _restore_part(
    part: ImagePart,
    target: Source,
    where: tuple[str, int],
    progress: ProgressReporter,
    cancel: threading.Event | None,
) -> None:
    path, base = where
    if part.stored_as == StoredAs.SWAP:
        registry.require(part.fstype).create(
            path, offset=base, size=part.size, uuid=part.uuid, label=part.label
        )
        return
    if part.stored_as not in DATA_STREAMS or part.stream is None:
        return
    fd = open_for_writing(path)
    try:
        chunks = part_chunks(part)
        room = part.size if base else device_size(path)
        dst = Extent(fd, path, base, room)
        if part.stored_as == StoredAs.PARTCLONE:
            try:
                restore_partclone_stream(chunks, dst, progress=progress, cancel=cancel)
            except ImageDamagedError as exc:
                raise stream_error(part.stream.name, exc) from exc
            if part.tail:
                pwrite_all(fd, part.tail, base + part.tail_offset, path)
        else:
            written = restore_raw_stream(chunks, dst, progress=progress, cancel=cancel)
            if written != part.size and part.used_bytes:
                raise DeviceError(
                    f"The raw stream of {part.name} holds {written} bytes, not {part.size}."
                )
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def disk_lock(path: str) -> Iterator[None]:
    """Hold udev off the disk while we write it (BSD lock on the whole disk, as udev honours).

    Without it, udev re-reads the partition table whenever a partition we wrote
    is closed, and probes half-written filesystems.
    """
    if not is_block_device(path):
        yield
        return
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _settle(target: Source, new_table: bool) -> None:
    """After the lock is gone: let the kernel and udev see the final table and filesystems."""
    if target.is_file:
        return
    if new_table:
        layout_mod.reread_partitions(target.path)
    else:
        kernel.announce_change(target.path)
