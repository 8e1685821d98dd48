"""What each screen looks like at 80x24 (the Linux console) and 120x40.

The disks here are fixed values, not the machine's: a snapshot must not change
with the loop devices another test left attached. The workflows themselves
are tested against real disks in test_tui_workflows.py. The restore
confirmation is planned for a real image of a real loop disk; only the names
that change from run to run (loop devices, folders, the time) are fixed.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from capabilities import need
from conftest import DiskFactory
from diskbench import PartSpec
from textual.pilot import Pilot
from textual.widgets import Input

import rescue.tui.restore
from rescue.cli import main
from rescue.devices.model import Disk, Partition
from rescue.devices.network import Interface
from rescue.devices.smart import SmartSummary
from rescue.operations.restore import RestorePlan, plan_restore
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


def wired() -> list[Interface]:
    return [Interface("enp1s0", "52:54:00:12:34:56", wired=True, up=True,
                      addresses=("192.168.1.23/24",))]  # fmt: skip


def app() -> RescueApp:
    images = [Path("/mnt/usb/images/office-pc-2026-11-20")]
    return RescueApp(
        disks_source=fixed_disks, smart=health, used=used, find_images=lambda: images,
        network=wired, hotplug=False,
    )  # fmt: skip


@pytest.fixture(autouse=True)
def steady_cursor(monkeypatch: pytest.MonkeyPatch) -> None:
    """A focused input's cursor stays drawn: it blinks every 0.5 s, about the time a
    settle takes, so a snapshot caught it on or off as the machine's load went (three
    snapshots failed in CI that way)."""

    def shown(self: Input) -> None:
        self._cursor_visible = True

    monkeypatch.setattr(Input, "_toggle_cursor", shown)


async def settle(pilot: Pilot[Any]) -> None:
    """Until the screen stops changing: workers done, animations run out, refreshes drawn
    (on a loaded machine a snapshot taken sooner caught a focus change half done)."""
    await pilot.pause(0.3)
    await pilot.app.workers.wait_for_complete()
    await pilot.wait_for_scheduled_animations()
    await pilot.pause(0.2)


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


IMAGE = Path("/mnt/usb/images/office-pc-2026-11-20")


def stable(plan: RestorePlan, source_name: str) -> RestorePlan:
    """The plan with the names that change from run to run fixed: the loop disks' names, the
    image's folder, when it was made; sizes, layout and filesystems stay as planned."""

    def name(part: str) -> str:
        return part.replace(source_name, "nvme0n1", 1)

    image, m = plan.image, plan.image.manifest
    assert m is not None
    source = dataclasses.replace(
        m.source, path="/dev/nvme0n1", name="nvme0n1", model="Samsung SSD 980", serial="S64DNX0R"
    )
    manifest = dataclasses.replace(m, created="2026-11-20T09:30:00+00:00", source=source)
    parts = tuple(dataclasses.replace(p, name=name(p.name)) for p in image.parts)
    growth = plan.growth
    if growth is not None:
        moved = tuple((name(n), start, size) for n, start, size in growth.moved)
        growth = dataclasses.replace(growth, name=name(growth.name), moved=moved)
    target = dataclasses.replace(
        plan.target, path="/dev/sdc", name="sdc", model="ST500DM002-1BD142", serial="Z3T8ABCD"
    )
    image = dataclasses.replace(
        image, folder=IMAGE, disk_name="nvme0n1", parts=parts, manifest=manifest
    )
    return dataclasses.replace(plan, image=image, target=target, growth=growth)


@need("root", "loop")
@pytest.mark.parametrize(
    ("size", "scrolled"),
    [
        pytest.param(SIZES[0], False, id="80x24"),
        pytest.param(SIZES[0], True, id="80x24-scrolled"),
        pytest.param(SIZES[1], False, id="120x40"),
    ],
)
def test_restore_confirmation_of_a_real_image(
    snap_compare: Any,
    size: tuple[int, int],
    scrolled: bool,
    loop_disk_factory: DiskFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The whole plan, wrapped and never cut: target, image, every partition and its place."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    disk = loop_disk_factory(160, "gpt", [
        PartSpec(32, "vfat", label="EFI"), PartSpec(64, "ext4", label="system"),
        PartSpec(None, "ext4", label="home"),
    ])  # fmt: skip
    image = tmp_path / "image"
    assert main(["capture", disk.path, str(image)]) == 0
    target = loop_disk_factory(320, None, [])
    shown_target = Disk(
        path="/dev/sdc", name="sdc", size=320 << 20, model="ST500DM002-1BD142",
        serial="Z3T8ABCD", transport="sata", removable=False, read_only=False, rotational=True,
        logical_sector_size=512, partition_table=None, flags=(), partitions=(),
    )  # fmt: skip

    def plan_for_the_real_disks(folder: Path, path: str, *args: Any, **kwargs: Any) -> RestorePlan:
        assert (folder, path) == (IMAGE, "/dev/sdc")
        plan = plan_restore(image, target.path, *args, **kwargs)
        return stable(plan, disk.path.rsplit("/", 1)[-1])

    monkeypatch.setattr(rescue.tui.restore, "plan_restore", plan_for_the_real_disks)
    ui = RescueApp(
        disks_source=lambda: [shown_target], smart=health, used=used,
        find_images=lambda: [IMAGE], network=wired, hotplug=False,
    )  # fmt: skip

    async def before(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        await pilot.press("r")
        await settle(pilot)
        pilot.app.screen.query_one("#image", Input).value = str(IMAGE)
        await settle(pilot)
        await pilot.press("ctrl+s")
        for _ in range(200):
            if isinstance(pilot.app.screen, TypedConfirmScreen):
                break
            await pilot.pause(0.05)
        if scrolled:  # the rest of what it says, the typed name still in view
            await pilot.press("pagedown")
        await settle(pilot)
        assert isinstance(pilot.app.screen, TypedConfirmScreen)

    try:
        assert snap_compare(ui, terminal_size=size, run_before=before)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
