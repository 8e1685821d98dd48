"""The UI's workflows driven end to end with Textual's pilot, against real loop disks.

Each test checks the result on disk (the image, the restored filesystem, the
extracted files), not only what the screen says. SMART is answered by a stub:
loop devices have none.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from capabilities import need
from conftest import DiskFactory
from diskbench import LoopDisk, PartSpec, clonezilla_copy, fill_tree, tree_digest, without_links
from textual.pilot import Pilot
from textual.widgets import Checkbox, DataTable, Input, OptionList, Static

from rescue.browse import mounts
from rescue.cli import main
from rescue.errors import CancelledError
from rescue.image import folder as folder_mod
from rescue.image.sealing import is_encrypted
from rescue.operations.verify import verify
from rescue.progress import ProgressReporter
from rescue.tui.app import RescueApp
from rescue.tui.browse import BrowseScreen
from rescue.tui.jobs import JobScreen, TypedConfirmScreen

pytestmark = need("root", "loop")


def make_app(images: list[Path] | None = None) -> RescueApp:
    return RescueApp(hotplug=False, smart=lambda _path: None, find_images=lambda: images or [])


async def wait_for(pilot: Pilot[int], cond: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("the UI did not get there in time")
        await pilot.pause(0.05)


async def finish_job(pilot: Pilot[int], app: RescueApp) -> JobScreen:
    await wait_for(pilot, lambda: isinstance(app.screen, JobScreen))
    screen = app.screen
    assert isinstance(screen, JobScreen)
    await wait_for(pilot, lambda: screen.outcome is not None, timeout=180)
    return screen


def select_disk(app: RescueApp, table_id: str, path: str) -> None:
    table = app.screen.query_one(f"#{table_id}", DataTable)
    keys = [row.value for row in table.rows]
    table.move_cursor(row=keys.index(path))


async def capture_from_home(pilot: Pilot[int], app: RescueApp, disk: str, dest: Path) -> JobScreen:
    """From the disks screen: capture ``disk`` into ``dest``/pc-image; the finished job."""
    select_disk(app, "disks", disk)
    await pilot.press("c")
    await wait_for(pilot, lambda: app.screen.query("#dest"))
    app.screen.query_one("#dest", Input).value = str(dest)
    app.screen.query_one("#name", Input).value = "pc-image"
    await pilot.press("ctrl+s")
    return await finish_job(pilot, app)


async def open_restore(pilot: Pilot[int], app: RescueApp, image: Path) -> None:
    """From the disks screen: the restore screen, with ``image`` typed in."""
    await pilot.press("r")
    await wait_for(pilot, lambda: app.screen.query("#targets"))
    app.screen.query_one("#image", Input).value = str(image)


def run_ui(scenario: Callable[[Pilot[int], RescueApp], Awaitable[None]], app: RescueApp) -> None:
    async def go() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause()
            await scenario(pilot, app)

    asyncio.run(go())


@pytest.fixture
def source(loop_disk_factory: DiskFactory, tmp_path: Path) -> tuple[LoopDisk, dict[str, str]]:
    disk = loop_disk_factory(96, "gpt", [PartSpec(None, "ext4", label="DATA")])
    mnt = tmp_path / "fill"
    disk.mount(0, mnt)
    fill_tree(mnt, seed=11, approx_mib=4)
    digest = tree_digest(mnt)
    disk.umount(mnt)
    return disk, digest


def test_capture_from_the_home_screen(
    source: tuple[LoopDisk, dict[str, str]], tmp_path: Path
) -> None:
    disk, _ = source
    dest = tmp_path / "dest"
    dest.mkdir()

    async def scenario(pilot: Pilot[int], app: RescueApp) -> None:
        job = await capture_from_home(pilot, app, disk.path, dest)
        assert job.outcome == "ok", job.message
        assert "Image complete" in job.message
        await pilot.press("enter")
        await wait_for(pilot, lambda: not isinstance(app.screen, JobScreen))

    run_ui(scenario, make_app())
    image = dest / "pc-image"
    assert (image / "rescue.json").is_file()
    report = verify(image)
    assert report.streams_checked == 1


def test_restore_needs_the_disk_name_typed(
    source: tuple[LoopDisk, dict[str, str]], loop_disk_factory: DiskFactory, tmp_path: Path
) -> None:
    disk, digest = source
    image = tmp_path / "image"
    assert main(["capture", disk.path, str(image)]) == 0
    target = loop_disk_factory(128, None, [])
    name = target.path.rsplit("/", 1)[-1]

    async def scenario(pilot: Pilot[int], app: RescueApp) -> None:
        await open_restore(pilot, app, image)
        select_disk(app, "targets", target.path)
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, TypedConfirmScreen))
        confirm = app.screen
        assert isinstance(confirm, TypedConfirmScreen)
        # the target is named (path and size); the source only as where the image came from
        facts = {section.title: "\n".join(section.lines) for section in confirm.sections}
        (about_target,) = [t for title, t in facts.items() if title.startswith("Target")]
        assert target.path in about_target and "bytes" in about_target
        assert disk.path not in about_target
        assert f"from the disk {disk.path}" in facts["Image written onto it"]
        await pilot.press(*"sda", "enter")  # the wrong name: nothing happens
        await pilot.pause()
        assert isinstance(app.screen, TypedConfirmScreen)
        with open(target.path, "rb") as f:
            assert f.read(1 << 20) == bytes(1 << 20)
        typed = app.screen.query_one("#typed", Input)
        typed.value = ""
        await pilot.press(*name, "enter")
        job = await finish_job(pilot, app)
        assert job.outcome == "ok", job.message

    run_ui(scenario, make_app())
    target.rescan()
    mnt = tmp_path / "check"
    target.mount(0, mnt, "ro")
    assert tree_digest(mnt) == digest


def test_restore_refuses_a_mounted_disk(
    source: tuple[LoopDisk, dict[str, str]], tmp_path: Path
) -> None:
    disk, _ = source
    image = tmp_path / "image"
    assert main(["capture", disk.path, str(image)]) == 0
    disk.mount(0, tmp_path / "busy")

    async def scenario(pilot: Pilot[int], app: RescueApp) -> None:
        await open_restore(pilot, app, image)
        select_disk(app, "targets", disk.path)
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: any("Refused" in str(n.message) for n in app._notifications))
        assert not isinstance(app.screen, TypedConfirmScreen)  # refused before any question

    run_ui(scenario, make_app())


def test_verify_reports_intact_and_damaged_images(
    source: tuple[LoopDisk, dict[str, str]], tmp_path: Path
) -> None:
    disk, _ = source
    image = tmp_path / "image"
    assert main(["capture", disk.path, str(image)]) == 0
    outcomes: list[tuple[str | None, str]] = []

    async def scenario(pilot: Pilot[int], app: RescueApp) -> None:
        for _ in range(2):
            await pilot.press("v")
            await wait_for(pilot, lambda: app.screen.query("#found"))
            # the image found on the drives is offered; choosing it fills the field
            await wait_for(pilot, lambda: app.screen.query_one("#found").option_count == 1)
            app.screen.query_one("#found").focus()
            await pilot.press("down", "enter")
            assert app.screen.query_one("#image", Input).value == str(image)
            await pilot.press("ctrl+s")
            job = await finish_job(pilot, app)
            outcomes.append((job.outcome, job.message))
            await pilot.press("escape")
            await pilot.press("escape")
            (stream,) = image.glob("*-ptcl-img.zst")
            with stream.open("r+b") as f:  # damage it for the second round
                f.seek(stream.stat().st_size // 2)
                f.write(b"\xff" * 64)

    run_ui(scenario, make_app([image]))
    assert outcomes[0][0] == "ok" and "intact" in outcomes[0][1]
    assert outcomes[1][0] == "failed" and outcomes[1][1].startswith("FAILED")


@need("fuse")
def test_browse_and_extract(
    source: tuple[LoopDisk, dict[str, str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    disk, digest = source
    monkeypatch.setenv("RESCUE_RUN_DIR", str(tmp_path / "run"))
    image = tmp_path / "image"
    assert main(["capture", disk.path, str(image)]) == 0
    out = tmp_path / "out"

    async def scenario(pilot: Pilot[int], app: RescueApp) -> None:
        await pilot.press("b")
        await wait_for(pilot, lambda: isinstance(app.screen, BrowseScreen))
        screen = app.screen
        assert isinstance(screen, BrowseScreen)
        screen.query_one("#image", Input).value = str(image)
        screen.query_one("#partition", Input).value = "1"
        await pilot.press("ctrl+o")
        await wait_for(pilot, lambda: screen.session is not None)
        names = [e.name for e in screen.entries]
        assert "docs" in names and "big.dat" in names
        screen.query_one("#files", DataTable).move_cursor(row=names.index("docs"))
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen.cwd == "/docs")
        await pilot.press("backspace")
        await wait_for(pilot, lambda: screen.cwd == "/")
        names = [e.name for e in screen.entries]
        for wanted in ("docs", "big.dat"):
            screen.query_one("#files", DataTable).move_cursor(row=names.index(wanted))
            await pilot.press("space")
        assert screen.marked == {"/docs", "/big.dat"}
        await pilot.press("ctrl+e")
        await wait_for(pilot, lambda: app.screen.query("#folder"))
        await pilot.press(*str(out), "enter")
        job = await finish_job(pilot, app)
        assert job.outcome == "ok", job.message
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.screen is screen)
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, BrowseScreen))

    run_ui(scenario, make_app())
    got = tree_digest(out)
    want = {k: v for k, v in digest.items() if k == "big.dat" or k.startswith("docs")}
    assert without_links(got) == without_links(want)
    assert mounts.records() == []  # leaving the screen took the mount down


def test_cancel_needs_confirmation_and_stops_the_job() -> None:
    """The progress screen itself, with a job that only waits for cancel (no disk needed)."""
    started = threading.Event()

    def job(progress: ProgressReporter, cancel: threading.Event) -> str:
        progress.phase("waiting", 100)
        progress.advance(10)
        started.set()
        while not cancel.wait(0.05):
            pass
        raise CancelledError()

    async def scenario(pilot: Pilot[int], app: RescueApp) -> None:
        screen = JobScreen("Test job", job)
        await app.push_screen(screen)
        await wait_for(pilot, started.is_set)
        await pilot.press("escape")
        await pilot.press("n")  # do not cancel
        await pilot.pause(0.2)
        assert screen.outcome is None
        await pilot.press("escape")
        await pilot.press("y")
        await wait_for(pilot, lambda: screen.outcome is not None)
        assert screen.outcome == "cancelled"

    run_ui(
        scenario,
        RescueApp(disks_source=list, hotplug=False, smart=lambda _p: None, find_images=list),
    )


@need("udev")
def test_home_follows_disks_plugged_in_and_out(loop_disk_factory: DiskFactory) -> None:
    app = RescueApp(smart=lambda _path: None, find_images=list)  # hotplug monitor on

    def rows() -> list[str]:
        table = app.home.query_one("#disks", DataTable)
        return [str(row.value) for row in table.rows]

    async def scenario(pilot: Pilot[int], app: RescueApp) -> None:
        await pilot.pause(0.5)  # the monitor is listening
        disk = loop_disk_factory(32, None, [PartSpec(None, "ext4")])
        await wait_for(pilot, lambda: disk.path in rows(), timeout=20)
        disk.detach()
        await wait_for(pilot, lambda: disk.path not in rows(), timeout=20)

    run_ui(scenario, app)


def test_capture_onto_a_drive_mounted_from_the_capture_screen(
    source: tuple[LoopDisk, dict[str, str]],
    loop_disk_factory: DiskFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The technician brings an external drive: mount it right there, capture onto it."""
    disk, _ = source
    drive = loop_disk_factory(128, "gpt", [PartSpec(None, "ext4", label="USBDRIVE")])
    monkeypatch.setenv("RESCUE_DEST_ROOT", str(tmp_path / "dest-root"))
    where = tmp_path / "dest-root" / drive.parts[0].rsplit("/", 1)[-1]

    async def scenario(pilot: Pilot[int], app: RescueApp) -> None:
        select_disk(app, "disks", disk.path)
        await pilot.press("c")
        await wait_for(pilot, lambda: app.screen.query("#dests"))
        dests = app.screen.query_one("#dests", OptionList)
        ids = [dests.get_option_at_index(i).id for i in range(dests.option_count)]
        assert disk.parts[0] not in ids  # the source is never offered as destination
        dests.highlighted = ids.index(drive.parts[0])
        await pilot.press("f2")
        await wait_for(pilot, lambda: app.screen.query_one("#dest", Input).value == str(where))
        app.screen.query_one("#name", Input).value = "onto-drive"
        await pilot.press("ctrl+s")
        job = await finish_job(pilot, app)
        assert job.outcome == "ok", job.message

    try:
        run_ui(scenario, make_app())
        assert (where / "onto-drive" / "rescue.json").is_file()
        assert verify(where / "onto-drive").streams_checked == 1
    finally:
        subprocess.run(["umount", str(where)], check=False)


