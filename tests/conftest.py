"""Shared test set-up: the capability header, udev, and the real-disk bench."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

pytest.register_assert_rewrite("job_fixtures")  # a plugin of the job tests (pytest_plugins)

from capabilities import capabilities  # noqa: E402
from diskbench import LoopDisk, PartSpec, make_disk, udev_alive  # noqa: E402

from rescue.browse import mounts  # noqa: E402

# System tools live in sbin; make them visible however pytest was started.
os.environ["PATH"] = os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin"

UDEVD = Path("/lib/systemd/systemd-udevd")


def pytest_report_header() -> str:
    caps = capabilities()
    have = " ".join(f"{k}={'yes' if v else 'no'}" for k, v in caps.items())
    return f"rescue test bench capabilities: {have}"


# one rule file per test run, so runs side by side do not remove each other's rule
NOWATCH_RULE = Path(f"/run/udev/rules.d/99-rescue-tests-nowatch-{os.getpid()}.rules")


@contextlib.contextmanager
def loop_nowatch() -> Iterator[None]:
    """Keep udev from re-reading loop disks' tables whenever a tool closes them.

    udev re-reads a disk's partition table (BLKRRPART) after any program closes
    it opened for writing (losetup itself does). This machine's kernel has no
    partition parsers, so every such re-read drops the loop disk's partitions,
    at a moment no test controls. The rule lives in /run and is removed after.
    """
    NOWATCH_RULE.parent.mkdir(parents=True, exist_ok=True)
    NOWATCH_RULE.write_text('KERNEL=="loop*", OPTIONS+="nowatch"\n')
    subprocess.run(["udevadm", "control", "--reload"], check=False)
    try:
        yield
    finally:
        NOWATCH_RULE.unlink(missing_ok=True)
        subprocess.run(["udevadm", "control", "--reload"], check=False)


@pytest.fixture(scope="session")
def udev() -> Iterator[None]:
    """A running systemd-udevd: the machine's own, or one started (and stopped) here."""
    if udev_alive():
        with loop_nowatch():
            yield
        return
    if os.geteuid() != 0 or not UDEVD.exists():
        pytest.skip("no udev daemon runs and this run cannot start one (needs root and udev)")
    proc = subprocess.Popen([str(UDEVD)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if udev_alive():
                break
            time.sleep(0.05)
        subprocess.run(
            ["udevadm", "trigger", "--action=add", "--subsystem-match=block"], check=False
        )
        subprocess.run(["udevadm", "settle", "--timeout=30"], check=False)
        with loop_nowatch():
            yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


DiskFactory = Callable[[int, str | None, Sequence[PartSpec]], LoopDisk]


@pytest.fixture
def private_run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Mount records and index caches of this test only; no mount outlives it (a failed test
    must not leave mounts for the next one). Modules that mount use it for every test."""
    run_dir = tmp_path / "run"
    monkeypatch.setenv("RESCUE_RUN_DIR", str(run_dir))
    monkeypatch.setenv("RESCUE_CACHE_DIR", str(tmp_path / "cache"))
    yield run_dir
    if mounts.records():
        mounts.unmount_all()


@pytest.fixture
def loop_disk_factory(tmp_path: Path, udev: None) -> Iterator[DiskFactory]:
    """make(size_mib, table, parts) -> LoopDisk; every disk is detached afterwards."""
    made: list[LoopDisk] = []

    def make(size_mib: int, table: str | None, parts: Sequence[PartSpec]) -> LoopDisk:
        disk = make_disk(tmp_path / f"disk{len(made)}.img", size_mib, table, parts)
        made.append(disk)
        return disk

    yield make
    for disk in made:
        disk.detach()
