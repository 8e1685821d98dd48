"""A share whose server stops answering: the watch fails what waits on it, in seconds.

The kernel's NFS and cifs clients are not in this machine's kernel (the boot test
stops real servers under them in the live system). Here the share is a real FUSE
mount whose server process is stopped with SIGSTOP: the kernel keeps every request
waiting, as it does for a server gone from the network, and the same forced
unmount (``umount_begin``) makes the kernel fail them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rescue import kernel
from rescue.shares.mounts import DROPPED
from rescue.shares.watch import ShareWatch

SERVER = Path(__file__).with_name("failing_device.py")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    """A FUSE mount (one 4 MiB file, ``disk``) and its server's process."""
    backing = tmp_path / "backing"
    backing.write_bytes(os.urandom(4 << 20))
    mnt = tmp_path / "share"
    mnt.mkdir()
    proc = subprocess.Popen([sys.executable, str(SERVER), str(backing), str(mnt), ""])
    try:
        deadline = time.monotonic() + 20
        while not (mnt / "disk").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "no FUSE server"
            time.sleep(0.05)
        yield mnt, proc
    finally:
        proc.send_signal(signal.SIGCONT)
        if kernel.mounted_at(mnt) is not None:
            kernel.detach_gone(mnt)
        proc.kill()
        proc.wait()


def _read_in_thread(path: Path) -> tuple[threading.Thread, dict[str, object]]:
    said: dict[str, object] = {}

    def read() -> None:
        try:
            with path.open("rb", buffering=0) as f:
                said["bytes"] = len(f.read(1 << 20))
        except OSError as exc:
            said["errno"] = exc.errno
        said["at"] = time.monotonic()

    t = threading.Thread(target=read, daemon=True)
    t.start()
    return t, said


def test_a_share_that_answers_is_left_alone(served: tuple[Path, subprocess.Popen[bytes]]) -> None:
    mnt, _proc = served
    failed: list[float] = []
    with ShareWatch(mnt, stall_seconds=1.0, probe_seconds=0.1, fail_waiting=failed.append) as w:
        for _ in range(15):
            assert (mnt / "disk").stat().st_size == 4 << 20
            time.sleep(0.1)
        assert not w.server_gone
    assert failed == []
    # the watch let go of the mount: a plain unmount goes through
    kernel.unmount(mnt)
    assert kernel.mounted_at(mnt) is None


def test_a_server_that_stops_answering_has_the_waiting_read_failed(
    served: tuple[Path, subprocess.Popen[bytes]],
) -> None:
    """A read waits on the stopped server; about ``stall_seconds`` later the watch has the
    kernel fail it, the mount stays (the watch holds it
    busy, so the forced unmount does not go through) and is then detached lazily."""
    mnt, proc = served
    with ShareWatch(mnt, stall_seconds=1.5, probe_seconds=0.2) as w:
        time.sleep(0.5)
        proc.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        reader, said = _read_in_thread(mnt / "disk")
        reader.join(timeout=20)
        assert not reader.is_alive(), "the read still waits on the stopped server"
        # (FUSE says ECONNABORTED, NFS EIO): an error the capture takes for a dropped share
        assert said.get("errno") in DROPPED, said
        took = float(said["at"]) - stopped  # type: ignore[arg-type]
        assert 1.5 <= took < 6, took
        assert w.server_gone
        assert kernel.mounted_at(mnt) is not None, "the forced unmount went through"
        # and nothing later waits on it
        t0 = time.monotonic()
        with pytest.raises(OSError):
            (mnt / "disk").stat()
        assert time.monotonic() - t0 < 3
    kernel.detach_gone(mnt)
    assert kernel.mounted_at(mnt) is None


def _stuck_watch(mnt: Path, grace: float, stuck: list[float]) -> ShareWatch:
    """A quick watch (gone after 1 s) that notes when it calls ``on_stuck``."""
    return ShareWatch(
        mnt, stall_seconds=1.0, probe_seconds=0.2, grace_seconds=grace,
        on_stuck=lambda: stuck.append(time.monotonic()),
    )  # fmt: skip


def test_a_command_still_held_up_after_the_failing_is_handed_to_on_stuck(
    served: tuple[Path, subprocess.Popen[bytes]],
) -> None:
    """Once the waiting requests were failed, the share answers with errors only (no answer
    either); a command that has not let go of it by then is handed to ``on_stuck``, once."""
    mnt, proc = served
    stuck: list[float] = []
    with _stuck_watch(mnt, 1.0, stuck) as w:
        proc.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        time.sleep(5)
    assert w.gone_at is not None and 1.0 <= w.gone_at - stopped < 3
    assert len(stuck) == 1 and 1.0 <= stuck[0] - w.gone_at < 2.5, (stuck, w.gone_at)


def test_a_command_that_lets_go_in_time_is_not_stuck(
    served: tuple[Path, subprocess.Popen[bytes]],
) -> None:
    mnt, proc = served
    stuck: list[float] = []
    with _stuck_watch(mnt, 3.0, stuck) as w:
        proc.send_signal(signal.SIGSTOP)
        reader, said = _read_in_thread(mnt / "disk")
        reader.join(timeout=20)
        assert said.get("errno") in DROPPED, said
    time.sleep(3.5)
    assert w.server_gone and stuck == []