def test_capture_screen_resumes_an_interrupted_capture(
    source: tuple[LoopDisk, dict[str, str]], tmp_path: Path
) -> None:
    disk, _ = source
    dest = tmp_path / "dest"
    dest.mkdir()
    image = dest / "pc-image"

    class Interrupt:
        def phase(self, name: str, total: int | None) -> None:
            pass

        def advance(self, done: int) -> None:
            raise KeyboardInterrupt  # as if the power went out mid-capture

        def note(self, message: str) -> None:
            pass

    from rescue.operations.capture import capture  # noqa: PLC0415

    with pytest.raises(KeyboardInterrupt):
        capture(disk.path, image, progress=Interrupt())
    assert not (image / "rescue.json").exists()

    async def scenario(pilot: Pilot[int], app: RescueApp) -> None:
        job = await capture_from_home(pilot, app, disk.path, dest)
        assert job.outcome == "ok", job.message

    run_ui(scenario, make_app())
    assert verify(image).streams_checked == 1


def test_restore_options_reach_the_plan(
    source: tuple[LoopDisk, dict[str, str]], loop_disk_factory: DiskFactory, tmp_path: Path
) -> None:
    """F2 keeps the layout, F3 asks for new identities; the confirmation says so."""
    disk, _ = source
    image = tmp_path / "image"
    assert main(["capture", disk.path, str(image)]) == 0
    target = loop_disk_factory(256, None, [])  # larger: the default grows the last partition
    summaries: list[str] = []

    async def scenario(pilot: Pilot[int], app: RescueApp) -> None:
        await open_restore(pilot, app, image)
        select_disk(app, "targets", target.path)
        for keys in ((), ("f2", "f3")):
            await pilot.press(*keys, "ctrl+s")
            await wait_for(pilot, lambda: isinstance(app.screen, TypedConfirmScreen))
            confirm = app.screen
            assert isinstance(confirm, TypedConfirmScreen)
            summaries.append(confirm.summary)
            await pilot.press("escape")  # nothing is written
            await wait_for(pilot, lambda: not isinstance(app.screen, TypedConfirmScreen))

    run_ui(scenario, make_app())
    assert "grows" in summaries[0] and "new disk GUID" not in summaries[0]
    assert "grows" not in summaries[1] and "new disk GUID" in summaries[1]
    with open(target.path, "rb") as f:
        assert f.read(1 << 20) == bytes(1 << 20)


