"""Mount a partition of an image read-only, and take it down again.

A mount is an image partition served as a read-only loop device
(:mod:`rescue.imagedev.served`) with its filesystem mounted on top,
``ro,nosuid,nodev,noexec`` with journal replay off (by the kernel, or by the
filesystem's FUSE driver where the kernel cannot: its registry entry's
:meth:`~rescue.filesystems.interface.Filesystem.mount_at` decides). The served partition's
record also records the mount, so ``unmount`` and the sweep remove it with the
rest.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from rescue import kernel
from rescue.containers.keys import Secret, encode_for_pipe
from rescue.errors import BadInputError, RescueError
from rescue.filesystems import registry
from rescue.image.manifest import DATA_STREAMS, StoredAs
from rescue.image.view import ImagePart, ImageView, check_all_present, open_image
from rescue.imagedev.index import prepare
from rescue.imagedev.served import (
    PIECE_TIMEOUT,
    ServedRecord,
    find_record,
    is_stale,
    records,
    removed_on_failure,
    serve,
    sweep,
    take_down,
)
from rescue.progress import NullProgress, ProgressReporter

__all__ = [
    "MountedPartition",
    "choose_partition",
    "mount_image",
    "records",
    "sweep",
    "unmount",
    "unmount_all",
]

# --- choosing what to mount ---------------------------------------------------------


def _describe(p: ImagePart) -> str:
    number = p.number if p.number is not None else "-"
    return f"  {number}: {p.name} {p.fstype or 'unknown'} ({p.stored_as})"


def choose_partition(image: ImageView, number: int | None) -> ImagePart:
    browsable = [p for p in image.parts if p.stored_as in DATA_STREAMS]
    listing = "\n".join(_describe(p) for p in image.parts)
    if number is None:
        if len(browsable) == 1:
            return browsable[0]
        raise BadInputError(
            f"{image.folder} holds {len(browsable)} partitions that can be browsed; "
            f"choose one with --partition N:\n{listing}"
        )
    for p in image.parts:
        if p.number == number or (p.number is None and len(image.parts) == 1 and number == 1):
            if p not in browsable:
                what = "swap space" if p.stored_as == StoredAs.SWAP else "no stored data"
                raise BadInputError(
                    f"Partition {number} ({p.name}) holds {what}: nothing to browse."
                )
            return p
    raise BadInputError(f"{image.folder} has no partition {number}. It holds:\n{listing}")


def _check_mountpoint(mountpoint: Path) -> None:
    if not mountpoint.exists():
        if not mountpoint.parent.is_dir():
            raise BadInputError(f"The folder {mountpoint.parent} does not exist.")
        mountpoint.mkdir()
        return
    if not mountpoint.is_dir():
        raise BadInputError(f"{mountpoint} is not a folder.")
    if kernel.mounted_at(mountpoint) is not None:
        raise BadInputError(f"Something is already mounted at {mountpoint}.")
    if any(mountpoint.iterdir()):
        raise BadInputError(
            f"{mountpoint} is not empty; mounting there would hide its files.",
            hint="Choose an empty folder.",
        )


# --- making a mount -------------------------------------------------------------------


def is_layered(part: ImagePart) -> bool:
    """The partition was stored through a volume layer that is read inside to browse."""
    fs = registry.get(part.fstype)
    return part.stored_as == StoredAs.PARTCLONE and fs is not None and fs.layer


def _detect_fstype(loop: str, recorded: str | None) -> str:
    fstype = registry.canonical(kernel.blkid(loop).get("TYPE") or recorded or "")
    fs = registry.get(fstype)
    if not fstype or (fs is not None and fs.raw):
        raise BadInputError(
            "The partition holds no filesystem that can be recognised; it cannot be browsed."
        )
    return fstype


def _mount_fs(loop: str, fstype: str, mountpoint: str) -> str:
    """Mount ``loop`` read-only at ``mountpoint``; returns the driver used."""
    fs = registry.get(fstype)
    if fs is None:
        raise BadInputError(f"Browsing a {fstype} filesystem is not supported.")
    return fs.mount_at(loop, mountpoint, writable=False)


def _wait_mounted(mountpoint: str) -> str:
    """The source of the filesystem that appeared at ``mountpoint``."""
    deadline = time.monotonic() + PIECE_TIMEOUT
    while (source := kernel.mounted_at(mountpoint)) is None:
        if time.monotonic() > deadline:
            raise RescueError(f"The filesystem did not appear at {mountpoint}.")
        time.sleep(0.02)
    return source


@dataclass(frozen=True)
class MountedPartition:
    record: ServedRecord
    part: ImagePart

    @property
    def mountpoint(self) -> Path:
        return Path(self.record.mountpoint)


def mount_image(
    folder: Path,
    mountpoint: Path | None,
    *,
    partition: int | None = None,
    progress: ProgressReporter | None = None,
    cancel: threading.Event | None = None,
    volume: str | None = None,
    secret: Secret | None = None,
) -> MountedPartition:
    """Mount one partition of the image in ``folder`` read-only at ``mountpoint``.

    With ``mountpoint`` None the mount goes to a private folder inside its state
    folder (for a browsing session). Returns once the files can be read.

    A partition stored through a volume layer (LUKS, BitLocker, LVM) is opened:
    ``volume`` names the LV (``VG/LV``) when there are several, ``secret`` unlocks
    an encrypted one (it goes to the image server through a pipe, nowhere else).
    """
    progress = progress or NullProgress()
    sweep()
    image = open_image(folder)
    check_all_present(image)
    part = choose_partition(image, partition)
    if mountpoint is not None:
        mountpoint = mountpoint.absolute()
        _check_mountpoint(mountpoint)
    spec = prepare(part, progress, cancel)
    layered = is_layered(part)
    if not layered and (volume is not None or secret is not None):
        raise BadInputError(
            f"{part.name} holds {part.fstype or 'no known filesystem'}, not an encrypted "
            "volume or LVM: --volume and keys are not needed."
        )
    if layered:
        spec = replace(spec, inner=True, volume=volume)
    key = encode_for_pipe(secret) if layered else None
    rec = serve(folder, part, spec, mountpoint, writable=False, key=key)
    with removed_on_failure(rec):
        assert rec.loop is not None
        target = rec.mountpoint
        rec.fstype = _detect_fstype(rec.loop, part.fstype)
        rec.driver = _mount_fs(rec.loop, rec.fstype, target)
        rec.mount_source = _wait_mounted(target)
        rec.complete = True
        rec.save()
    return MountedPartition(replace(rec), part)


def unmount(mountpoint: Path) -> ServedRecord:
    """Take down the image mount at ``mountpoint`` (and any stale one)."""
    rec = find_record(mountpoint)
    if rec is None:
        sweep()
        raise BadInputError(f"No image is mounted at {mountpoint} by rescue.")
    take_down(rec, stale=is_stale(rec))
    sweep()
    return rec


def unmount_all() -> list[ServedRecord]:
    done = []
    for rec in records():
        take_down(rec, stale=is_stale(rec))
        done.append(rec)
    return done
