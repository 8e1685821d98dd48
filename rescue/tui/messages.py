"""What a screen asks the app for: the app routes each request to the screen that serves it.

Screens never import one another: the home screen posts one of these, the
message bubbles up to :class:`rescue.tui.app.RescueApp`, and the app pushes the
workflow's screen.
"""

from __future__ import annotations

from textual.message import Message

from rescue.devices import Disk


class CaptureRequested(Message):
    """Image ``disk`` (or one of its partitions): the capture screen."""

    def __init__(self, disk: Disk) -> None:
        super().__init__()
        self.disk = disk


class RestoreRequested(Message):
    """Write an image back onto a disk: the restore screen."""


class VerifyRequested(Message):
    """Check every checksum of an image: the verify screen."""


class BrowseRequested(Message):
    """Open an image read-only and copy files out of it: the browse screen."""


class JobsRequested(Message):
    """The unattended jobs found on the drives: the job list."""