def test_restore_plans_a_chosen_growing_partition_and_a_fit(
    loop_disk_factory: DiskFactory, tmp_path: Path
) -> None:
    disk = loop_disk_factory(200, "gpt", [PartSpec(60, "ext4"), PartSpec(None, "ext4")])
    image = tmp_path / "image"
    assert main(["capture", disk.path, str(image)]) == 0
    larger = loop_disk_factory(400, None, [])
    smaller = loop_disk_factory(120, None, [])
    summaries: list[str] = []

    async def plan_for(pilot: Pilot[int], app: RescueApp, target: str) -> None:
        select_disk(app, "targets", target)
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, TypedConfirmScreen))
        confirm = app.screen
        assert isinstance(confirm, TypedConfirmScreen)
        summaries.append(confirm.summary)
        await pilot.press("escape")  # not confirmed: nothing written
        await wait_for(pilot, lambda: not isinstance(app.screen, TypedConfirmScreen))

    async def scenario(pilot: Pilot[int], app: RescueApp) -> None:
        await open_restore(pilot, app, image)
        await pilot.press("f4")
        options = app.screen.query_one("#options", Static)
        assert "partition 1 takes" in str(options.render())
        await plan_for(pilot, app, larger.path)
        await pilot.press("f4")  # back to the default: the last partition
        assert "fitted to the disk" in str(options.render())
        await plan_for(pilot, app, smaller.path)

    run_ui(scenario, make_app())
    assert "partition 1 grows to fill the disk; the ones after it move" in summaries[0]
    assert "ext4: grows; 60.0 MiB → " in summaries[0] and "ext4: moves; " in summaries[0]
    assert "shrunk to fit the smaller disk" in summaries[1] and ": shrinks" in summaries[1]
    for target in (larger, smaller):
        with open(target.path, "rb") as f:
            assert f.read(1 << 20) == bytes(1 << 20)


