"""Where jobs are found: ``rescue-job.toml`` on a filesystem labelled ``RESCUE``, or the file
the kernel command line names (``rescue.job=LABEL:PATH``).

Looking mounts each filesystem read-only at a private mount point (journal replay
off) and unmounts it at once. Running a job found so mounts its filesystem once,
read-write, for the job's duration (:func:`open_job`): the log, and a capture's
image, are written there. A filesystem mounted already is used where it is.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from rescue import kernel
from rescue.devices.model import FLAG_BOOT_MEDIUM, Disk
from rescue.errors import BadInputError, RefusedError, RescueError
from rescue.filesystems import registry
from rescue.operations.jobs import Job, inside, load_job

JOB_FILE_NAME = "rescue-job.toml"
JOB_LABEL = "RESCUE"
"""The label of a filesystem whose ``rescue-job.toml`` :func:`find_jobs` reads."""
CMDLINE_OPTION = "rescue.job"


@dataclass(frozen=True)
class JobRef:
    """A job file named by the label of its filesystem and its path there."""

    label: str
    path: str
    """Relative to the filesystem's root, ``/``-separated, no ``..``."""

    def __str__(self) -> str:
        return f"{self.label}:/{self.path}"


def parse_ref(text: str, where: str = "the job") -> JobRef:
    """``LABEL:PATH`` (``RESCUE:/jobs/lab.toml``); ``LABEL`` alone names its
    ``rescue-job.toml``."""
    label, _, path = text.partition(":")
    if not label:
        raise BadInputError(
            f"{where}: {text!r} names no filesystem label: write LABEL:PATH "
            "(e.g. RESCUE:/rescue-job.toml)."
        )
    parts = [p for p in PurePosixPath(path or JOB_FILE_NAME).parts if p not in ("/", ".")]
    if not parts or ".." in parts or "\x00" in path:
        raise BadInputError(
            f"{where}: {text!r} is not a file inside the filesystem labelled {label!r}: write "
            'LABEL:PATH with PATH from its root, without "..".'
        )
    return JobRef(label, "/".join(parts))


def _cmdline_words(text: str) -> list[str]:
    """The kernel's own splitting: spaces separate words, double quotes keep spaces in one."""
    return [w.replace('"', "") for w in re.findall(r'(?:[^\s"]+|"[^"]*")+', text)]


def cmdline_job(text: str) -> JobRef | None:
    """The job ``rescue.job=LABEL:PATH`` on a kernel command line (the text of
    ``/proc/cmdline``); the last one counts, as the kernel takes the last of a repeated
    option."""
    found = None
    for word in _cmdline_words(text):
        key, sep, value = word.partition("=")
        if key == CMDLINE_OPTION and sep:
            found = value
    if found is None:
        return None
    return parse_ref(found, f"The kernel command line's {CMDLINE_OPTION}")


def read_cmdline(path: Path = Path("/proc/cmdline")) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


@dataclass(frozen=True)
class LabelledFs:
    """A filesystem found by its label: a partition, or a disk with no partition table."""

    device: str
    disk: Disk
    fstype: str | None
    label: str
    mountpoints: tuple[str, ...]


def labelled(label: str, disks: Sequence[Disk]) -> list[LabelledFs]:
    """Every filesystem labelled ``label`` on ``disks``, the boot medium's aside."""
    found: list[LabelledFs] = []
    for disk in disks:
        found.extend(
            LabelledFs(p.path, disk, p.fstype, label, p.mountpoints)
            for p in disk.partitions
            if p.label == label and FLAG_BOOT_MEDIUM not in p.flags
        )
        if (
            not disk.partitions
            and disk.fstype
            and FLAG_BOOT_MEDIUM not in disk.flags
            and kernel.blkid(disk.path).get("LABEL") == label
        ):
            found.append(LabelledFs(disk.path, disk, disk.fstype, label, disk.mountpoints))
    return found


def _writable(folder: Path) -> bool:
    return not os.statvfs(folder).f_flag & os.ST_RDONLY


@contextlib.contextmanager
def mounted(fs: LabelledFs, *, writable: bool) -> Iterator[Path]:
    """The filesystem's root for as long as the block runs: where it is mounted already, or
    mounted once at a private mount point (read-write when the job writes) and unmounted
    at the end, also on an error."""
    if fs.mountpoints:
        where = Path(fs.mountpoints[0])
        if writable and not _writable(where):
            raise RefusedError(
                f"{fs.device} (label {fs.label!r}) is mounted read-only at {where}: the job "
                "cannot write its log or image there.",
                hint=f"Remount it read-write (mount -o remount,rw {where}) or unmount it.",
            )
        yield where
        return
    entry = registry.get(fs.fstype)
    if entry is None:
        raise BadInputError(
            f"{fs.device} (label {fs.label!r}) holds {fs.fstype or 'no filesystem'} that "
            "rescue cannot mount."
        )
    folder = Path(tempfile.mkdtemp(prefix="rescue-job-"))
    try:
        entry.mount_at(fs.device, folder, writable=writable)
        try:
            yield folder
        finally:
            os.sync()
            kernel.unmount(folder, lazy_fallback=True)
    finally:
        with contextlib.suppress(OSError):
            folder.rmdir()


