"""What each screen looks like at 80x24 (the Linux console) and 120x40.

The disks here are fixed values, not the machine's: a snapshot must not change
with the loop devices another test left attached. The workflows themselves
are tested against real disks in test_tui_workflows.py.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Input

from rescue.devices.model import Disk, Partition
from rescue.devices.smart import SmartSummary
from rescue.progress import ProgressReporter
from rescue.tui.app import RescueApp
from rescue.tui.jobs import JobScreen, TypedConfirmScreen

SIZES = [(80, 24), (120, 40)]
GiB = 1 << 30


def _part(
    disk: str, n: int, size: int, fs: str, label: str, flags: tuple[str, ...] = ()
) -> Partition:
    sep = "p" if disk[-1].isdigit() else ""
    return Partition(
        path=f"{disk}{sep}{n}", name=f"{disk[5:]}{sep}{n}", number=n, start=n << 20, size=size,
        fstype=fs, label=label, uuid=None, partlabel=None,
        mountpoints=("/run/live/medium",) if flags else (), flags=flags, disk=disk,
    )  # fmt: skip


def fixed_disks() -> list[Disk]:
    def disk(
        path: str,
        size: int,
        model: str,
        serial: str,
        bus: str,
        parts: list[Partition],
        flags: tuple[str, ...] = (),
    ) -> Disk:
        return Disk(
            path=path, name=path[5:], size=size, model=model, serial=serial, transport=bus,
            removable=bus == "usb", read_only=False, rotational=False, logical_sector_size=512,
            partition_table="gpt", flags=flags, partitions=tuple(parts),
        )  # fmt: skip

    return [
        disk("/dev/nvme0n1", 512 * GiB, "Samsung SSD 980", "S64DNX0R", "nvme", [
            _part("/dev/nvme0n1", 1, GiB // 2, "vfat", "EFI"),
            _part("/dev/nvme0n1", 2, 16 << 20, "", ""),
            _part("/dev/nvme0n1", 3, 500 * GiB, "ntfs", "Windows"),
        ]),
        disk("/dev/sda", 2000 * GiB, "WDC WD20EZRZ", "WD-WCC4M1", "sata", [
            _part("/dev/sda", 1, 2000 * GiB, "ext4", "backup"),
        ]),
        disk("/dev/sdb", 32 * GiB, "SanDisk Ultra", "4C530001", "usb", [
            _part("/dev/sdb", 1, 32 * GiB, "iso9660", "RESCUE", ("boot-medium", "mounted")),
        ], flags=("boot-medium", "mounted")),
    ]  # fmt: skip


def health(path: str) -> SmartSummary | None:
    if path == "/dev/sda":
        return SmartSummary(passed=True, bad_sectors={"pending": 8}, temperature=41,
                            power_on_hours=30000)  # fmt: skip
    if path == "/dev/nvme0n1":
        return SmartSummary(passed=True, bad_sectors={}, temperature=35, power_on_hours=900)
    return None


def used(path: str, size: int, fstype: str | None) -> int | None:
    return size // 3


def app() -> RescueApp:
    images = [Path("/mnt/usb/images/office-pc-2026-11-20")]
    return RescueApp(
        disks_source=fixed_disks, smart=health, used=used, find_images=lambda: images,
        hotplug=False,
    )  # fmt: skip


async def settle(pilot: Pilot[Any]) -> None:
    await pilot.pause(0.3)
    await pilot.app.workers.wait_for_complete()
    await pilot.pause(0.1)


@pytest.mark.parametrize("size", SIZES)
def test_home(snap_compare: Any, size: tuple[int, int]) -> None:
    assert snap_compare(app(), terminal_size=size, run_before=settle)


@pytest.mark.parametrize("size", SIZES)
def test_capture(snap_compare: Any, size: tuple[int, int]) -> None:
    async def before(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        await pilot.press("c")
        await settle(pilot)
        pilot.app.screen.query_one("#name", Input).value = "office-pc-2026-11-26"
        await settle(pilot)

    assert snap_compare(app(), terminal_size=size, run_before=before)


@pytest.mark.parametrize("key", ["r", "v", "b"])
@pytest.mark.parametrize("size", SIZES)
def test_image_screens(snap_compare: Any, size: tuple[int, int], key: str) -> None:
    async def before(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        await pilot.press(key)
        await settle(pilot)

    assert snap_compare(app(), terminal_size=size, run_before=before)


@pytest.mark.parametrize("size", SIZES)
def test_typed_confirmation(snap_compare: Any, size: tuple[int, int]) -> None:
    async def before(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        summary = (
            "Everything on /dev/sda, model WDC WD20EZRZ, serial WD-WCC4M1, 1.95 TiB "
            "(2147483648000 bytes) will be overwritten with the image /mnt/usb/images/pc."
        )
        await pilot.app.push_screen(TypedConfirmScreen(summary, "sda"))
        await pilot.press(*"sdb", "enter")
        await settle(pilot)

    assert snap_compare(app(), terminal_size=size, run_before=before)


@pytest.mark.parametrize("outcome", ["ok", "failed"])
@pytest.mark.parametrize("size", SIZES)
def test_job_results(snap_compare: Any, size: tuple[int, int], outcome: str) -> None:
    from rescue.errors import ImageDamagedError  # noqa: PLC0415

    def job(progress: ProgressReporter, cancel: threading.Event) -> str:
        progress.phase("Decoding streams", 64 << 20)
        progress.note("sda1: imaged raw: the NTFS bitmap is damaged")
        if outcome == "failed":
            raise ImageDamagedError("sda1.ntfs-ptcl-img.zst: Damaged zstd frame at byte 4194304.")
        return "Image intact: 9 file(s) hashed, 2 stream(s) decoded."

    async def before(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        screen = JobScreen("Verify /mnt/usb/images/pc", job)
        await pilot.app.push_screen(screen)
        await settle(pilot)

    assert snap_compare(app(), terminal_size=size, run_before=before)
