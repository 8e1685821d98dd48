"""Unattended jobs: a TOML file that restores, captures or verifies with no one at the keyboard.

A job file (``rescue-job.toml``, docs/JOBS.md) names an action, an image folder
relative to the root of the filesystem holding the file, a rule for the disk
(:mod:`rescue.operations.job_rules`) and what to do afterwards. Everything in it
is checked when it is read: an unknown key (a typo) is an error, never skipped,
and the image folder cannot lead out of the job's filesystem.

A job runs in three steps, each through the operations the commands use:

1. :func:`plan_job` picks the disk (exactly one, or an error listing what was
   seen), opens the image and builds the restore, capture or verify plan; it
   writes nothing (a dry run stops here);
2. the front end confirms it (or ``--yes`` does);
3. :func:`run_job` runs it with progress and writes a log beside the image
   (``rescue-job-DATE-TIME.log``): what ran, on which disk, when, and the result.

A job never writes to the drive holding its file (beyond the image and log it
is meant to write there) nor to the boot medium. Jobs are found on filesystems
labelled ``RESCUE`` or named on the kernel command line (``rescue.job=LABEL:PATH``):
:mod:`rescue.operations.job_finding`.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import string
import threading
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from rescue import __version__, kernel, system
from rescue.devices.model import Disk
from rescue.devices.safety import describe
from rescue.devices.system_state import devnum_of
from rescue.errors import (
    EXIT_OK,
    EXIT_UNREADABLE,
    BadInputError,
    CancelledError,
    DeviceError,
    NotAnImageError,
    RefusedError,
    RescueError,
)
from rescue.image.view import open_image
from rescue.operations.capture import capture, check_capture
from rescue.operations.job_rules import Rule, parse_rule, pick_disk
from rescue.operations.plan_text import default_verify_first, restore_checked
from rescue.operations.restore import LAYOUTS, RestorePlan, plan_restore
from rescue.operations.source import Source
from rescue.operations.verify import is_locked, verify
from rescue.progress import NullProgress, ProgressReporter

ACTIONS = ("capture", "restore", "verify")
AFTERS = ("poweroff", "reboot", "shell")
MAX_JOB_FILE = 64 * 1024
"""A job file is a few lines; anything larger is not one."""

# the keys each action takes; every other key is refused by name
_KEYS: dict[str, tuple[str, ...]] = {
    "capture": ("action", "image", "name", "source", "after"),
    "restore": ("action", "image", "target", "after", "layout", "new_ids", "verify_first"),
    "verify": ("action", "image", "after"),
}
_REQUIRED: dict[str, tuple[str, ...]] = {
    "capture": ("image", "name", "source"),
    "restore": ("image", "target"),
    "verify": ("image",),
}
_PLACEHOLDERS = ("serial", "date", "time")
_NAME_TEXT = re.compile(r"[A-Za-z0-9._+-]*")
_SERIAL_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
NO_SERIAL = "no-serial"
"""What ``{serial}`` becomes for a disk that reports none."""


# --- the job file ---------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """A job file, checked: every path inside the job's filesystem, every value known."""

    file: Path
    """Where the file was read (may be under a private mount point)."""
    shown_as: str
    """How messages and the log name the file (``RESCUE:/rescue-job.toml``, a path)."""
    root: Path
    """The root of the filesystem holding the file: ``image`` is relative to it."""
    device: str | None
    """The block device of that filesystem (None: not on a block device)."""
    action: str
    image: str
    """The image folder as the file writes it (relative to ``root``)."""
    image_dir: Path
    """``image`` under ``root``, symlinks resolved: the folder read (restore, verify) or
    the folder the new image goes into (capture)."""
    after: str = "shell"
    rule: Rule | None = None
    """How the disk is picked: ``source`` (capture) or ``target`` (restore)."""
    name: str | None = None
    """Capture: the new image's folder name, with {serial}, {date} and {time}."""
    layout: str = "auto"
    new_ids: bool = False
    verify_first: bool | None = None
    """None: as ``rescue restore`` decides (on for an image rescue did not write)."""

    def in_root(self, path: Path) -> str:
        """``path`` as seen from the job's filesystem (``/images/pc``): the mount point it
        happens to be under means nothing to the technician reading the log later."""
        try:
            return "/" + str(path.relative_to(os.path.realpath(self.root))).removeprefix(".")
        except ValueError:
            return str(path)


