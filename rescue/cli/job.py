"""`rescue job FILE [--yes] [--dry-run] [--json]`: run an unattended job; `rescue job --find`.

FILE is a job file (docs/JOBS.md) on a mounted drive, or ``LABEL:PATH`` (the form
of the kernel's ``rescue.job=`` option) for a job on the filesystem labelled
LABEL, which is mounted for the job's duration at a private mount point.
``--dry-run`` prints the plan (the disk the rule picked, with its model, serial
and size) and writes nothing. A restore job asks, like ``rescue restore``, for the
target's name to be typed; ``--yes`` answers for scripts and a boot service.
What ``after`` says is printed; ``--do-after`` carries it out (power off, restart)
once the job has succeeded and its drive is unmounted.

Exit codes as every command: 0 done, 1 failed, 2 refused or bad input (a rule
matching no disk or several, a bad job file; nothing written), 3 a capture that
could not read some sectors, 130 cancelled.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rescue.cli.progress import JsonProgress, RichProgress, reporter
from rescue.cli.restore import confirm_on_terminal
from rescue.devices import list_disks
from rescue.errors import EXIT_OK, BadInputError
from rescue.operations.job_finding import (
    CMDLINE_OPTION,
    FoundJob,
    every_job,
    open_job,
    parse_ref,
    read_cmdline,
)
from rescue.operations.jobs import (
    AFTER_TEXT,
    Job,
    JobPlan,
    JobResult,
    carry_out,
    describe_job,
    job_facts,
    load_job,
    plan_job,
    run_job,
)
from rescue.text import shown

_REF = re.compile(r"[^/:]+:.*")


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "job", help="run an unattended job file (restore, capture or verify with no questions)"
    )
    p.add_argument("file", nargs="?",
                   help="the job file, or LABEL:PATH for one on the filesystem labelled LABEL "
                   "(as rescue.job= on the kernel command line)")  # fmt: skip
    p.add_argument("--find", action="store_true",
                   help="list the jobs on filesystems labelled RESCUE and on the kernel "
                   "command line")  # fmt: skip
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print what the job would do (the disk its rule picks) and stop",
    )
    p.add_argument(
        "--yes",
        action="store_true",
        help="do not ask: for a boot service or a script that trusts the job's rule",
    )
    p.add_argument("--do-after", action="store_true",
                   help="carry out the job's 'after' (power off, restart) once it succeeded; "
                   "without it, what 'after' says is only printed")  # fmt: skip
    p.add_argument(
        "--json",
        action="store_true",
        help="JSON lines on stdout: progress, then the plan or the result",
    )
    p.set_defaults(func=run)


@contextlib.contextmanager
def _the_job(given: str, *, writable: bool) -> Iterator[Job]:
    """The job FILE names; a ``LABEL:PATH`` one with its filesystem mounted meanwhile."""
    if os.path.exists(given) or not _REF.fullmatch(given):
        yield load_job(Path(given))
        return
    with open_job(parse_ref(given), list_disks(), writable=writable) as job:
        yield job


def _print_plan(plan: JobPlan, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"event": "plan", **job_facts(plan)}))
        return
    for what, value in describe_job(plan):
        print(f"{what}: {shown(value)}")


class _Pausable:
    """The terminal's progress reporter, stopped while the confirmation asks (a prompt under
    a live bar is overdrawn) and started again by the next phase."""

    def __init__(self, json_lines: bool) -> None:
        self._json = json_lines
        self._on: RichProgress | JsonProgress | None = None

    def _current(self) -> RichProgress | JsonProgress:
        if self._on is None:
            self._on = reporter(self._json).__enter__()
        return self._on

    def pause(self) -> None:
        if self._on is not None:
            self._on.__exit__(None, None, None)
            self._on = None

    def phase(self, name: str, total: int | None) -> None:
        self._current().phase(name, total)

    def advance(self, done: int) -> None:
        self._current().advance(done)

    def note(self, message: str) -> None:
        self._current().note(message)


def _confirm(args: argparse.Namespace, progress: _Pausable, plan: JobPlan) -> None:
    """A restore names what it overwrites and asks for the disk's name, as ``rescue restore``;
    a capture or verify job overwrites nothing and goes on."""
    if plan.restore is not None:
        progress.pause()
        confirm_on_terminal(plan.restore, yes=args.yes, verify_first=plan.verify_first)


def _print_result(result: JobResult, job: Job, *, as_json: bool) -> None:
    log = job.in_root(result.log)
    if as_json:
        facts = {"event": "job", "exit_code": result.exit_code, "summary": result.summary}
        print(json.dumps({**facts, "log": log, "after": result.after}))
        return
    print(f"Job done: {shown(result.summary)}.")
    print(f"Log: {shown(log)} on the job's drive.")
    print(f"After: {result.after}: {AFTER_TEXT[result.after]}.")


def _list_found(args: argparse.Namespace) -> int:
    found: list[FoundJob] = every_job(list_disks(), read_cmdline())
    if args.json:
        for f in found:
            print(json.dumps({"event": "found", "job": str(f.ref), "device": f.device,
                              "origin": f.origin, "summary": f.summary,
                              "problem": f.problem}))  # fmt: skip
        return 0
    if not found:
        print(f"No job found (no rescue-job.toml on a filesystem labelled RESCUE, no "
              f"{CMDLINE_OPTION}= on the kernel command line).")  # fmt: skip
        return 0
    for f in found:
        where = f" on {f.device}" if f.device else ""
        print(f"{shown(f.ref)}{shown(where)} ({f.origin})")
        if f.problem:
            print(f"  cannot run: {shown(f.problem)}")
        else:
            print(f"  {shown(f.summary)}")
            print(f"  run it: rescue job {shown(f.ref)} --dry-run, then --yes")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.find:
        if args.file is not None:
            raise BadInputError("Give either a job file or --find, not both.")
        return _list_found(args)
    if args.file is None:
        raise BadInputError(
            "Give the job file to run (or LABEL:PATH), or --find to list the jobs found.",
            hint="rescue job /media/usb/rescue-job.toml --dry-run",
        )
    result = None
    with _the_job(args.file, writable=not args.dry_run) as job:
        if args.dry_run:
            with reporter(args.json) as progress:
                plan = plan_job(job, list_disks(), progress=progress)
            _print_plan(plan, as_json=args.json)
            if not args.json:
                print("Dry run: nothing was written.", file=sys.stderr)
            return 0
        pausable = _Pausable(args.json)
        try:
            result = run_job(
                job, list_disks(), progress=pausable,
                confirm=lambda plan: _confirm(args, pausable, plan),
            )  # fmt: skip
        finally:
            pausable.pause()
        _print_result(result, job, as_json=args.json)
    if args.do_after and result.exit_code == EXIT_OK:  # the job's drive is unmounted by now
        carry_out(result.after)
    elif args.do_after and result.after != "shell":
        print(f"Not carrying out {result.after!r}: the job did not end cleanly (read the log).",
              file=sys.stderr)  # fmt: skip
    return result.exit_code
