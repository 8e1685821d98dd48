"""The progress screen every long job runs on, and the dialogs the workflows share.

A job is a callable ``job(progress, cancel) -> str`` that drives the core in a
thread worker: the core reports through :class:`ScreenProgress` (which hands
each update to the UI thread, at most ten times a second) and stops at its next
check when ``cancel`` is set. The screen ends in one of three plain outcomes:
done, failed (with the core's message) or cancelled, never a success look
after a failure.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Footer, Header, Input, Log, ProgressBar, Static

from rescue.errors import CancelledError, RescueError
from rescue.operations.plan_text import Section, plan_lines
from rescue.progress import ProgressReporter
from rescue.text import shown_message
from rescue.tui.text import plain
from rescue.units import human_size

Job = Callable[[ProgressReporter, threading.Event], str]


class JobWarning(Exception):
    """The job finished, but with something the technician must know (unreadable sectors)."""


_UPDATE_EVERY = 0.1


class ScreenProgress:
    """A ProgressReporter for worker threads that updates a :class:`JobScreen`."""

    def __init__(self, screen: JobScreen) -> None:
        self._screen = screen
        self._done = 0
        self._last = 0.0

    def phase(self, name: str, total: int | None) -> None:
        self._done = 0
        self._screen.app.call_from_thread(self._screen.set_phase, name, total)

    def advance(self, done: int) -> None:
        self._done += done
        now = time.monotonic()
        if now - self._last >= _UPDATE_EVERY:
            self._last = now
            self._screen.app.call_from_thread(self._screen.set_done, self._done)

    def note(self, message: str) -> None:
        self._screen.app.call_from_thread(self._screen.add_note, message)


class JobScreen(Screen[str]):
    """Bar, bytes done of total, rate, ETA, phase; cancel; a plain result at the end."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel_or_close", "Cancel / close"),
        Binding("enter", "close", "Close", show=False),
    ]
    DEFAULT_CSS = """
    JobScreen #phase { padding: 1 1 0 1; text-style: bold; }
    JobScreen ProgressBar { padding: 0 1; }
    JobScreen #stats { padding: 0 1; color: $text-muted; }
    JobScreen #notes { height: 1fr; margin: 1 1 0 1; border: round $panel; }
    JobScreen #result { padding: 0 1; height: auto; }
    JobScreen #result.ok { background: $success 30%; }
    JobScreen #result.failed { background: $error 40%; text-style: bold; }
    JobScreen #result.cancelled { background: $warning 30%; }
    JobScreen #result.warning { background: $warning 50%; text-style: bold; }
    """

    def __init__(self, title: str, job: Job, *, close_when: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.job_title = title
        self._job = job
        self._close_when = close_when
        """Outcomes that close the screen by themselves (an unattended job goes on to its
        ``after``); the others wait for a key."""
        self.cancel_event = threading.Event()
        self.outcome: str | None = None
        """None while running, then "ok", "warning", "failed" or "cancelled"."""
        self.message = ""
        self._total: int | None = None
        self._started = time.monotonic()

    def compose(self) -> ComposeResult:
        yield Header(icon="*")
        yield Static(plain(self.job_title), id="phase")
        yield ProgressBar(id="bar", show_eta=False)
        yield Static("starting...", id="stats")
        yield Log(id="notes", highlight=False)
        yield Static("Running. Esc cancels.", id="result")
        yield Footer()

    def on_mount(self) -> None:
        self.run_worker(self._run, thread=True, name="job", exit_on_error=False)

    def _run(self) -> None:
        progress = ScreenProgress(self)
        try:
            message = self._job(progress, self.cancel_event)
        except CancelledError:
            self.app.call_from_thread(self._finish, "cancelled", "Cancelled: the job stopped.")
        except JobWarning as exc:
            self.app.call_from_thread(self._finish, "warning", f"WARNING: {exc}")
        except RescueError as exc:
            self.app.call_from_thread(self._finish, "failed", f"FAILED: {exc}")
        except Exception as exc:  # noqa: BLE001  (shown, never hidden behind a success look)
            self.app.call_from_thread(self._finish, "failed", f"FAILED (internal error): {exc!r}")
        else:
            self.app.call_from_thread(self._finish, "ok", message)

    def set_phase(self, name: str, total: int | None) -> None:
        self._total = total
        self._started = time.monotonic()
        self.query_one("#phase", Static).update(plain(f"{self.job_title}: {name}"))
        self.query_one("#bar", ProgressBar).update(total=total, progress=0)
        self.set_done(0)

    def set_done(self, done: int) -> None:
        self.query_one("#bar", ProgressBar).update(progress=done)
        elapsed = max(time.monotonic() - self._started, 1e-6)
        rate = done / elapsed
        text = human_size(done)
        if self._total:
            text += f" of {human_size(self._total)}"
            if rate > 0 and done:
                left = max(self._total - done, 0) / rate
                text += f" · ETA {int(left) // 60}:{int(left) % 60:02d}"
        text += f" · {human_size(int(rate))}/s"
        self.query_one("#stats", Static).update(text)

    def add_note(self, message: str) -> None:
        for line in shown_message(message).split("\n"):
            self.query_one("#notes", Log).write_line(line)

    def _finish(self, outcome: str, message: str) -> None:
        self.outcome = outcome
        self.message = message
        if outcome == "ok" and self._total:
            self.query_one("#bar", ProgressBar).update(progress=self._total)
            self.query_one("#stats", Static).update(f"{human_size(self._total)} done")
        result = self.query_one("#result", Static)
        result.add_class(outcome)
        result.update(plain(f"{message}\nEnter or Esc: back."))
        self.add_note(message)
        if outcome in self._close_when:
            self.dismiss(outcome)

    def action_cancel_or_close(self) -> None:
        if self.outcome is not None:
            self.dismiss(self.outcome)
            return

        def answered(yes: bool | None) -> None:
            if yes and self.outcome is None:
                self.cancel_event.set()
                self.query_one("#result", Static).update("Cancelling at the next safe point...")

        self.app.push_screen(
            ConfirmScreen(f"Cancel '{self.job_title}'? What it wrote so far is not usable."),
            answered,
        )

    def action_close(self) -> None:
        if self.outcome is not None:
            self.dismiss(self.outcome)


class ConfirmScreen(ModalScreen[bool]):
    """Yes or no, with the question in plain words (wrapped, never cut)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]
    DEFAULT_CSS = """
    ConfirmScreen { align: center middle; }
    ConfirmScreen > Vertical { width: 100%; max-width: 90; height: auto; max-height: 100%;
                               border: thick $warning; padding: 1 2; background: $surface; }
    """

    def __init__(self, question: str) -> None:
        super().__init__()
        self._question = question

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(plain(self._question))
            yield Static("y: yes   n: no")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class TypedConfirmScreen(ModalScreen[bool]):
    """A destructive step: everything it will do, then the technician types the disk's name.

    ``facts`` are sections of lines (:func:`rescue.operations.plan_text.describe_plan`),
    or one text. Each line wraps to the screen's width, never cut; when they do
    not fit the screen's height they scroll (PgUp/PgDn) while the typed name
    stays in view.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "abort", "Do not write"),
        Binding("pageup", "scroll_facts(-1)", "Scroll up", show=False),
        Binding("pagedown", "scroll_facts(1)", "Scroll down", show=False),
    ]
    DEFAULT_CSS = """
    TypedConfirmScreen { align: center middle; }
    TypedConfirmScreen > Vertical { width: 100%; max-width: 110; height: auto; max-height: 100%;
                                    border: thick $error; padding: 0 1; background: $surface; }
    TypedConfirmScreen #warning { color: $error; text-style: bold; }
    TypedConfirmScreen #facts { height: auto; }
    TypedConfirmScreen Input { width: 1fr; }
    TypedConfirmScreen .heading { text-style: bold; }
    TypedConfirmScreen .fact { padding: 0 0 0 2; }
    TypedConfirmScreen #prompt { margin: 1 0 0 0; }
    TypedConfirmScreen #mismatch { color: $error; }
    """

    def __init__(
        self,
        facts: Sequence[Section] | str,
        name: str,
        *,
        warning: str = "DESTRUCTIVE: this overwrites a disk.",
    ) -> None:
        super().__init__()
        self.sections: tuple[Section, ...] = (
            (Section("", tuple(facts.splitlines())),) if isinstance(facts, str) else tuple(facts)
        )
        self.summary = "\n".join(plan_lines(self.sections))
        """Everything the dialog says about the step, as plain text."""
        self.expected = name
        self._warning = warning

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self._warning, id="warning")
            with VerticalScroll(id="facts", can_focus=False):
                for section in self.sections:
                    if section.title:
                        yield Static(plain(f"{section.title}:"), classes="heading")
                    for line in section.lines:
                        yield Static(plain(line), classes="fact" if section.title else "")
            yield Static(
                plain(
                    f"Type {self.expected} and press Enter to write; Esc does not write."
                    " PgUp/PgDn scroll."
                ),
                id="prompt",
            )
            yield Input(placeholder=self.expected, id="typed")
            yield Static("", id="mismatch")

    FRAME = 9
    """Rows that are not the facts: the border, the warning, the prompt, the input, a reply."""

    def on_mount(self) -> None:
        self._fit_facts()

    def on_resize(self) -> None:
        self._fit_facts()

    def _fit_facts(self) -> None:
        """The facts take the rows the rest leaves, so the typed name is always in view."""
        self.query_one("#facts", VerticalScroll).styles.max_height = max(
            3, self.size.height - self.FRAME
        )

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.value.strip() == self.expected:
            self.dismiss(True)
        else:
            self.query_one("#mismatch", Static).update(
                plain(f"That is not {self.expected}. Nothing was written.")
            )

    def action_scroll_facts(self, pages: int) -> None:
        facts = self.query_one("#facts", VerticalScroll)
        if pages < 0:
            facts.scroll_page_up()
        else:
            facts.scroll_page_down()

    def action_abort(self) -> None:
        self.dismiss(False)