def _where(file: str, key: str) -> str:
    return f"{file}, key {key!r}"


def _string(data: dict[str, Any], key: str, file: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadInputError(
            f"{_where(file, key)}: must be a string in quotes, not {_toml_type(value)}."
        )
    return value


def _bool(data: dict[str, Any], key: str, file: str) -> bool | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise BadInputError(
            f"{_where(file, key)}: must be true or false (no quotes), not {_toml_type(value)}."
        )
    return value


def _toml_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return "a date or time"


def _one_of(value: str, choices: Sequence[str], file: str, key: str) -> str:
    if value not in choices:
        raise BadInputError(
            f"{_where(file, key)}: {value!r} is not one of "
            + ", ".join(f'"{c}"' for c in choices)
            + "."
        )
    return value


def inside(root: Path, relative: str, where: str) -> Path:
    """``relative`` under ``root``, symlinks resolved, refused when it is absolute or leads
    out of the filesystem at ``root`` (by ``..``, a symbolic link or another mount)."""
    if not relative.strip() or "\x00" in relative:
        raise BadInputError(f'{where}: give a folder ("." is the root of the job\'s drive).')
    given = PurePosixPath(relative)
    if given.is_absolute():
        raise BadInputError(
            f"{where}: {relative!r} is an absolute path. It must be a folder relative to the "
            'root of the filesystem holding the job file (e.g. "images/pc"), so the job '
            "works whatever the drive is mounted as."
        )
    kept: list[str] = []
    for part in given.parts:
        if part == "..":
            if not kept:
                raise BadInputError(
                    f"{where}: {relative!r} leads out of the filesystem holding the job file "
                    '(by ".."): a job reads and writes only on its own drive.'
                )
            kept.pop()
        elif part != ".":
            kept.append(part)
    top = Path(os.path.realpath(root))
    real = Path(os.path.realpath(top.joinpath(*kept)))
    if real != top and top not in real.parents:
        raise BadInputError(
            f"{where}: {relative!r} leads out of the filesystem holding the job file "
            f"(through a symbolic link, to {real}): a job reads and writes only on its own drive."
        )
    existing = real
    while not existing.exists() and existing != top:
        existing = existing.parent
    if os.stat(existing).st_dev != os.stat(top).st_dev:
        raise BadInputError(
            f"{where}: {relative!r} is on another filesystem mounted inside the job's drive: "
            "a job reads and writes only on its own drive."
        )
    return real


def _name_template(value: str, file: str) -> str:
    """Refuse a name that is not one folder name once its placeholders are filled in."""
    where = _where(file, "name")
    try:
        pieces = list(string.Formatter().parse(value))
    except ValueError as exc:
        raise BadInputError(
            f"{where}: {value!r} has an unmatched brace ({exc}); the placeholders are "
            "{serial}, {date} and {time}."
        ) from exc
    for literal, field, spec, conversion in pieces:
        if not _NAME_TEXT.fullmatch(literal):
            raise BadInputError(
                f"{where}: {value!r} is not a folder name: use letters, digits, '.', '_', '-' "
                "and '+' (and the placeholders {serial}, {date}, {time})."
            )
        if field is not None and (field not in _PLACEHOLDERS or spec or conversion):
            raise BadInputError(
                f"{where}: {{{field}}} is not a placeholder rescue fills in: use {{serial}}, "
                "{date} or {time}."
            )
    sample = value.format(serial="S", date="2000-01-01", time="000000")
    if sample in ("", ".", ".."):
        raise BadInputError(f"{where}: {value!r} is not a folder name.")
    return value


def parse_job(text: str, *, file: Path, root: Path, device: str | None, shown_as: str) -> Job:
    """The job in ``text`` (the content of ``file``), checked; raises BadInputError naming
    the file and the key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BadInputError(f"{shown_as} is not a valid TOML file: {exc}.") from exc
    if "passphrase_file" in data:
        raise BadInputError(
            f"{_where(shown_as, 'passphrase_file')}: keys never go in a job file (it sits on "
            "a drive anyone can read).",
            hint="A job restores or captures images that need no key; remove the key.",
        )
    action = _string(data, "action", shown_as)
    if action is None:
        raise BadInputError(
            f"{shown_as}: the key 'action' is missing: write action = \"capture\", "
            '"restore" or "verify".'
        )
    _one_of(action, ACTIONS, shown_as, "action")
    known = {k for keys in _KEYS.values() for k in keys}
    unknown = sorted(set(data) - known)
    if unknown:
        raise BadInputError(
            f"{shown_as}: unknown key(s) {', '.join(repr(k) for k in unknown)}. A {action} job "
            f"takes: {', '.join(_KEYS[action])}."
        )
    for key in sorted(set(data) - set(_KEYS[action])):
        for_whom = " and ".join(a for a in ACTIONS if key in _KEYS[a])
        raise BadInputError(
            f"{_where(shown_as, key)}: belongs to {for_whom} jobs, not to a {action} job.",
        )
    for key in _REQUIRED[action]:
        if key not in data:
            raise BadInputError(f"{shown_as}: a {action} job needs the key {key!r}.")
    image = _string(data, "image", shown_as)
    assert image is not None
    image_dir = inside(root, image, _where(shown_as, "image"))
    after = _one_of(_string(data, "after", shown_as) or "shell", AFTERS, shown_as, "after")
    rule_key = {"capture": "source", "restore": "target"}.get(action)
    rule = None
    if rule_key is not None:
        rule_text = _string(data, rule_key, shown_as)
        assert rule_text is not None
        rule = parse_rule(rule_text, _where(shown_as, rule_key))
    name = _string(data, "name", shown_as)
    if name is not None:
        name = _name_template(name, shown_as)
    layout = _one_of(_string(data, "layout", shown_as) or "auto", LAYOUTS, shown_as, "layout")
    return Job(
        file=file,
        shown_as=shown_as,
        root=root,
        device=device,
        action=action,
        image=image,
        image_dir=image_dir,
        after=after,
        rule=rule,
        name=name,
        layout=layout,
        new_ids=bool(_bool(data, "new_ids", shown_as)),
        verify_first=_bool(data, "verify_first", shown_as),
    )


def filesystem_of(path: Path) -> tuple[Path, str | None]:
    """The mount point of the filesystem holding ``path`` and its block device (None for
    one that has none, as tmpfs)."""
    real = os.path.realpath(path)
    st = os.stat(real)
    num = (os.major(st.st_dev), os.minor(st.st_dev))
    best: kernel.MountEntry | None = None
    for entry in kernel.mount_table():
        mp = entry.mountpoint
        under = real == mp or real.startswith(mp.rstrip("/") + "/")
        if entry.devnum == num and under and (best is None or len(mp) >= len(best.mountpoint)):
            best = entry
    if best is None:
        raise BadInputError(f"Cannot tell which filesystem holds {path} (not in the mount table).")
    device = best.source if best.source.startswith("/dev/") else None
    return Path(best.mountpoint), device


def load_job(
    path: Path,
    *,
    root: Path | None = None,
    device: str | None = None,
    shown_as: str | None = None,
) -> Job:
    """Read and check the job file at ``path``. ``root`` (default: the mount point of the
    filesystem holding it) is what its ``image`` is relative to."""
    shown_as = shown_as or str(path)
    if not path.is_file():
        raise BadInputError(f"{shown_as} is not a file.")
    if root is None:
        root, device = filesystem_of(path)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_JOB_FILE + 1)
    except OSError as exc:
        raise DeviceError(f"Could not read {shown_as}: {exc.strerror or exc}.") from exc
    if len(raw) > MAX_JOB_FILE:
        raise BadInputError(f"{shown_as} is larger than {MAX_JOB_FILE} bytes: not a job file.")
    try:
        text = raw.decode()
    except UnicodeDecodeError as exc:
        raise BadInputError(f"{shown_as} is not UTF-8 text: not a job file.") from exc
    return parse_job(text, file=path, root=root, device=device, shown_as=shown_as)


# --- planning -------------------------------------------------------------------------


def safe_serial(serial: str | None) -> str:
    """A serial as part of a folder name: letters, digits, '.', '_' and '-' only."""
    text = _SERIAL_UNSAFE.sub("_", serial or "").strip("._")[:64]
    return text or NO_SERIAL


def image_name(template: str, disk: Disk, when: dt.datetime) -> str:
    """The capture's folder name: ``{serial}``, ``{date}`` (YYYY-MM-DD), ``{time}`` (HHMMSS)."""
    return template.format(
        serial=safe_serial(disk.serial),
        date=when.strftime("%Y-%m-%d"),
        time=when.strftime("%H%M%S"),
    )


def disk_holding(device: str | None, disks: Sequence[Disk]) -> Disk | None:
    """The disk of ``disks`` that is, or holds the partition, ``device``."""
    num = devnum_of(device) if device else None
    if num is None:
        return None
    for disk in disks:
        if devnum_of(disk.path) == num or any(devnum_of(p.path) == num for p in disk.partitions):
            return disk
    return None


@dataclass(frozen=True)
class JobPlan:
    """What a job will do, checked; nothing is written until :func:`run_job`."""

    job: Job
    image_dir: Path
    """The image folder read (restore, verify) or made (capture)."""
    log_dir: Path
    disk: Disk | None = None
    """The disk the rule picked (capture: read; restore: overwritten)."""
    restore: RestorePlan | None = None
    verify_first: bool = False
    source: Source | None = None
    """Capture: the source as the image records it."""
    chosen: bool = False
    """The technician picked ``disk`` (the rule matched none or several)."""

    def picked_by(self) -> str:
        """How the disk was picked, for the log and the confirmation."""
        assert self.job.rule is not None
        if self.chosen:
            return f"chosen by the technician (the rule {self.job.rule.text!r} did not pick one)"
        return f"picked by the rule {self.job.rule.text!r}"


def log_folder(job: Job) -> Path:
    """Where the job's log goes: the folder the new image goes into (capture), the folder
    holding the image (restore, verify), or the job drive's root when the image is there or
    that folder does not exist (a mistyped path makes no folders)."""
    if job.action == "capture":
        return job.image_dir
    top = Path(os.path.realpath(job.root))
    if job.image_dir == top or not job.image_dir.parent.is_dir():
        return top
    return job.image_dir.parent


def _refuse_the_job_disk(disk: Disk, job_disk: Disk | None, job: Job) -> None:
    if job_disk is None or disk.path != job_disk.path:
        return
    if job.action == "restore":
        raise RefusedError(
            f"Refusing to write to {disk.path}: it holds the job file {job.shown_as}; a job "
            "never writes to its own drive.",
            hint="Correct the job's target rule, or put the job file on another drive.",
        )
    raise RefusedError(
        f"Refusing to capture {disk.path}: it holds the job file {job.shown_as}, where the "
        "image would be written.",
        hint="Correct the job's source rule, or put the job file on another drive.",
    )


def _image_folder(job: Job) -> Path:
    folder = job.image_dir
    if not folder.is_dir():
        raise NotAnImageError(
            f"{_where(job.shown_as, 'image')}: there is no folder {job.in_root(folder)} on "
            "the job's drive.",
            hint="Correct the path: it is relative to the root of the drive holding the job file.",
        )
    return folder


def plan_job(
    job: Job,
    disks: Sequence[Disk],
    *,
    when: dt.datetime | None = None,
    allow_loop: bool | None = None,
    progress: ProgressReporter | None = None,
    cancel: threading.Event | None = None,
    chosen: Disk | None = None,
) -> JobPlan:
    """Pick the disk, open the image and build the command's own plan; write nothing.

    ``disks`` is what the rule chooses from (:func:`rescue.devices.list_disks`);
    ``when`` fills in a capture's ``{date}`` and ``{time}``; ``allow_loop`` is the
    rule's test hook (:func:`rescue.operations.job_rules.pick_disk`). ``chosen`` is
    the disk a technician picked where the rule matched none or several: the rule is
    not applied, every other check is (never the job's own drive; the command's own
    safety checks).
    """
    when = when or dt.datetime.now().astimezone()
    log_dir = log_folder(job)
    if job.action == "verify":
        folder = _image_folder(job)
        if not is_locked(folder):  # a locked encrypted image is checked by its sealed files
            open_image(folder)
        return JobPlan(job, folder, log_dir)
    assert job.rule is not None
    job_disk = disk_holding(job.device, disks)
    key = "source" if job.action == "capture" else "target"
    disk = chosen or pick_disk(
        job.rule, disks, job_disk=job_disk.path if job_disk else None,
        where=_where(job.shown_as, key), allow_loop=allow_loop,
    )  # fmt: skip
    _refuse_the_job_disk(disk, job_disk, job)
    if job.action == "capture":
        assert job.name is not None
        folder = job.image_dir / image_name(job.name, disk, when)
        return JobPlan(
            job, folder, log_dir, disk=disk, source=check_capture(disk.path, folder),
            chosen=chosen is not None,
        )  # fmt: skip
    folder = _image_folder(job)
    restore = plan_restore(
        folder, disk.path, job.layout, new_ids=job.new_ids, progress=progress, cancel=cancel
    )
    verify_first = job.verify_first
    if verify_first is None:
        verify_first = default_verify_first(restore.image)
    return JobPlan(
        job, folder, log_dir, disk=disk, restore=restore, verify_first=verify_first,
        chosen=chosen is not None,
    )  # fmt: skip


AFTER_TEXT = {
    "poweroff": "power the machine off when the job has succeeded",
    "reboot": "restart the machine when the job has succeeded",
    "shell": "stay at the shell (nothing more is done)",
}


def describe_job(plan: JobPlan) -> list[tuple[str, str]]:
    """The plan as (what, value) pairs: what a dry run prints and a confirmation names."""
    job = plan.job
    facts = [("job", job.shown_as), ("action", job.action)]
    if job.action == "capture":
        facts.append(("new image", job.in_root(plan.image_dir)))
    else:
        facts.append(("image", job.in_root(plan.image_dir)))
    if plan.disk is not None and job.rule is not None:
        role = "source" if job.action == "capture" else "target"
        facts.append((role, f"{describe(plan.disk)} ({plan.picked_by()})"))
    if job.action == "restore":
        facts.append(("layout", job.layout))
        facts.append(("check the image first", "yes" if plan.verify_first else "no"))
        if job.new_ids:
            facts.append(("new ids", "new GUIDs and filesystem UUIDs (fstab updated)"))
    facts.append(("log", job.in_root(plan.log_dir) + "/rescue-job-DATE-TIME.log"))
    facts.append(("after", f"{job.after}: {AFTER_TEXT[job.after]}"))
    return facts


def job_facts(plan: JobPlan) -> dict[str, Any]:
    """The plan as plain data, for ``--json``."""
    job, disk = plan.job, plan.disk
    return {
        "job": job.shown_as,
        "action": job.action,
        "image": job.in_root(plan.image_dir),
        "disk": None
        if disk is None
        else {"path": disk.path, "model": disk.model, "serial": disk.serial, "size": disk.size},
        "rule": job.rule.text if job.rule else None,
        "chosen_by_technician": plan.chosen,
        "verify_first": plan.verify_first if job.action == "restore" else None,
        "log_folder": job.in_root(plan.log_dir),
        "after": job.after,
    }


# --- running and the log --------------------------------------------------------------


def _stamp(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M:%S %z")


class JobLog:
    """The job's log, beside the image: written line by line as the job goes, so a job cut
    short (power lost) still says how far it came. Names only: never the environment or
    an argument list."""

    def __init__(self, folder: Path, started: dt.datetime) -> None:
        base = f"rescue-job-{started.strftime('%Y-%m-%d')}-{started.strftime('%H%M%S')}"
        for n in range(1, 100):
            self.path = folder / (f"{base}.log" if n == 1 else f"{base}-{n}.log")
            try:
                self._file = self.path.open("x", encoding="utf-8")
                break
            except FileExistsError:
                continue
        else:
            raise DeviceError(f"Too many job logs named {base}* in {folder}.")

    def line(self, text: str) -> None:
        self._file.write(text.replace("\n", "\n    ") + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()


class _Logged:
    """A ProgressReporter that also writes each phase and note into the job's log."""

    def __init__(self, inner: ProgressReporter, log: JobLog) -> None:
        self._inner = inner
        self._log = log

    def phase(self, name: str, total: int | None) -> None:
        self._log.line(f"phase: {name}")
        self._inner.phase(name, total)

    def advance(self, done: int) -> None:
        self._inner.advance(done)

    def note(self, message: str) -> None:
        self._log.line(f"note: {message}")
        self._inner.note(message)


@dataclass(frozen=True)
class JobResult:
    plan: JobPlan
    exit_code: int
    """0, or 3 when a capture could not read some sectors (the CLI's exit codes)."""
    summary: str
    log: Path
    after: str


def open_log(job: Job, started: dt.datetime) -> JobLog:
    """The job's log, made before anything else: a drive that cannot take it stops the job
    before any disk is touched."""
    folder = log_folder(job)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return JobLog(folder, started)
    except OSError as exc:
        raise DeviceError(
            f"The job's log cannot be written in {job.in_root(folder)} on the job's drive "
            f"({exc.strerror or exc}): the job does not run.",
            hint="Check that the drive holding the job file is writable and has room.",
        ) from exc


def run_job(
    job: Job,
    disks: Sequence[Disk],
    *,
    confirm: Callable[[JobPlan], None] | None = None,
    progress: ProgressReporter | None = None,
    cancel: threading.Event | None = None,
    allow_loop: bool | None = None,
    chosen: Disk | None = None,
) -> JobResult:
    """Plan the job, have ``confirm`` approve the plan (it raises to refuse), run it and log
    it all. An error is logged, then raised as it came. ``chosen``: as :func:`plan_job`."""
    progress = progress or NullProgress()
    started = dt.datetime.now().astimezone()
    log = open_log(job, started)
    logged = _Logged(progress, log)
    try:
        log.line(f"rescue {__version__} job {job.shown_as}")
        log.line(f"action: {job.action}, image {job.image}, after: {job.after}")
        log.line(f"started: {_stamp(started)}")
        plan = plan_job(
            job, disks, when=started, allow_loop=allow_loop, progress=logged, cancel=cancel,
            chosen=chosen,
        )  # fmt: skip
        if plan.disk is not None and job.rule is not None:
            log.line(f"disk: {describe(plan.disk)}, {plan.picked_by()}")
        log.line(f"image folder: {job.in_root(plan.image_dir)}")
        if confirm is not None:
            confirm(plan)
        code, summary = _execute(plan, logged, cancel)
    except BaseException as exc:
        verdict = "cancelled" if isinstance(exc, CancelledError | KeyboardInterrupt) else "failed"
        if isinstance(exc, RescueError):
            message = exc.message
        elif isinstance(exc, KeyboardInterrupt):
            message = "Cancelled."
        else:
            message = f"{type(exc).__name__}: {exc}"
        log.line(f"ended: {_stamp(dt.datetime.now().astimezone())}")
        log.line(f"result: {verdict}: {message}")
        log.close()
        raise
    log.line(f"ended: {_stamp(dt.datetime.now().astimezone())}")
    log.line(f"result: {'ok' if code == EXIT_OK else 'finished with unreadable sectors'}: "
             f"{summary}")  # fmt: skip
    log.close()
    return JobResult(plan, code, summary, log.path, job.after)


def _execute(
    plan: JobPlan, progress: ProgressReporter, cancel: threading.Event | None
) -> tuple[int, str]:
    job = plan.job
    if job.action == "restore":
        assert plan.restore is not None and plan.disk is not None
        restore_checked(plan.restore, confirmed=True, verify_first=plan.verify_first,
                        progress=progress, cancel=cancel)  # fmt: skip
        return EXIT_OK, f"restored {job.in_root(plan.image_dir)} onto {plan.disk.path}"
    if job.action == "capture":
        assert plan.source is not None
        manifest = capture(plan.source.path, plan.image_dir, progress=progress, cancel=cancel)
        lost = sum(n for p in manifest.partitions for _, n in p.unreadable)
        summary = (
            f"captured {plan.source.path} into {job.in_root(plan.image_dir)} "
            f"({len(manifest.partitions)} partition(s), {manifest.used_bytes} used bytes)"
        )
        if lost:
            return EXIT_UNREADABLE, (
                f"{summary}; {lost} bytes could not be read (zeros in the image, listed in "
                "rescue.json and damage-report.txt)"
            )
        return EXIT_OK, summary
    report = verify(plan.image_dir, progress=progress, cancel=cancel)
    for note in report.notes:
        progress.note(note)
    return EXIT_OK, (
        f"{job.in_root(plan.image_dir)} is intact: {report.files_checked} file(s) hashed, "
        f"{report.streams_checked} stream(s) decoded"
    )


def carry_out(after: str) -> None:
    """Power off or restart now (``shell``: nothing). Only a front end calls this, once the
    job has succeeded and every drive of the job is unmounted."""
    if after == "shell":
        return
    if after not in AFTERS:
        raise BadInputError(f"Unknown 'after' {after!r}.")
    os.sync()
    system.run(["systemctl", after])
