"""The line a command ends with when it fails: one format for every way it can end."""

from __future__ import annotations

import sys

from rescue.errors import RescueError
from rescue.text import shown_message


def report(exc: RescueError) -> None:
    """The error (and its hint) on standard error."""
    # a message may quote names from an image or a disk: only its own line breaks stay
    print(f"rescue: {shown_message(str(exc))}", file=sys.stderr, flush=True)
