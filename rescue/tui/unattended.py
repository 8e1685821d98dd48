"""Unattended jobs in the UI: the job found at start shown, counted down, run, then ``after``.

When the UI starts on the rescue system it asks for jobs (:func:`rescue.operations.
job_finding.every_job`): the one the kernel command line names (``rescue.job=``)
comes first, then ``rescue-job.toml`` on filesystems labelled ``RESCUE``. One job
is shown with its plan (the disk its rule picked, by model, serial and size) and
starts when the countdown ends unless Esc stops it; several are listed and the
technician picks one. The job's drive stays mounted, read-write, while the screen
is up (the log and a capture's image go there) and is unmounted before ``after``
is carried out.

A rule that matches no disk, or several, never guesses: the screen says what it
saw and asks. The technician may pick the disk (a restore then asks for the
disk's name to be typed, as every restore started by hand does) or leave. A job
that fails or ends with unreadable sectors never powers the machine off: the
message stays on the screen.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import DataTable, Footer, Header, OptionList, Static

from rescue.devices import Disk
from rescue.devices.model import FLAG_BOOT_MEDIUM, FLAG_READ_ONLY
from rescue.errors import EXIT_OK, RefusedError, RescueError
from rescue.operations.job_finding import CMDLINE_ORIGIN, FoundJob, JobRef, open_job
from rescue.operations.job_rules import RuleMatchError
from rescue.operations.jobs import (
    AFTER_TEXT,
    Job,
    JobPlan,
    JobResult,
    describe_job,
    disk_holding,
    plan_job,
    run_job,
)
from rescue.operations.plan_text import Section, describe_plan, plan_lines
from rescue.progress import ProgressReporter
from rescue.text import shown
from rescue.tui.jobs import JobScreen, JobWarning, TypedConfirmScreen
from rescue.tui.services import Services
from rescue.tui.text import plain
from rescue.units import human_size


def pick_startup_job(found: list[FoundJob]) -> FoundJob | list[FoundJob] | None:
    """What the UI does at start: the kernel command line's job (asked for at boot), else the
    one job found on a drive; several found on drives: the list to choose from."""
    asked = [f for f in found if f.origin == CMDLINE_ORIGIN]
    if asked:
        return asked[0]
    if len(found) == 1:
        return found[0]
    return found or None


class UnattendedScreen(Screen[None]):
    """One job: its plan, a countdown (or Enter), the run on the progress screen, ``after``."""

    COUNTDOWN = 10
    """Seconds a job found at start is shown before it runs, and a finished job's power-off
    or restart waits; a key stops either."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "start", "Start now", priority=True),
        Binding("r", "again", "Look again"),
        Binding("escape", "leave", "Stop / back", priority=True),
    ]
    DEFAULT_CSS = """
    UnattendedScreen #state { padding: 1 1 0 1; text-style: bold; height: auto; }
    UnattendedScreen #state.counting { background: $warning 40%; }
    UnattendedScreen #state.ask { background: $warning 40%; }
    UnattendedScreen #state.failed { background: $error 40%; }
    UnattendedScreen #state.ok { background: $success 30%; }
    UnattendedScreen #facts { height: 1fr; padding: 0 1; }
    UnattendedScreen #candidates { height: auto; max-height: 10; display: none; }
    UnattendedScreen #candidates.shown { display: block; }
    UnattendedScreen #keys { padding: 0 1; color: $text-muted; height: auto; }
    """

    def __init__(
        self,
        ref: JobRef,
        services: Services,
        *,
        countdown: bool = True,
        carry_out: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__()
        self.ref = ref
        self.services = services
        self.countdown = countdown
        """The job starts by itself when the countdown ends; False: only Enter starts it."""
        self._carry_out = carry_out or services.carry_out
        self._stack = contextlib.ExitStack()
        self._lock = threading.Lock()
        self.job: Job | None = None
        self.plan: JobPlan | None = None
        self.result: JobResult | None = None
        self.candidates: list[Disk] = []
        self.state = "reading"
        """reading, counting, ready, ask, failed, running, after, done."""
        self.left = 0
        self._timer: Timer | None = None
        self.text = ""
        """What the screen says, as plain text (the state line and the facts)."""

    # --- layout ---------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header(icon="*")
        with Vertical():
            yield Static(plain(f"Job {self.ref}: reading it..."), id="state")
            with VerticalScroll(id="facts", can_focus=False):
                yield Static("", id="facts-text")
            yield DataTable(id="candidates", cursor_type="row")
            yield Static("", id="keys")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#candidates", DataTable)
        table.add_columns("device", "size", "model", "serial", "bus")
        self._read()

    def on_unmount(self) -> None:
        self._stop_timer()
        self._release()

    def _show(self, state: str, headline: str, facts: list[str], keys: str) -> None:
        self.state = state
        line = self.query_one("#state", Static)
        line.set_classes(state)
        line.update(plain(headline))
        self.query_one("#facts-text", Static).update(plain("\n".join(facts)))
        self.query_one("#keys", Static).update(plain(keys))
        self.text = "\n".join([headline, *facts, keys])

    # --- reading and planning (worker threads) --------------------------------------

    def _release(self) -> None:
        """Unmount the job's drive (when this screen mounted it)."""
        with self._lock:
            self._stack.close()
            self._stack = contextlib.ExitStack()
            self.job = None

    def _read(self, chosen: Disk | None = None) -> None:
        self._stop_timer()
        self._show("reading", f"Job {self.ref}: reading it...", [], "")
        self.run_worker(
            lambda: self._plan(chosen), thread=True, exclusive=True, group="plan",
            exit_on_error=False,
        )  # fmt: skip

    def _plan(self, chosen: Disk | None) -> None:
        try:
            with self._lock:
                if self.job is None:
                    self.job = self._stack.enter_context(
                        open_job(self.ref, self.services.list_disks(), writable=True)
                    )
                job = self.job
            plan = plan_job(job, self.services.list_disks(), chosen=chosen)
        except RuleMatchError as exc:
            self.app.call_from_thread(self._ask, exc)
            return
        except RescueError as exc:
            self._release()
            self.app.call_from_thread(self._failed, str(exc))
            return
        self.app.call_from_thread(self._planned, plan)

    def _facts(self, plan: JobPlan) -> list[str]:
        lines = [f"{what}: {shown(value)}" for what, value in describe_job(plan)]
        if plan.restore is not None:
            lines += ["", *plan_lines(self._restore_sections(plan))]
        return lines

    @staticmethod
    def _restore_sections(plan: JobPlan) -> list[Section]:
        assert plan.restore is not None
        return describe_plan(plan.restore, verify_first=plan.verify_first)

    def _planned(self, plan: JobPlan) -> None:
        self.plan = plan
        self._hide_candidates()
        facts = self._facts(plan)
        what = "OVERWRITES " + plan.disk.path if plan.restore and plan.disk else plan.job.action
        if not self.countdown or plan.chosen:
            self._show("ready", f"Job {self.ref} ({what}): ready.", facts,
                       "Enter: start.   Esc: back, nothing is done.")  # fmt: skip
            return
        self.left = self.COUNTDOWN
        self._count(what, facts)
        self._timer = self.set_interval(1.0, lambda: self._tick(what, facts))

    def _count(self, what: str, facts: list[str]) -> None:
        self._show(
            "counting", f"Job {self.ref} ({what}) starts in {self.left} s.", facts,
            "Esc: stop, nothing is done (the home screen).   Enter: start now.",
        )  # fmt: skip

    def _tick(self, what: str, facts: list[str]) -> None:
        self.left -= 1
        if self.left > 0:
            self._count(what, facts)
            return
        self._stop_timer()
        self._run()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer = None

    def _ask(self, exc: RuleMatchError) -> None:
        """The rule matched none or several: show what was seen and let the technician pick."""
        job = self.job
        job_disk = disk_holding(job.device, exc.seen) if job is not None else None
        restoring = job is not None and job.action == "restore"
        self.candidates = list(exc.matched) or [
            d for d in exc.seen
            if FLAG_BOOT_MEDIUM not in d.flags and (job_disk is None or d.path != job_disk.path)
            and not (restoring and FLAG_READ_ONLY in d.flags)  # a CD cannot take a restore
        ]  # fmt: skip
        table = self.query_one("#candidates", DataTable)
        table.clear()
        for d in self.candidates:
            table.add_row(  # names from the disk: text, never markup
                Text(shown(d.path)), human_size(d.size), Text(shown(d.model or "")),
                Text(shown(d.serial or "")), Text(shown(d.transport or "")), key=d.path,
            )  # fmt: skip
        table.add_class("shown")
        several = len(exc.matched) > 1
        headline = (
            f"Job {self.ref} stopped: its rule matches {len(exc.matched)} disks, and a job "
            "never guesses."
            if several
            else f"Job {self.ref} stopped: its rule matches no disk."
        )
        keys = "r: look again (after plugging a disk in).   Esc: back, nothing is done."
        if self.candidates:
            keys = "Up/Down and Enter: use the disk chosen here.   " + keys
        self._show("ask", headline, str(exc).splitlines(), keys)
        if self.candidates:
            table.focus()

    def _hide_candidates(self) -> None:
        self.query_one("#candidates", DataTable).remove_class("shown")

    def _failed(self, message: str) -> None:
        self._hide_candidates()
        self._show("failed", f"Job {self.ref} cannot run:", message.splitlines(),
                   "r: look again.   Esc: back.")  # fmt: skip

    # --- keys -------------------------------------------------------------------------

    def action_start(self) -> None:
        if self.state == "ask" and self.candidates:
            row = self.query_one("#candidates", DataTable).cursor_row
            if 0 <= row < len(self.candidates):
                self._read(chosen=self.candidates[row])
            return
        if self.state not in ("counting", "ready") or self.plan is None:
            return
        self._stop_timer()
        plan = self.plan
        if self.state == "ready" and plan.restore is not None and plan.disk is not None:
            # started by a person, not by the job's own countdown: the name typed, as any restore
            facts = [Section("Job", tuple(f"{w}: {v}" for w, v in describe_job(plan)))]
            facts += self._restore_sections(plan)
            name = plan.disk.path.rsplit("/", 1)[-1]

            def confirmed(ok: bool | None) -> None:
                if ok:
                    self._run()
                else:
                    self.notify("Not confirmed: nothing was written.")

            self.app.push_screen(TypedConfirmScreen(facts, name), confirmed)
            return
        self._run()

    def action_again(self) -> None:
        if self.state in ("ask", "failed"):
            self._read()

    def action_leave(self) -> None:
        if self.state == "running":
            return
        if self.state == "after":
            self._stop_timer()
            self._show("done", f"Job {self.ref} done.", [self._result_line()],
                       f"Not carried out: {self._after()}. Esc: the home screen.")  # fmt: skip
            return
        self._stop_timer()
        if self.state == "counting":
            self.notify(f"Job {self.ref} stopped before it started: nothing was written.")
        self.dismiss(None)

    # --- running ----------------------------------------------------------------------

    def _run(self) -> None:
        plan = self.plan
        job = self.job
        assert plan is not None and job is not None
        chosen = plan.disk if plan.chosen else None
        self.state = "running"

        def same_disk(again: JobPlan) -> None:
            before, now = plan.disk, again.disk
            if before is not None and (
                now is None or (now.path, now.serial, now.size) != (before.path, before.serial,
                                                                    before.size)
            ):  # fmt: skip
                raise RefusedError(
                    "The disks changed since the job was shown: it picked "
                    f"{now.path if now else 'no disk'} now, {before.path} before. "
                    "Nothing was written.",
                    hint="Look at the job again (r) before it runs.",
                )

        def work(progress: ProgressReporter, cancel: threading.Event) -> str:
            result = run_job(
                job, self.services.list_disks(), confirm=same_disk, progress=progress,
                cancel=cancel, chosen=chosen,
            )  # fmt: skip
            self.result = result
            where = f"log {job.in_root(result.log)} on the job's drive"
            if result.exit_code != EXIT_OK:
                raise JobWarning(f"{result.summary} ({where}).")
            return f"Job done: {result.summary} ({where})."

        title = f"Job {self.ref}: {job.action}"
        self.app.push_screen(JobScreen(title, work, close_when=("ok",)), self._ran)

    def _ran(self, outcome: str | None) -> None:
        self.run_worker(lambda: self._released(outcome), thread=True, group="release",
                        exit_on_error=False)  # fmt: skip

    def _released(self, outcome: str | None) -> None:
        self._release()  # the job's drive is written in full and unmounted before `after`
        self.app.call_from_thread(self._ended, outcome)

    def _result_line(self) -> str:
        if self.result is None:
            return "The job did not finish."
        return f"{self.result.summary}."

    def _after(self) -> str:
        assert self.plan is not None
        after = self.plan.job.after
        return f"{after}: {AFTER_TEXT[after]}"

    def _ended(self, outcome: str | None) -> None:
        assert self.plan is not None
        after = self.plan.job.after
        log = (
            f"Log: {self.plan.job.in_root(self.result.log)} on the job's drive (now unmounted)."
            if self.result is not None
            else "The log on the job's drive says how far it came."
        )
        if outcome != "ok":
            verdict = {"warning": "finished with unreadable sectors", "cancelled": "was cancelled"}
            self._show(
                "failed", f"Job {self.ref} {verdict.get(outcome or '', 'failed')}.",
                [self._result_line(), log, f"Not carried out: {self._after()}."],
                "Esc: the home screen.",
            )  # fmt: skip
            return
        if after == "shell":
            self._show("done", f"Job {self.ref} done.", [self._result_line(), log],
                       "Esc: the home screen.")  # fmt: skip
            return
        self.left = self.COUNTDOWN
        self._after_count(log)
        self._timer = self.set_interval(1.0, lambda: self._after_tick(log))

    def _after_count(self, log: str) -> None:
        assert self.plan is not None
        doing = {"poweroff": "Powering off", "reboot": "Restarting"}[self.plan.job.after]
        self._show("after", f"Job {self.ref} done. {doing} in {self.left} s.",
                   [self._result_line(), log],
                   "Esc: stay here instead.")  # fmt: skip
        self.state = "after"

    def _after_tick(self, log: str) -> None:
        self.left -= 1
        if self.left > 0:
            self._after_count(log)
            return
        self._stop_timer()
        assert self.plan is not None
        after = self.plan.job.after
        self._show("done", f"Job {self.ref} done: {after} now.", [self._result_line(), log], "")
        self.run_worker(lambda: self._carry_out(after), thread=True, group="after",
                        exit_on_error=False)  # fmt: skip


class JobListScreen(Screen[None]):
    """The jobs found on the drives and the kernel command line; Enter shows one."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f5", "refresh", "Look again"),
        Binding("escape", "app.pop_screen", "Back"),
    ]
    DEFAULT_CSS = """
    JobListScreen #jobs { height: 1fr; }
    JobListScreen #jobs-status { padding: 0 1; height: auto; }
    """

    def __init__(self, services: Services, found: list[FoundJob] | None = None) -> None:
        super().__init__()
        self.services = services
        self.found = found

    def compose(self) -> ComposeResult:
        yield Header(icon="*")
        yield Static("Looking for jobs...", id="jobs-status")
        yield OptionList(id="jobs")
        yield Footer()

    def on_mount(self) -> None:
        if self.found is None:
            self.action_refresh()
        else:
            self._list(self.found)

    def action_refresh(self) -> None:
        self.query_one("#jobs-status", Static).update("Looking for jobs...")

        def look() -> None:
            found = self.services.find_jobs()
            self.app.call_from_thread(self._list, found)

        self.run_worker(look, thread=True, exclusive=True, group="find", exit_on_error=False)

    def _list(self, found: list[FoundJob]) -> None:
        self.found = found
        jobs = self.query_one("#jobs", OptionList)
        jobs.clear_options()
        for f in found:
            where = f" on {f.device}" if f.device else ""
            said = f"cannot run: {f.problem}" if f.problem else f.summary or ""
            jobs.add_option(plain(f"{f.ref}{where} ({f.origin})\n    {said}"))
        status = (
            f"{len(found)} job(s) found. Enter: show the job (nothing runs before you start it)."
            if found
            else "No job found: no rescue-job.toml on a filesystem labelled RESCUE, no "
            "rescue.job= on the kernel command line. F5 looks again."
        )
        self.query_one("#jobs-status", Static).update(plain(status))
        if found:
            jobs.highlighted = 0
            jobs.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        assert self.found is not None
        picked = self.found[event.option_index]
        self.app.push_screen(UnattendedScreen(picked.ref, self.services, countdown=False))
