"""How the core reports progress and learns of cancellation.

The core never prints. Long operations take a :class:`ProgressReporter` and a
:class:`threading.Event`; the CLI and the Textual app each implement the
reporter their own way.
"""

from __future__ import annotations

import threading
from typing import Protocol

from rescue.errors import CancelledError


class ProgressReporter(Protocol):
    """What a long operation tells its front end."""

    def phase(self, name: str, total: int | None) -> None:
        """A new phase begins; ``total`` is in bytes when known."""

    def advance(self, done: int) -> None:
        """``done`` more bytes of the current phase are finished."""

    def note(self, message: str) -> None:
        """Something the technician should read (a warning, a decision taken)."""


class NullProgress:
    """A reporter that ignores everything (for tests and internal calls)."""

    def phase(self, name: str, total: int | None) -> None:
        pass

    def advance(self, done: int) -> None:
        pass

    def note(self, message: str) -> None:
        pass


def check_cancel(cancel: threading.Event | None) -> None:
    """Raise :class:`CancelledError` when the user asked to stop."""
    if cancel is not None and cancel.is_set():
        raise CancelledError()