def _the_filesystem(ref: JobRef, disks: Sequence[Disk]) -> LabelledFs:
    found = labelled(ref.label, disks)
    if len(found) == 1:
        return found[0]
    seen = [f"  {p.path} label {p.label!r}" for d in disks for p in d.partitions if p.label] or [
        "  (none)"
    ]
    if not found:
        raise BadInputError(
            f"No filesystem is labelled {ref.label!r} (the job {ref}). Labelled filesystems "
            "seen:\n" + "\n".join(seen),
            hint="Plug in the drive holding the job, or correct the label.",
        )
    raise BadInputError(
        f"{len(found)} filesystems are labelled {ref.label!r} (the job {ref}): "
        + ", ".join(f.device for f in found)
        + "; a job never guesses.",
        hint="Give one drive another label, or unplug it.",
    )


@contextlib.contextmanager
def open_job(ref: JobRef, disks: Sequence[Disk], *, writable: bool = True) -> Iterator[Job]:
    """The job ``ref`` names, its filesystem mounted for as long as the block runs
    (read-write: the job writes its log there, and a capture its image)."""
    fs = _the_filesystem(ref, disks)
    with mounted(fs, writable=writable) as root:
        path = inside(root, ref.path, str(ref))
        yield load_job(path, root=root, device=fs.device, shown_as=str(ref))


@dataclass(frozen=True)
class FoundJob:
    """A job file found on a drive, as a list shows it; ``problem`` says why it cannot run."""

    ref: JobRef
    device: str
    origin: str
    """``label RESCUE`` or ``kernel command line``."""
    summary: str | None = None
    problem: str | None = None


def _summary(job: Job) -> str:
    bits = [job.action, job.image]
    if job.action == "capture" and job.name:
        bits.append(f"as {job.name}")
    if job.rule is not None:
        bits.append(f"{'from' if job.action == 'capture' else 'onto'} {job.rule.text}")
    bits.append(f"then {job.after}")
    return " ".join(bits)


def _look(fs: LabelledFs, ref: JobRef, origin: str) -> FoundJob:
    try:
        with mounted(fs, writable=False) as root:
            path = inside(root, ref.path, str(ref))
            if not path.is_file():
                return FoundJob(ref, fs.device, origin, problem=f"no file {ref.path} there")
            job = load_job(path, root=root, device=fs.device, shown_as=str(ref))
            return FoundJob(ref, fs.device, origin, summary=_summary(job))
    except RescueError as exc:
        return FoundJob(ref, fs.device, origin, problem=exc.message)


def find_jobs(disks: Sequence[Disk]) -> list[FoundJob]:
    """``rescue-job.toml`` at the root of every filesystem labelled ``RESCUE`` (not the boot
    medium), each read from a read-only look; a filesystem without one is left out."""
    found = []
    for fs in labelled(JOB_LABEL, disks):
        job = _look(fs, JobRef(JOB_LABEL, JOB_FILE_NAME), f"label {JOB_LABEL}")
        if job.problem != f"no file {JOB_FILE_NAME} there":
            found.append(job)
    return found


def every_job(disks: Sequence[Disk], cmdline: str) -> list[FoundJob]:
    """The job the kernel command line names (first: it was asked for at boot), then the
    ``rescue-job.toml`` of every filesystem labelled ``RESCUE``; each read from a
    read-only look."""
    found = []
    ref = cmdline_job(cmdline)
    if ref is not None:
        found.append(look_up(ref, disks, CMDLINE_ORIGIN))
    return found + find_jobs(disks)


CMDLINE_ORIGIN = "kernel command line"

LABEL_WAIT = 30.0
"""Seconds the console's start waits for the filesystem a ``rescue.job=`` option names: at
boot a USB drive can show up seconds after the console does."""


def jobs_at_start(
    list_disks: Callable[[], Sequence[Disk]], cmdline: str, *, wait: float = LABEL_WAIT
) -> list[FoundJob]:
    """:func:`every_job` as the console starts at boot, while drives are still appearing:
    udev's events so far are handled first, and the filesystem the kernel command line's
    job names is waited for, up to ``wait`` seconds, before it is said to be missing."""
    kernel.settle()
    ref = cmdline_job(cmdline)
    disks = list_disks()
    deadline = time.monotonic() + wait
    while ref is not None and not labelled(ref.label, disks) and time.monotonic() < deadline:
        time.sleep(1)
        disks = list_disks()
    return every_job(disks, cmdline)


def look_up(ref: JobRef, disks: Sequence[Disk], origin: str) -> FoundJob:
    """The job ``ref`` names (from the kernel command line), read from a read-only look."""
    try:
        fs = _the_filesystem(ref, disks)
    except RescueError as exc:
        return FoundJob(ref, "", origin, problem=exc.message)
    return _look(fs, ref, origin)
