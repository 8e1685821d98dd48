"""Sizes as a technician reads them."""

from __future__ import annotations


def human_size(n: int) -> str:
    """``1.5 GiB``: binary units, one decimal; plain bytes below 1 KiB."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if size < 1024 or unit == "PiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
