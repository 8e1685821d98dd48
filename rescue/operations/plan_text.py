"""What a restore will do, in words: the one description both front ends confirm with.

:func:`describe_plan` turns a checked :class:`~rescue.operations.restore.RestorePlan`
into sections of plain lines: the target that is overwritten, the image that
is written (where it came from, when it was made), every partition written
with its planned place and size, and what else happens. The UI shows them in
its typed confirmation, the command line prints them before asking for the
disk's name. Every piece of text that comes from an image folder or a disk
(names, labels, models, paths) goes through :func:`shown`, so a name cannot
print a line of its own. :func:`restore_checked` is the restore with the
optional full verify first (``--verify-first``).
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rescue.errors import ImageDamagedError, RescueError
from rescue.filesystems import registry
from rescue.image.folder import read_text_member
from rescue.image.manifest import StoredAs
from rescue.image.names import CLONEZILLA_LOG, PARTS_FILE, SAVED_BY_CMD_FILE
from rescue.image.view import ImagePart, ImageView
from rescue.operations.layout_plan import Fit, Growth
from rescue.operations.restore import RestorePlan, restore
from rescue.operations.source import Source
from rescue.operations.verify import verify
from rescue.progress import NullProgress, ProgressReporter
from rescue.text import shown
from rescue.units import human_size

MAX_SHOWN = 200
"""Longest piece of text taken from an image's own files (Clonezilla's command line)."""


@dataclass(frozen=True)
class Section:
    """A heading and its lines, each line one fact (a front end may wrap it)."""

    title: str
    lines: tuple[str, ...]


def default_verify_first(image: ImageView) -> bool:
    """Verify in full before writing by default only an image rescue did not write.

    rescue's own images carry a manifest whose sizes are checked before any
    restore (and whose hashes ``rescue verify`` checks); a Clonezilla image
    has nothing of the kind, so its streams are read through once first.
    """
    return image.manifest is None


def describe_plan(plan: RestorePlan, *, verify_first: bool | None = None) -> list[Section]:
    """Target, image, the partitions written and the rest, for the confirmation.

    ``verify_first`` (when given) adds whether the image is verified in full
    before anything is written.
    """
    sections = [
        Section("Target: everything on it is replaced", tuple(target_lines(plan.target))),
        Section("Image written onto it", tuple(image_lines(plan.image))),
        partition_section(plan),
    ]
    other = list(other_lines(plan))
    if verify_first is not None:
        other.append(
            "The whole image is read and checked first; nothing is written if it is damaged."
            if verify_first
            else "No full check of the image first (its files' sizes are checked)."
        )
    sections.append(Section("Also", tuple(other)))
    return sections


def plan_lines(sections: Sequence[Section], indent: str = "  ") -> list[str]:
    """The sections as plain text lines: each heading, then its lines indented."""
    out = []
    for s in sections:
        out.append(f"{s.title}:")
        out.extend(f"{indent}{line}" for line in s.lines)
    return out


# --- the target ---------------------------------------------------------------------


def target_lines(target: Source) -> list[str]:
    """Path (and what kind of thing it is), model, serial, size in bytes and human."""
    if target.is_file:
        what = "a file holding a disk"
    elif target.is_partition:
        what = "a partition"
    else:
        what = "a disk"
    lines = [f"{shown(target.path)} ({what})"]
    ident = []
    if target.model:
        ident.append(f"model {shown(target.model)}")
    if target.serial:
        ident.append(f"serial {shown(target.serial)}")
    if not target.is_file:
        lines.append(", ".join(ident) if ident else "no model or serial reported")
    lines.append(f"size {human_size(target.size)} ({target.size} bytes)")
    return lines


# --- the image ----------------------------------------------------------------------


def image_lines(image: ImageView) -> list[str]:
    """The folder, when it was made and from which disk (or what Clonezilla's files say)."""
    lines = [f"folder {shown(image.folder)}"]
    m = image.manifest
    if m is not None:
        src = m.source
        lines.append(f"made {_when(m.created)} by {shown(m.tool)}")
        of = f"from the {shown(src.kind)} {shown(src.path)}"
        ident = [f"model {shown(src.model)}" if src.model else "",
                 f"serial {shown(src.serial)}" if src.serial else ""]  # fmt: skip
        of += "".join(f", {i}" for i in ident if i)
        lines.append(of)
        table = f", table {shown(src.partition_table)}" if src.partition_table else ""
        lines.append(f"source size {human_size(src.size)} ({src.size} bytes){table}")
        if image.bases:
            chain = ", ".join(shown(b.name) for b in image.bases)
            lines.append(f"incremental: read with the images it builds on ({chain}), beside it")
        lost = sum(n for p in m.partitions for _, n in p.unreadable)
        if lost:
            lines.append(
                f"the source disk was damaged: {lost} bytes of used data could not be read "
                "when it was captured; zeros are written there"
            )
        return lines
    lines.append("written by Clonezilla (no rescue.json: no hashes to check it against)")
    made = _file_time(image.folder)
    if made is not None:
        lines.append(f"its files were written {made}")
    if image.kind == "disk":
        table = f", table {shown(image.table)}" if image.table else ""
        lines.append(f"of the disk {shown(image.disk_name or '?')}{table}, "
                     f"partitions up to {human_size(image.required_size)}")  # fmt: skip
    else:
        names = ", ".join(shown(p.name) for p in image.parts)
        lines.append(f"of the partition {names}")
    command = _first_line(image.folder, SAVED_BY_CMD_FILE)
    if command:
        lines.append(f"saved by the command: {command}")
    return lines


def _when(created: str) -> str:
    """rescue.json's ``created`` in local time with its zone, as written if unreadable."""
    try:
        made = dt.datetime.fromisoformat(created)
    except ValueError:
        return shown(created)
    if made.tzinfo is None:
        made = made.replace(tzinfo=dt.UTC)
    return made.astimezone().strftime("%Y-%m-%d %H:%M %Z")


def _file_time(folder: Path) -> str | None:
    for name in (CLONEZILLA_LOG, PARTS_FILE):
        try:
            stamp = (folder / name).lstat().st_mtime
        except OSError:
            continue
        return dt.datetime.fromtimestamp(stamp).astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return None


def _first_line(folder: Path, name: str) -> str | None:
    """The first non-empty line of a small text file of the image, shown safely, or None."""
    try:
        text = read_text_member(folder, name, limit=64 * 1024)
    except (RescueError, OSError):
        return None
    line = next((x.strip() for x in text.splitlines() if x.strip()), "")
    if not line:
        return None
    if len(line) > MAX_SHOWN:
        line = line[:MAX_SHOWN] + "..."
    return shown(line)


# --- the partitions -----------------------------------------------------------------


def partition_section(plan: RestorePlan) -> Section:
    image, growth, fit = plan.image, plan.growth, plan.fit
    if image.kind != "disk":
        part = image.parts[0]
        if fit is not None:
            change = f"shrinks; {human_size(part.size)} → {human_size(plan.target.size)}"
        else:
            change = f"as it was; {human_size(part.size)}"
        where = f"at the start of {shown(plan.target.path)}"
        return Section(
            "Partition written", (f"{_name(part)}: {change}, {where}; {_content(part)}",)
        )
    table = f" ({shown(image.table)} table)" if image.table else ""
    title = f"{len(image.parts)} partition(s) written{table}, {_layout(growth, fit)}"
    return Section(title, tuple(_part_line(p, growth, fit) for p in image.parts))


def _layout(growth: Growth | None, fit: Fit | None) -> str:
    if growth is not None:
        moved = "; the ones after it move to the end" if growth.moved else ""
        return f"partition {growth.number} grows to fill the disk{moved}"
    if fit is not None:
        return "shrunk to fit the smaller disk"
    return "the layout as it was"


def _part_line(part: ImagePart, growth: Growth | None, fit: Fit | None) -> str:
    start, size = part.start, part.size
    new_start, new_size = start, size
    if growth is not None:
        if part.name == growth.name:
            new_size = growth.new_size
        new_start = growth.starts().get(part.name, start)
    if fit is not None:
        place = fit.get(part.name)
        if place is not None:
            new_start, new_size = place.start, place.size
    verdicts = []
    if new_size > size:
        fs = registry.get(part.fstype)
        if fs is not None and fs.imaged and not fs.raw and not fs.can_grow:
            verdicts.append(f"grows (its {fs.human_name} keeps its size)")
        else:
            verdicts.append("grows")
    elif new_size < size:
        verdicts.append("shrinks")
    if new_start != start:
        verdicts.append("moves")
    sizes = human_size(size) if new_size == size else f"{human_size(size)} → {human_size(new_size)}"
    starts = (
        f"at {human_size(start)}"
        if new_start == start
        else f"start {human_size(start)} → {human_size(new_start)}"
    )
    verdict = " and ".join(verdicts) if verdicts else "as it was"
    return f"{_name(part)}: {verdict}; {sizes}, {starts}; {_content(part)}"


def _name(part: ImagePart) -> str:
    number = f"#{part.number} " if part.number is not None else ""
    label = f" label {shown(repr(part.label))}" if part.label else ""
    return f"{number}{shown(part.name)} {shown(part.fstype or 'raw')}{label}"


def _content(part: ImagePart) -> str:
    if part.stored_as == StoredAs.SWAP:
        return "swap made anew"
    if part.stored_as == StoredAs.PARTCLONE:
        return f"{human_size(part.used_bytes)} used" if part.used_bytes else "its used data"
    if part.stored_as == StoredAs.DD:
        return "every byte"
    return "not stored: left empty"


def other_lines(plan: RestorePlan) -> list[str]:
    lines = []
    if plan.new_ids:
        lines.append("new disk GUID, partition GUIDs and filesystem UUIDs (fstab updated)")
    else:
        lines.append("identities kept: the same GUIDs and UUIDs as the source")
    return lines


# --- verify first -------------------------------------------------------------------


def restore_checked(
    plan: RestorePlan,
    *,
    confirmed: bool,
    verify_first: bool,
    progress: ProgressReporter | None = None,
    cancel: threading.Event | None = None,
) -> None:
    """:func:`~rescue.operations.restore.restore`, after a full verify when ``verify_first``.

    A damaged image is refused before the first byte is written to the target.
    """
    progress = progress or NullProgress()
    if confirmed and verify_first:
        try:
            report = verify(plan.image.folder, progress=progress, cancel=cancel)
        except ImageDamagedError as exc:
            raise ImageDamagedError(
                f"The image failed its check before the restore: {exc.message} "
                f"Nothing was written to {shown(plan.target.path)}.",
                hint="Use another copy of the image; rescue verify names what is damaged.",
            ) from exc
        for note in report.notes:
            progress.note(note)
        progress.note(
            f"Image checked: {report.files_checked} file(s) hashed, "
            f"{report.streams_checked} stream(s) decoded; restoring."
        )
    restore(plan, confirmed=confirmed, progress=progress, cancel=cancel)
