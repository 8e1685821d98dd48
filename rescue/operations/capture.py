"""Capture: image a disk, a partition or a raw disk file into a Clonezilla-style folder."""

from __future__ import annotations

import base64
import dataclasses
import errno
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from rescue import __version__, system
from rescue.blockio import Window, binary
from rescue.containers.base import LayerInfo
from rescue.containers.keys import Secret
from rescue.containers.stack import read_partition
from rescue.copier import (
    Checkpoint,
    CompressionOptions,
    Extent,
    ReadOptions,
    write_region_list,
    write_stream,
)
from rescue.devices.smart import smart_summary
from rescue.errors import (
    BadInputError,
    DeviceError,
    DeviceGoneError,
    ImageLockedError,
    RefusedError,
)
from rescue.filesystems import registry
from rescue.filesystems.base import Allocation
from rescue.filesystems.damage import damaged_files
from rescue.filesystems.probe import probe_fstype
from rescue.filesystems.swap import SWAP
from rescue.image import layout as layout_mod
from rescue.image.hashing import sha256_file
from rescue.image.manifest import (
    FORMAT_VERSION,
    INCREMENTAL_FORMAT_VERSION,
    Delta,
    Manifest,
    PartitionRecord,
    SourceIdentity,
    StoredAs,
    StoredFile,
    fsync_dir,
    write_manifest,
)
from rescue.image.names import (
    DAMAGE_REPORT,
    DISK_FILE,
    INCOMPLETE_MARKER,
    MANIFEST_NAME,
    PARTS_FILE,
    delta_stream_name,
    stream_name,
)
from rescue.image.regions import REGION_SIZE, regions_name
from rescue.image.sealing import (
    KeyHeader,
    folder_sealer,
    is_encrypted,
    new_key_header,
    start_encrypted_folder,
    unlock_image,
    write_sealed_member,
)
from rescue.operations.capture_map import CaptureMap, bitmap_digest
from rescue.operations.incremental import (
    Base,
    changed_regions,
    delta_allocation,
    open_base,
    same_disk,
    why_whole,
)
from rescue.operations.source import (
    Source,
    refuse_if_mounted_rw,
    refuse_if_on_device,
    resolve_source,
)
from rescue.progress import NullProgress, ProgressReporter, check_cancel

# MBR partition types that are containers, not data (the table restore recreates them)
_EXTENDED_TYPES = {"5", "f", "85", "0x5", "0xf", "0x85"}


@dataclass(frozen=True)
class _Planned:
    name: str
    number: int | None
    start: int
    size: int
    fstype: str | None
    uuid: str | None
    label: str | None
    alloc: Allocation | None  # None: swap or nothing to store
    layers: tuple[LayerInfo, ...] = ()


def _check_folder(image_dir: Path, src: Source) -> None:
    """Refuse a destination that cannot take a new image of ``src`` (nothing is made)."""
    if image_dir.exists():
        if not image_dir.is_dir():
            raise BadInputError(f"{image_dir} exists and is not a folder.")
        if any(image_dir.iterdir()):
            raise BadInputError(
                f"{image_dir} is not empty.",
                hint="Choose a new folder name; rescue never mixes two images in one folder.",
            )
    refuse_if_on_device(image_dir, src.path, "the disk being imaged")
    refuse_if_mounted_rw(src)


def check_capture(source_path: str, image_dir: Path) -> Source:
    """The checks a new capture makes before it reads anything, for a front end that shows
    its plan first (an unattended job): the source as the image records it, or the refusal."""
    src = resolve_source(source_path)
    _check_folder(image_dir, src)
    return src


def _prepare_folder(image_dir: Path, src: Source) -> None:
    _check_folder(image_dir, src)
    image_dir.mkdir(parents=True, exist_ok=True)


def destination_fstype(folder: Path) -> str | None:
    """Filesystem type of the mount holding ``folder`` (findmnt), None when unknown."""
    if system.which("findmnt") is None:
        return None
    out = system.run(["findmnt", "-n", "-o", "FSTYPE", "-T", str(folder)], check=False)
    return out.stdout.decode().strip() or None


