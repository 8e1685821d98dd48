"""The shared pieces of the job tests (core, CLI and UI): loop disks with serials, the
technician's RESCUE drive, an image on it, the logs a job wrote there.

The disks a job's rules pick are loop disks given serials through a udev rule (the
same property, ID_SERIAL_SHORT, a real disk's serial reaches rescue by).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import DiskFactory
from diskbench import LoopDisk, PartSpec, fill_tree, run

from rescue.cli import main
from rescue.devices import Disk, list_disks
from rescue.kernel import mount_table

SERIAL_RULES = Path(f"/run/udev/rules.d/99-rescue-tests-jobs-serials-{os.getpid()}.rules")

Serials = Callable[[LoopDisk, str], None]


@pytest.fixture
def serials(udev: None) -> Iterator[Serials]:
    """give(disk, serial): udev reports ``serial`` for the loop disk (ID_SERIAL_SHORT, as it
    does for a SATA or NVMe disk), matched by its backing file; the rule goes afterwards."""
    given: dict[str, str] = {}

    def give(disk: LoopDisk, serial: str) -> None:
        given[os.path.realpath(disk.backing)] = serial
        SERIAL_RULES.parent.mkdir(parents=True, exist_ok=True)
        SERIAL_RULES.write_text(
            "".join(
                f'KERNEL=="loop*", ATTR{{loop/backing_file}}=="{b}", ENV{{ID_SERIAL_SHORT}}="{s}"\n'
                for b, s in given.items()
            )
        )
        run("udevadm", "control", "--reload")
        run("udevadm", "trigger", "--action=change", disk.path)
        run("udevadm", "settle", "--timeout=30", check=False)

    yield give
    SERIAL_RULES.unlink(missing_ok=True)
    run("udevadm", "control", "--reload", check=False)


def tag() -> str:
    """A serial prefix of this run only (another run may have loop disks too)."""
    return f"JT{os.getpid()}"


def mine(*disks: LoopDisk) -> list[Disk]:
    """The disks rescue lists, these loop disks only (others on the machine are not ours)."""
    paths = {d.path for d in disks}
    return [d for d in list_disks() if d.path in paths]


def file_hashes(root: Path) -> dict[str, str]:
    """SHA-256 of every regular file under ``root`` (lost+found aside), by relative path."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "lost+found"]
        for name in filenames:
            p = Path(dirpath) / name
            if p.is_file() and not p.is_symlink():
                out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def mounted_sources() -> set[str]:
    return {m.source for m in mount_table()}


@pytest.fixture
def source(loop_disk_factory: DiskFactory, tmp_path: Path) -> LoopDisk:
    disk = loop_disk_factory(64, "gpt", [PartSpec(None, "ext4", label="system")])
    mnt = disk.mount(0, tmp_path / "src")
    fill_tree(mnt, 19, 4)
    disk.umount(mnt)
    return disk


@pytest.fixture
def job_drive(loop_disk_factory: DiskFactory) -> LoopDisk:
    """The technician's stick: one ext4 filesystem labelled RESCUE."""
    return loop_disk_factory(96, "gpt", [PartSpec(None, "ext4", label="RESCUE")])


@pytest.fixture
def target(loop_disk_factory: DiskFactory) -> LoopDisk:
    return loop_disk_factory(112, None, [])


def write_on(drive: LoopDisk, tmp_path: Path, files: dict[str, str]) -> None:
    mnt = drive.mount(0, tmp_path / "stick")
    for name, text in files.items():
        (mnt / name).parent.mkdir(parents=True, exist_ok=True)
        (mnt / name).write_text(text)
    drive.umount(mnt)


def image_on(drive: LoopDisk, source: LoopDisk, tmp_path: Path, folder: str) -> None:
    """A rescue image of ``source`` in ``folder`` on the job drive, by ``rescue capture``."""
    mnt = drive.mount(0, tmp_path / "stick")
    assert main(["capture", source.path, str(mnt / folder)]) == 0
    drive.umount(mnt)


def logs_on(drive: LoopDisk, tmp_path: Path, folder: str) -> list[str]:
    mnt = drive.mount(0, tmp_path / "stick", "ro")
    try:
        return [p.read_text() for p in sorted((mnt / folder).glob("rescue-job-*.log"))]
    finally:
        drive.umount(mnt)