def test_verify_first_starts_on_for_a_clonezilla_image_only(
    source: tuple[LoopDisk, dict[str, str]], loop_disk_factory: DiskFactory, tmp_path: Path
) -> None:
    """The checkbox's default follows the image chosen; the confirmation says what it does."""
    disk, _ = source
    ours = tmp_path / "ours"
    assert main(["capture", disk.path, str(ours)]) == 0
    clonezilla = tmp_path / "clonezilla"
    clonezilla_copy(ours, clonezilla, "zstd")
    target = loop_disk_factory(128, None, [])

    async def scenario(pilot: Pilot[int], app: RescueApp) -> None:
        await open_restore(pilot, app, clonezilla)
        await pilot.pause()
        box = app.screen.query_one("#verify_first", Checkbox)
        assert box.value is True
        assert "ON" in str(box.label)
        select_disk(app, "targets", target.path)
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, TypedConfirmScreen))
        confirm = app.screen
        assert isinstance(confirm, TypedConfirmScreen)
        assert "written by Clonezilla" in confirm.summary
        assert "The whole image is read and checked first" in confirm.summary
        await pilot.press("escape")  # nothing is written
        await wait_for(pilot, lambda: not isinstance(app.screen, TypedConfirmScreen))
        app.screen.query_one("#image", Input).value = str(ours)
        await pilot.pause()
        assert box.value is False
        assert "off" in str(box.label)
        await pilot.press("f5")  # the technician may still ask for it
        assert box.value is True
        app.screen.query_one("#image", Input).value = str(clonezilla)
        await pilot.pause()
        assert box.value is True

    run_ui(scenario, make_app())
    with open(target.path, "rb") as f:
        assert f.read(1 << 20) == bytes(1 << 20)


