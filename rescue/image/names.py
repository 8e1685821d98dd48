"""File names inside an image folder (Clonezilla's conventions plus our own)."""

from __future__ import annotations

INCOMPLETE_MARKER = "rescue.incomplete"
"""Written first by a capture and removed after rescue.json: its presence means unfinished."""


def stream_name(part: str, fstype: str) -> str:
    """``sda1.ext4-ptcl-img.zst``; a raw stream is ``sda1.dd-ptcl-img.zst``."""
    return f"{part.replace('/', '-')}.{fstype}-ptcl-img.zst"
