"""Hotplug: disks appearing and disappearing, for the UI to follow live."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

from rescue.devices.udev import disk_events


@dataclass(frozen=True)
class DiskEvent:
    action: str
    """"added" or "removed"."""
    path: str
    name: str


def watch_disks(cancel: threading.Event, *, poll: float = 0.2) -> Iterator[DiskEvent]:
    """Yield disk additions and removals until ``cancel`` is set (checked every ``poll`` s).

    A loop device counts as added when a file is attached to it and as removed
    when it is detached, as a USB drive would.
    """
    for action, path, name in disk_events(cancel, poll):
        yield DiskEvent(action, path, name)