def _split_size(
    options: CompressionOptions, image_dir: Path, progress: ProgressReporter
) -> int | None:
    if options.split is not None:
        return options.split
    fs = registry.for_mount_type(destination_fstype(image_dir))
    if fs is not None and fs.max_file_size is not None:
        # the largest file it holds is the automatic split size (FAT: 4 GiB - 1)
        volume = f"{(fs.max_file_size + 1) / 1024**3:g} GiB"
        progress.note(
            f"The destination is a {fs.human_name} filesystem: splitting streams into "
            f"{volume} volumes."
        )
        return fs.max_file_size
    return None


def capture(
    source_path: str,
    image_dir: Path,
    *,
    options: CompressionOptions | None = None,
    reading: ReadOptions | None = None,
    progress: ProgressReporter | None = None,
    cancel: threading.Event | None = None,
    resume: bool = False,
    secrets: Mapping[str, Secret] | None = None,
    image_key: Secret | None = None,
    base: Path | None = None,
) -> Manifest:
    """Image ``source_path`` into the new folder ``image_dir``; returns the manifest written.

    With ``resume``, go on with the capture whose map is in ``image_dir`` (killed,
    out of room, or the disk unplugged): what is safely on disk is kept, the
    rest is read again, and the image is the same as an uninterrupted capture's.

    ``secrets`` open encrypted partitions (by kernel name, ``sda3``): each is read
    inside and only its used sectors are stored, still encrypted. Every key is
    tried before anything is written; a wrong one raises WrongKeyError.

    ``image_key`` (a passphrase) encrypts the new image: every file of it sealed
    (:mod:`rescue.image.sealing`); with ``resume``, it opens the interrupted one.

    ``base`` (an image in the same folder) makes the image incremental: each partition the
    base holds the same way is stored as the regions that changed since (FORMAT.md
    section 13). A resumed capture goes on against the base it started with.
    """
    options = options or CompressionOptions()
    progress = progress or NullProgress()
    src = resolve_source(source_path)
    secrets = dict(secrets or {})
    marker = image_dir / INCOMPLETE_MARKER
    keys = None
    opened_base = None
    if not resume:
        _check_folder(image_dir, src)
        if base is not None:
            if image_key is not None:
                raise BadInputError(
                    "An encrypted image cannot be captured against a base yet.",
                    hint="Capture it without --base (a full encrypted image), or drop --encrypt.",
                )
            opened_base = open_base(base, image_dir)
        if image_key is not None:  # the key is derived before anything is written
            keys = new_key_header(image_key.value)
    elif is_encrypted(image_dir) and folder_sealer(image_dir) is None:
        if image_key is None:
            raise ImageLockedError(
                f"{image_dir} holds an interrupted capture of an encrypted image: it goes on "
                "only with the image's passphrase.",
                hint="Give it with --image-passphrase-file FILE, or on a terminal to be asked.",
            )
        unlock_image(image_dir, image_key.value)
    fd = os.open(src.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        progress.phase("Reading the partition table and allocation maps", None)
        disk, plan = _read_plan(fd, src, secrets)
        return _capture(
            fd, src, image_dir, disk, plan, options=options, reading=reading,
            progress=progress, cancel=cancel, resume=resume, marker=marker, keys=keys,
            base=opened_base,
        )  # fmt: skip
    finally:
        os.close(fd)


def _capture(
    fd: int,
    src: Source,
    image_dir: Path,
    disk: layout_mod.DiskLayout | None,
    plan: list[_Planned],
    *,
    options: CompressionOptions,
    reading: ReadOptions | None,
    progress: ProgressReporter,
    cancel: threading.Event | None,
    resume: bool,
    marker: Path,
    keys: tuple[KeyHeader, bytes] | None = None,
    base: Base | None = None,
) -> Manifest:
    if resume:
        state = _resume_state(image_dir, src)
        base = _resumed_base(image_dir, state)
        options = CompressionOptions(
            state.options["level"], state.options["frame_size"], options.threads,
            state.options["split"],
        )  # fmt: skip
        progress.note(
            f"Resuming: {len(state.done)} partition(s) done"
            + (f", {state.current} in progress" if state.current else "")
        )
    else:
        _prepare_folder(image_dir, src)
        if keys is not None:
            start_encrypted_folder(image_dir, *keys)
            progress.note(
                "The image is encrypted (AES-256-GCM): stock Clonezilla cannot read it; "
                "rescue decrypt makes a plain copy."
            )
        split = _split_size(options, image_dir, progress)
        options = CompressionOptions(options.level, options.frame_size, options.threads, split)
        marker.write_text(
            f"rescue {__version__} is capturing {src.path} here; "
            "without rescue.json this image is incomplete.\n"
        )
        state = CaptureMap(
            source={"path": src.path, "size": src.size, "serial": src.serial, "model": src.model},
            options={"level": options.level, "frame_size": options.frame_size,
                     "split": options.split},
        )  # fmt: skip
        if base is not None:
            state.options["base"] = dataclasses.asdict(base.ref)
            progress.note(
                f"Incremental: only what changed since {base.folder.name} "
                f"({base.manifest.created}) is stored."
            )
        state.save(image_dir)
    _health_note(src, progress)
    table = _save_plan(image_dir, src, disk, plan)
    if base is not None:  # Clonezilla must not list it: it cannot be restored alone
        for name in (DISK_FILE, PARTS_FILE):
            (image_dir / name).unlink(missing_ok=True)
    for p in plan:
        if p.alloc is not None:
            for w in p.alloc.warnings:
                progress.note(f"{p.name}: {w}")
    try:
        records = _store_all(
            fd, src, image_dir, plan, options, state=state,
            reading=reading or ReadOptions(), progress=progress, cancel=cancel, base=base,
        )  # fmt: skip
    except DeviceGoneError as exc:
        raise DeviceGoneError(
            f"{exc.message} The image is incomplete.",
            hint=f"Plug the disk back in, then: rescue capture DISK --resume {image_dir} "
            "(DISK may have a new name; its size and serial are checked).",
        ) from exc
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DeviceError(
                f"The destination of {image_dir} is full: the image is incomplete.",
                hint=f"Free some space there, then run: rescue capture --resume {image_dir}",
            ) from exc
        raise DeviceError(
            f"Writing the image to {image_dir} failed ({exc.strerror or exc}): "
            "the image is incomplete.",
            hint="Check the destination drive (unplugged? read-only?), then run: "
            f"rescue capture --resume {image_dir}",
        ) from exc
    if any(r.unreadable for r in records):
        write_damage_report(image_dir, records)
    layout_files = layout_file_hashes(image_dir, records)
    manifest = Manifest(
        tool=f"rescue {__version__}",
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        source=SourceIdentity(
            path=src.path,
            name=src.name,
            kind="partition" if table is None else "disk",
            size=src.size,
            model=src.model,
            serial=src.serial,
            logical_sector_size=src.logical_sector_size,
            physical_sector_size=src.physical_sector_size,
            partition_table=table,
        ),
        compression={
            "algorithm": "zstd",
            "level": options.level,
            "frame_size": options.frame_size,
            "seekable": True,
            "split": options.split,
        },
        partitions=tuple(records),
        files=layout_files,
        format_version=FORMAT_VERSION if base is None else INCREMENTAL_FORMAT_VERSION,
        base=base.ref if base is not None else None,
    )
    check_cancel(cancel)
    write_manifest(image_dir, manifest)
    state.remove(image_dir)
    marker.unlink()
    fsync_dir(image_dir)
    return manifest


def _read_plan(
    fd: int, src: Source, secrets: dict[str, Secret]
) -> tuple[layout_mod.DiskLayout | None, list[_Planned]]:
    """Decide how each partition is stored (reading its allocation map); nothing is written.

    Keys are tried here, so a wrong one stops the capture before the folder exists.
    """
    if not src.is_partition:
        disk = layout_mod.read_source_layout(src.path, src.name)
        if disk.table is not None:
            parts = [p for p in disk.partitions if str(p.type).lower() not in _EXTENDED_TYPES]
            _check_secret_names(secrets, [p.name for p in parts], src)
            plan = [_plan_one(fd, part, part.number, secrets.get(part.name)) for part in parts]
            return disk, plan
    # a partition, or a disk without a partition table: one filesystem
    _check_secret_names(secrets, [src.name], src)
    whole = layout_mod.PartitionEntry(name=src.name, number=0, start=0, size=src.size, type="")
    return None, [_plan_one(fd, whole, None, secrets.get(src.name))]


def _check_secret_names(secrets: dict[str, Secret], names: list[str], src: Source) -> None:
    unknown = sorted(set(secrets) - set(names))
    if unknown:
        raise BadInputError(
            f"A key was given for {', '.join(unknown)}, which is not a partition of {src.path}.",
            hint=f"Its partitions are: {', '.join(names)}. Name one as /dev/NAME or NAME.",
        )


def _save_plan(
    image_dir: Path, src: Source, disk: layout_mod.DiskLayout | None, plan: list[_Planned]
) -> str | None:
    """Save the layout files; returns the partition table type (None: a lone filesystem)."""
    if disk is not None:
        layout_mod.save_layout(
            image_dir,
            disk,
            src.path,
            parts=[p.name for p in plan],
            fstypes={p.name: _stored_fstype(p) for p in plan},
        )
        return disk.table
    (planned,) = plan
    layout_mod.save_partition_only(
        image_dir,
        src.name,
        _stored_fstype(planned),
        src.path,
        size=src.size,
        uuid=planned.uuid,
        label=planned.label,
    )
    return None


def _stored_fstype(p: _Planned) -> str:
    if p.alloc is None:
        return p.fstype or SWAP.name
    return p.alloc.fstype


def _plan_one(
    fd: int, part: layout_mod.PartitionEntry, number: int | None, secret: Secret | None
) -> _Planned:
    """Read the allocation map of one partition (swap: nothing to read)."""
    window = binary(Window(fd, part.start, part.size))
    fstype = part.fstype or probe_fstype(window)
    uuid, label = part.fs_uuid, part.fs_label
    fs = registry.get(fstype)
    if fs is not None and not fs.imaged:  # swap: recreated on restore from its identity
        return _Planned(part.name, number, part.start, part.size, fstype, uuid, label, None)
    reading = read_partition(window, part.size, fstype, secret)
    alloc = reading.alloc
    return _Planned(
        part.name,
        number,
        part.start,
        part.size,
        fstype,
        uuid or alloc.uuid,
        label or alloc.label,
        alloc,
        reading.layers,
    )


def _store_all(
    fd: int,
    src: Source,
    image_dir: Path,
    plan: list[_Planned],
    options: CompressionOptions,
    *,
    state: CaptureMap,
    reading: ReadOptions,
    progress: ProgressReporter,
    cancel: threading.Event | None,
    base: Base | None = None,
) -> list[PartitionRecord]:
    total = sum(p.alloc.used_bytes for p in plan if p.alloc is not None)
    progress.phase(f"Capturing {src.path}", total)
    other_disk = same_disk(base, src.serial, src.size) if base is not None else None
    if other_disk:
        progress.note(f"Every partition is stored whole: {other_disk}.")
    records = []
    for p in plan:
        check_cancel(cancel)
        record = PartitionRecord(
            name=p.name,
            number=p.number,
            start=p.start,
            size=p.size,
            fstype=p.fstype,
            uuid=p.uuid,
            label=p.label,
            stored_as=StoredAs.SWAP,
            layers=p.layers,
        )
        done = next((r for r in state.done if r.name == p.name), None)
        if done is not None:  # stored before the capture was interrupted
            records.append(done)
            progress.advance(p.alloc.used_bytes if p.alloc is not None else 0)
            continue
        if p.alloc is None:
            records.append(record)
            state.done.append(record)
            state.save(image_dir)
            continue
        alloc = p.alloc
        delta, region_files = None, None
        if base is not None:
            found = _delta(
                fd, src, image_dir, p, base, other_disk=other_disk, progress=progress,
                cancel=cancel,
            )  # fmt: skip
            if found is not None:
                alloc, delta, region_files = found
        digest = bitmap_digest(alloc.bitmap)
        resume_point = None
        if state.current == p.name and state.checkpoint is not None:
            if state.current_bitmap != digest:
                raise RefusedError(
                    f"{p.name} changed since the interrupted capture (its used blocks differ): "
                    "it cannot be resumed.",
                    hint="Capture it again into a new folder.",
                )
            resume_point = state.checkpoint
            progress.advance(min(alloc.used_bytes, resume_point.stream_pos))
        state.current, state.current_bitmap = p.name, digest
        state.checkpoint = resume_point
        state.save(image_dir)
        name = (
            delta_stream_name(p.name, alloc.fstype) if delta else stream_name(p.name, alloc.fstype)
        )
        if resume_point is None:  # nothing of this stream was kept: drop what a kill left
            for leftover in image_dir.glob(f"{name}*"):
                leftover.unlink()

        def keep(point: Checkpoint) -> None:
            state.checkpoint = point
            state.save(image_dir)

        raw = alloc.raw
        result = write_stream(
            Extent(fd, src.path, p.start, p.size),
            alloc,
            image_dir / name,
            options,
            progress=progress if delta is None else _Unmetered(progress),
            cancel=cancel,
            reading=reading,
            resume=resume_point,
            checkpoint=keep,
            regions=image_dir / regions_name(p.name) if delta is None else None,
        )
        if region_files is not None:
            result = dataclasses.replace(result, regions=region_files)
        tail = None
        fs_end = alloc.total_blocks * alloc.block_size
        if not raw and alloc.device_size > fs_end:
            try:
                # what a filesystem keeps past its last whole block (NTFS: its backup boot
                # sector) lies within one block and a sector of it; the rest is free room
                length = min(alloc.device_size - fs_end, alloc.block_size + 512)
                data = os.pread(fd, length, p.start + fs_end)
            except OSError as exc:  # the backup boot sector is unreadable: restore goes on
                progress.note(f"{p.name}: the bytes after the filesystem are unreadable: {exc}")
            else:
                tail = base64.b64encode(data).decode()
        records.append(
            dataclasses.replace(
                record,
                tail=tail,
                fstype=p.fstype if raw else alloc.fstype,
                stored_as=StoredAs.DD if raw else StoredAs.PARTCLONE,
                stream=name,
                block_size=alloc.block_size,
                total_blocks=alloc.total_blocks,
                used_blocks=alloc.used_blocks,
                used_bytes=alloc.used_bytes,
                stream_bytes=result.stream_bytes,
                files=result.files,
                regions=result.regions,
                region_size=REGION_SIZE if result.regions else 0,
                unreadable=result.unreadable,
                damaged_files=_damage(src, p, alloc, result.unreadable, progress),
                warnings=alloc.warnings,
                delta=delta,
            )
        )
        state.done.append(records[-1])
        state.current = state.current_bitmap = None
        state.checkpoint = None
        state.save(image_dir)
    return records


class _Unmetered:
    """Passes on what a reporter is told but the bytes done (counted once already)."""

    def __init__(self, inner: ProgressReporter) -> None:
        self._inner = inner

    def phase(self, name: str, total: int | None) -> None:
        self._inner.phase(name, total)

    def advance(self, done: int) -> None:
        pass

    def note(self, message: str) -> None:
        self._inner.note(message)


def _delta(
    fd: int,
    src: Source,
    image_dir: Path,
    p: _Planned,
    base: Base,
    *,
    other_disk: str | None,
    progress: ProgressReporter,
    cancel: threading.Event | None,
) -> tuple[Allocation, Delta, tuple[StoredFile, ...]] | None:
    """Compare partition ``p`` with the base: the allocation of the blocks to store, what
    the delta records and the region list written; None when it is stored whole."""
    assert p.alloc is not None
    record = base.record(p.number)
    why = other_disk or why_whole(record, start=p.start, size=p.size, uuid=p.uuid, alloc=p.alloc)
    if why is not None or record is None:
        if not other_disk:
            progress.note(f"{p.name}: stored whole, {why}.")
        return None
    out = image_dir / regions_name(p.name)
    files = write_region_list(
        Extent(fd, src.path, p.start, p.size), p.alloc, out, cancel=cancel, progress=progress
    )
    regions = -(-p.alloc.total_blocks * p.alloc.block_size // REGION_SIZE)
    changes = changed_regions(out, base.folder / record.regions[0].name, regions)
    alloc, delta = delta_allocation(p.alloc, changes, record.name)
    progress.note(
        f"{p.name}: {changes.changed} of {changes.total} regions changed since the base "
        f"({alloc.used_bytes} of {p.alloc.used_bytes} used bytes to store)."
    )
    return alloc, delta, files


def _resumed_base(image_dir: Path, state: CaptureMap) -> Base | None:
    """The base an interrupted incremental capture started with, checked unchanged."""
    ref = state.options.get("base")
    if not isinstance(ref, dict):
        return None
    base = open_base(image_dir.parent / str(ref.get("name")), image_dir)
    if base.ref.sha256 != ref.get("sha256"):
        raise RefusedError(
            f"The base {base.folder} changed since this capture started: it cannot be resumed.",
            hint="Capture again into a new folder.",
        )
    return base


def refuse_a_complete_image(image_dir: Path) -> None:
    """``--resume`` of a folder whose capture finished: nothing to do but say so (and finish
    the tidying a capture stopped right after its manifest did not get to)."""
    if (image_dir / MANIFEST_NAME).exists():
        (image_dir / INCOMPLETE_MARKER).unlink(missing_ok=True)
        CaptureMap.discard(image_dir)
        raise BadInputError(f"{image_dir} is a complete image: there is nothing to resume.")


def _resume_state(image_dir: Path, src: Source) -> CaptureMap:
    """The map of the interrupted capture in ``image_dir``, checked against the source."""
    refuse_a_complete_image(image_dir)
    state = CaptureMap.load(image_dir)
    was = state.source
    if src.size != was.get("size") or (was.get("serial") and src.serial != was.get("serial")):
        raise RefusedError(
            f"{src.path} is not the disk this capture started from "
            f"({was.get('path')}, {was.get('model') or ''} {was.get('serial') or ''}, "
            f"{was.get('size')} bytes).",
            hint="Resume with the same disk, or start a new capture into a new folder.",
        )
    refuse_if_mounted_rw(src)
    return state


def _health_note(src: Source, progress: ProgressReporter) -> None:
    """SMART health of the source's disk, before reading it (nothing for files and loops)."""
    if src.is_file:
        return
    disk = src.path
    if src.is_partition:
        sysfs = Path("/sys/class/block") / Path(src.path).name
        parent = sysfs.resolve().parent.name if sysfs.exists() else None
        if not parent:
            return
        disk = f"/dev/{parent}"
    health = smart_summary(disk)
    if health is None:
        return
    if health.failing:
        progress.note(
            f"SMART: {disk} is failing ({health.describe()}): image it now, before anything "
            "else; read errors are expected and will be worked around."
        )
    else:
        progress.note(f"SMART: {disk} reports itself healthy.")


def _damage(
    src: Source,
    p: _Planned,
    alloc: Allocation,
    unreadable: tuple[tuple[int, int], ...],
    progress: ProgressReporter,
) -> tuple[str, ...]:
    """The files holding unreadable bytes, for the report (empty when all was read)."""
    if not unreadable:
        return ()
    progress.note(f"{p.name}: finding the files that hold the unreadable sectors")
    found = damaged_files(
        src.path, start=p.start, size=p.size, fstype=alloc.fstype,
        block_size=alloc.block_size, ranges=list(unreadable),
    )  # fmt: skip
    if found is None:
        return ("(files unknown: no block-to-file map for this filesystem)",)
    return tuple(found)


def write_damage_report(image_dir: Path, records: list[PartitionRecord]) -> None:
    """damage-report.txt: what could not be read, in bytes and in files."""
    lines = ["rescue damage report: used data that could not be read from the source.", ""]
    for r in records:
        if not r.unreadable:
            continue
        total = sum(n for _, n in r.unreadable)
        lines.append(f"{r.name} ({r.fstype}): {total} bytes in {len(r.unreadable)} range(s)")
        lines.extend(f"  bytes {off}-{off + n - 1}" for off, n in r.unreadable)
        lines.append("  files holding them:")
        lines.extend(f"    {f}" for f in r.damaged_files)
        lines.append("")
    text = "\n".join(lines)
    sealer = folder_sealer(image_dir)
    if sealer is not None:  # it names the damaged files: sealed like the rest
        write_sealed_member(image_dir, DAMAGE_REPORT, text.encode(), sealer)
    else:
        (image_dir / DAMAGE_REPORT).write_text(text)


def layout_file_hashes(image_dir: Path, records: list[PartitionRecord]) -> tuple[StoredFile, ...]:
    """Hashes of every file in the folder that is not a data stream or a region list (those
    were hashed as they were written)."""
    stream_files = {f.name for r in records for f in r.stored}
    out = []
    for path in sorted(image_dir.iterdir()):
        if path.name in stream_files or path.name == INCOMPLETE_MARKER or not path.is_file():
            continue
        if path.name.startswith("."):
            continue
        size, digest = sha256_file(path)
        out.append(StoredFile(path.name, size, digest))
    if not out and not records:
        raise DeviceError("Nothing was captured.")
    return tuple(out)
