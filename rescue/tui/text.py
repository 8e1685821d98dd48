"""Text for the screens: what comes from a disk or an image, never read as markup."""

from __future__ import annotations

from textual.content import Content

from rescue.text import shown_message


def plain(text: str) -> Content:
    """Text that is never read as markup, its control characters escaped (its lines kept)."""
    return Content(shown_message(text))