def test_encrypted_capture_and_its_restore_from_the_screens(
    source: tuple[LoopDisk, dict[str, str]], loop_disk_factory: DiskFactory, tmp_path: Path
) -> None:
    """The capture screen's passphrase fields make an encrypted image; the restore screen's
    image picker asks for the passphrase before it shows what the image holds."""
    disk, digest = source
    dest = tmp_path / "dest"
    dest.mkdir()
    target = loop_disk_factory(128, None, [])
    name = target.path.rsplit("/", 1)[-1]
    phrase = "blue kettle 42"

    async def capture(pilot: Pilot[int], app: RescueApp) -> None:
        select_disk(app, "disks", disk.path)
        await pilot.press("c")
        await wait_for(pilot, lambda: app.screen.query("#dest"))
        app.screen.query_one("#dest", Input).value = str(dest)
        app.screen.query_one("#name", Input).value = "sealed"
        app.screen.query_one("#pass1", Input).value = phrase
        app.screen.query_one("#pass2", Input).value = phrase + "x"
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert not isinstance(app.screen, JobScreen)  # the two differ: nothing starts
        assert not (dest / "sealed").exists()
        app.screen.query_one("#pass2", Input).value = phrase
        await pilot.press("ctrl+s")
        job = await finish_job(pilot, app)
        assert job.outcome == "ok", job.message
        assert "Encrypted" in job.message

    run_ui(capture, make_app())
    image = dest / "sealed"
    assert is_encrypted(image)
    assert phrase.encode() not in b"".join(p.read_bytes() for p in image.iterdir())
    folder_mod._SEALED.clear()  # as a new session finds it: locked

    async def restore(pilot: Pilot[int], app: RescueApp) -> None:
        await open_restore(pilot, app, image)
        await pilot.pause()
        key = app.screen.query_one("#image-key", Input)
        assert key.display
        about = app.screen.query_one("#about", Static)
        assert "encrypted image" in str(about.render())
        key.focus()
        await pilot.press(*"wrong", "enter")
        await wait_for(pilot, lambda: "does not open" in str(about.render()))
        await pilot.press(*phrase, "enter")
        await wait_for(pilot, lambda: "DATA" in str(about.render()))
        assert not key.display
        select_disk(app, "targets", target.path)
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, TypedConfirmScreen))
        await pilot.press(*name, "enter")
        job = await finish_job(pilot, app)
        assert job.outcome == "ok", job.message

    run_ui(restore, make_app())
    folder_mod._SEALED.clear()
    target.rescan()
    mnt = tmp_path / "check"
    target.mount(0, mnt, "ro")
    assert tree_digest(mnt) == digest


