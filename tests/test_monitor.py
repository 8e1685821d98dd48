"""Hotplug: attaching and detaching a real loop device is seen as a disk added and removed."""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path

from capabilities import need
from diskbench import attach

from rescue.devices.monitor import DiskEvent, watch_disks

pytestmark = need("root", "loop")


def test_loop_attach_and_detach_are_reported(tmp_path: Path, udev: None) -> None:
    backing = tmp_path / "hot.img"
    with backing.open("wb") as f:
        f.truncate(16 << 20)
    events: queue.Queue[DiskEvent] = queue.Queue()
    cancel = threading.Event()
    started = threading.Event()

    def watch() -> None:
        gen = watch_disks(cancel, poll=0.1)
        started.set()
        for ev in gen:
            events.put(ev)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    started.wait(5)
    # the generator starts listening on its first step; give it a moment
    time.sleep(0.5)
    disk = attach(backing)
    try:
        seen = _wait_for(events, "added", disk.path)
        assert seen.name == Path(disk.path).name
    finally:
        disk.detach()
    _wait_for(events, "removed", disk.path)
    cancel.set()
    t.join(timeout=5)
    assert not t.is_alive(), "the monitor did not stop when cancelled"


def _wait_for(events: queue.Queue[DiskEvent], action: str, path: str) -> DiskEvent:
    while True:
        ev = events.get(timeout=10)
        if ev.action == action and ev.path == path:
            return ev
