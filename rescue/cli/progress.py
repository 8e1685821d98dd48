"""Progress on the terminal: a rich bar for people, JSON lines for scripts."""

from __future__ import annotations

import json
import sys
import time
from types import TracebackType

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from rescue.text import shown_message


class RichProgress:
    """A ProgressReporter drawing one bar per phase on stderr."""

    def __init__(self) -> None:
        self.console = Console(stderr=True)
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self._task: TaskID | None = None

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._progress.stop()

    def phase(self, name: str, total: int | None) -> None:
        if self._task is not None:
            self._progress.stop_task(self._task)
        # names from an image or a disk are printed as text, never as markup or control codes
        self._task = self._progress.add_task(escape(shown_message(name)), total=total)

    def advance(self, done: int) -> None:
        if self._task is not None:
            self._progress.advance(self._task, done)

    def note(self, message: str) -> None:
        self._progress.console.print(f"[yellow]note:[/] {escape(shown_message(message))}")


class JsonProgress:
    """One JSON object per line on stdout: phase, progress (at most 4 a second), note."""

    def __init__(self) -> None:
        self._phase = ""
        self._total: int | None = None
        self._done = 0
        self._start = time.monotonic()
        self._last = 0.0

    def __enter__(self) -> JsonProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self._emit("progress", force=True)

    def _emit(self, event: str, *, force: bool = False, **extra: object) -> None:
        now = time.monotonic()
        if event == "progress" and not force and now - self._last < 0.25:
            return
        self._last = now
        elapsed = now - self._start
        line = {
            "event": event,
            "phase": self._phase,
            "done": self._done,
            "total": self._total,
            "rate": round(self._done / elapsed) if elapsed > 0 else 0,
            **extra,
        }
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()

    def phase(self, name: str, total: int | None) -> None:
        if self._phase:
            self._emit("progress", force=True)
        self._phase, self._total, self._done = name, total, 0
        self._start = time.monotonic()
        self._emit("phase")

    def advance(self, done: int) -> None:
        self._done += done
        self._emit("progress")

    def note(self, message: str) -> None:
        self._emit("note", message=message)


def reporter(json_lines: bool) -> RichProgress | JsonProgress:
    return JsonProgress() if json_lines else RichProgress()
