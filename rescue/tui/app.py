"""The Textual application (placeholder until the disks screen lands)."""

from __future__ import annotations


def run_app() -> int:
    raise NotImplementedError("being written")
