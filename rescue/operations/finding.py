"""Where images are looked for, and what each one found is, in a line: for both front ends.

An image is looked for where a technician keeps one: Clonezilla's folder,
``/mnt`` and ``/media``, and the root of every mounted drive (the running
system's own ``/``, ``/boot`` and ``/boot/efi`` aside), down to two folder
levels (:func:`rescue.image.view.find_images`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from rescue.errors import RescueError
from rescue.image.names import CLONEZILLA_LOG, PARTS_FILE
from rescue.image.view import ImageView, find_images, open_image
from rescue.kernel import MountEntry, mount_table
from rescue.operations.capture_map import describe_resumable

SEARCH_ROOTS = ("/home/partimag", "/mnt", "/media")
"""Always looked in: Clonezilla's image folder and the usual mount folders."""
SYSTEM_MOUNTS = ("/", "/boot", "/boot/efi")
"""Mounted drives not looked in: the running system's own."""


def search_roots(mounts: list[MountEntry] | None = None) -> list[Path]:
    """The folders to look for images in that exist, each once, in a stable order."""
    roots = [Path(r) for r in SEARCH_ROOTS]
    roots.extend(
        Path(m.mountpoint)
        for m in (mount_table() if mounts is None else mounts)
        if m.source.startswith("/dev/") and m.mountpoint not in SYSTEM_MOUNTS
    )
    return [r for r in dict.fromkeys(roots) if r.is_dir()]


def find_images_on_drives() -> list[Path]:
    """Every image folder in :func:`search_roots`."""
    return find_images(search_roots())


@dataclass(frozen=True)
class FoundImage:
    """One image folder as a list shows it; ``problem`` says why it cannot be used."""

    folder: Path
    made: dt.datetime | None
    """When it was captured (rescue's manifest), or its files' time (Clonezilla's)."""
    source: str | None
    """The disk or partition imaged: path, model and serial for ours, a name for Clonezilla's."""
    size: int | None
    """Size of the disk or partition imaged (Clonezilla's: up to its last partition's end)."""
    used: int | None
    """Bytes of data the image holds, when recorded."""
    problem: str | None = None


def describe_found(folder: Path) -> FoundImage:
    """What ``folder`` holds, without reading its streams (a Clonezilla header at most)."""
    try:
        image = open_image(folder)
    except RescueError as exc:
        try:
            interrupted = describe_resumable(folder)
        except RescueError:
            interrupted = None
        if interrupted is not None:
            problem = f"{interrupted}; go on with: rescue capture --resume {folder}"
        else:
            problem = exc.message
        return FoundImage(folder, _file_time(folder), None, None, None, problem)
    return _summary(image)


def _summary(image: ImageView) -> FoundImage:
    m = image.manifest
    source: str | None
    if m is not None:
        src = m.source
        serial = f"({src.serial})" if src.serial else None
        source = " ".join(x for x in (src.path, src.model, serial) if x)
        return FoundImage(image.folder, _parse_created(m.created), source, src.size, m.used_bytes)
    if image.kind == "disk":
        source = image.disk_name
        size = image.required_size
    else:
        source = image.parts[0].name if image.parts else None
        size = sum(p.size for p in image.parts)
    used = image.used_bytes
    return FoundImage(image.folder, _file_time(image.folder), source, size or None, used or None)


def _parse_created(text: str) -> dt.datetime | None:
    """rescue.json's ``created`` (UTC, ISO 8601) as an aware time; None if unreadable."""
    try:
        made = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return made if made.tzinfo is not None else made.replace(tzinfo=dt.UTC)


def _file_time(folder: Path) -> dt.datetime | None:
    """The time Clonezilla's files were written (its log, else the partition list)."""
    for name in (CLONEZILLA_LOG, PARTS_FILE):
        try:
            return dt.datetime.fromtimestamp((folder / name).stat().st_mtime, dt.UTC)
        except OSError:
            continue
    return None