def test_capture_screen_offers_the_last_image_of_the_disk_as_base(
    source: tuple[LoopDisk, dict[str, str]], tmp_path: Path
) -> None:
    disk, _ = source
    dest = tmp_path / "dest"
    assert main(["capture", disk.path, str(dest / "monday")]) == 0
    mnt = disk.mount(0, tmp_path / "fill")
    (mnt / "added.bin").write_bytes(bytes(range(256)) * 8192)  # 2 MiB where nothing was
    disk.umount(mnt)

    async def capture(
        pilot: Pilot[int], app: RescueApp, name: str, incremental: bool, base: str, new: str
    ) -> str:
        select_disk(app, "disks", disk.path)
        await pilot.press("c")
        await wait_for(pilot, lambda: app.screen.query("#dest"))
        app.screen.query_one("#dest", Input).value = str(dest)
        app.screen.query_one("#name", Input).value = name
        await wait_for(pilot, lambda: bool(app.screen.query("#incremental")))

        def offer() -> str:
            return " ".join(str(label.render()) for label in app.screen.query("#base Label"))

        await wait_for(pilot, lambda: "of used data" in offer())  # once the maps are read
        said = f"A full image copies .+ of used data; this one what changed: at least {new} is new"
        box = app.screen.query_one("#incremental", Checkbox)
        assert re.search(said, offer()), (offer(), str(box.label), sorted(os.listdir(dest)))
        assert box.value and f"since {base}" in str(box.label)
        box.value = incremental
        await pilot.press("ctrl+s")
        job = await finish_job(pilot, app)
        assert job.outcome == "ok", job.message
        await pilot.press("enter")
        await wait_for(pilot, lambda: not isinstance(app.screen, JobScreen))
        return job.message

    async def scenario(pilot: Pilot[int], app: RescueApp) -> None:
        # "at least": the 2 MiB file's blocks counted where monday held no used data (ext4
        # may put some of them in a region monday's data already touched: 1.9 MiB was seen)
        message = await capture(pilot, app, "tuesday", True, "monday", r"[12]\.\d MiB")
        assert "Incremental on monday" in message, message
        await pilot.press("escape")  # back to the disks
        await wait_for(pilot, lambda: bool(app.screen.query("#disks")))
        # the newest image is offered; unticked, the capture is a full image, as before
        await capture(pilot, app, "full", False, "tuesday", "0 B")

    run_ui(scenario, make_app())
    tuesday = json.loads((dest / "tuesday" / "rescue.json").read_text())
    assert tuesday["base"]["name"] == "monday"
    assert json.loads((dest / "full" / "rescue.json").read_text())["base"] is None
    assert verify(dest / "tuesday").streams_checked == 2
