"""Text from a disk, an image or a share, made safe to print.

Names, labels and models come from devices and folders someone else made: a
control character in them could move the cursor, clear the screen or forge a
line of our own output. Every front end prints such text through these
functions. The module imports nothing of rescue's, so the first screen and
the command line's error path need none of the core.
"""

from __future__ import annotations


def printable(text: str) -> str:
    """``text`` with control characters shown as escapes, so a name cannot forge a line."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def shown(text: object) -> str:
    """``text`` as it may be printed: control characters (newlines too) as escapes."""
    return printable(str(text))


def shown_message(text: str) -> str:
    """A message of ours that may quote untrusted text: every control character escaped
    except the newlines that separate its lines (and a message's hint)."""
    return "\n".join(printable(line) for line in text.split("\n"))
