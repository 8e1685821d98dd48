"""Unattended jobs in the UI, driven with Textual's pilot against real loop disks.

The job drive is a loop disk with an ext4 filesystem labelled RESCUE holding a real
image; the target disks are loop disks given serials through a udev rule. Rules
never pick loop devices on a rescue system, so the tests set the rule matcher's
test hook. Powering the machine off is the one thing not done for real here (it
would stop the test machine): the app's ``after_job`` records what it was asked to
do; scripts/boot-test powers a QEMU guest off for real.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from capabilities import need
from conftest import DiskFactory
from diskbench import LoopDisk, disk_digest
from job_fixtures import (
    Serials,
    file_hashes,
    image_on,
    logs_on,
    mounted_sources,
    tag,
    write_on,
)
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, OptionList

from rescue.devices import Disk, list_disks
from rescue.operations.job_finding import every_job
from rescue.operations.job_rules import ALLOW_LOOP_ENV
from rescue.tui.app import RescueApp
from rescue.tui.home import HomeScreen
from rescue.tui.jobs import JobScreen, TypedConfirmScreen
from rescue.tui.unattended import JobListScreen, UnattendedScreen

pytest_plugins = ("job_fixtures",)  # the fixtures serials, source, job_drive, target

pytestmark = [need("root", "loop", "partclone")]


@pytest.fixture(autouse=True)
def loop_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ALLOW_LOOP_ENV, "1")
    monkeypatch.setattr(UnattendedScreen, "COUNTDOWN", 2)


def app_for(disks: list[LoopDisk], cmdline: str, asked: list[str]) -> RescueApp:
    """The console's app with these loop disks only, a kernel command line, and
    ``after`` recorded in ``asked``."""
    paths = {d.path for d in disks}

    def lister() -> list[Disk]:
        return [d for d in list_disks() if d.path in paths]

    return RescueApp(
        lister, hotplug=False, smart=lambda _p: None, find_images=list,
        find_jobs=lambda: every_job(lister(), cmdline), after_job=asked.append,
        startup_jobs=True,
    )  # fmt: skip


async def until(pilot: Pilot[int], cond: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            shown = [type(s).__name__ for s in pilot.app.screen_stack]
            jobs = [s.text for s in pilot.app.screen_stack if isinstance(s, UnattendedScreen)]
            raise AssertionError(f"the UI did not get there in time: {shown} {jobs}")
        await pilot.pause(0.05)


def run_ui(app: RescueApp, scenario: Callable[[Pilot[int]], Awaitable[None]]) -> None:
    async def go() -> None:
        async with app.run_test(size=(120, 45)) as pilot:
            await pilot.pause()
            await scenario(pilot)

    asyncio.run(go())


def job_screen(app: RescueApp) -> UnattendedScreen:
    for screen in app.screen_stack:
        if isinstance(screen, UnattendedScreen):
            return screen
    raise AssertionError("no job screen")


def has_job_screen(app: RescueApp) -> bool:
    return any(isinstance(s, UnattendedScreen) for s in app.screen_stack)


def restore_job(target_rule: str, after: str) -> str:
    return f'action = "restore"\nimage = "images/pc"\ntarget = "{target_rule}"\nafter = "{after}"\n'


def test_a_job_on_the_kernel_command_line_counts_down_runs_and_powers_off(
    source: LoopDisk,
    job_drive: LoopDisk,
    target: LoopDisk,
    serials: Serials,
    tmp_path: Path,
) -> None:
    serials(target, f"{tag()}-T")
    image_on(job_drive, source, tmp_path, "images/pc")
    write_on(job_drive, tmp_path, {"jobs/lab.toml": restore_job(f"serial:{tag()}-T", "poweroff")})
    asked: list[str] = []
    app = app_for([source, job_drive, target], "quiet rescue.job=RESCUE:/jobs/lab.toml", asked)
    seen: dict[str, str] = {}

    async def scenario(pilot: Pilot[int]) -> None:
        await until(pilot, lambda: has_job_screen(app) and job_screen(app).state == "counting")
        screen = job_screen(app)
        seen["counting"] = screen.text
        assert job_drive.parts[0] in mounted_sources()  # the job's drive, for its log
        await until(pilot, lambda: isinstance(app.screen, JobScreen), timeout=10)  # no key
        await until(pilot, lambda: screen.state == "after", timeout=300)
        seen["after"] = screen.text
        await until(pilot, lambda: bool(asked), timeout=10)
        seen["done"] = screen.text

    run_ui(app, scenario)
    assert "Job RESCUE:/jobs/lab.toml (OVERWRITES " + target.path in seen["counting"]
    assert "starts in 2 s" in seen["counting"] or "starts in 1 s" in seen["counting"]
    assert f"serial {tag()}-T" in seen["counting"]  # the disk named as the technician knows it
    assert "picked by the rule" in seen["counting"] and "Esc: stop" in seen["counting"]
    assert "Powering off in" in seen["after"] and "now unmounted" in seen["after"]
    assert asked == ["poweroff"]
    assert job_drive.parts[0] not in mounted_sources()  # unmounted before the power-off
    target.rescan()
    want = file_hashes(source.mount(0, tmp_path / "a", "ro"))
    assert len(want) > 20 and file_hashes(target.mount(0, tmp_path / "b", "ro")) == want
    (log,) = logs_on(job_drive, tmp_path, "images")
    assert "job RESCUE:/jobs/lab.toml" in log and "result: ok: restored /images/pc" in log


def test_a_rule_matching_two_disks_stops_and_asks(
    source: LoopDisk,
    job_drive: LoopDisk,
    loop_disk_factory: DiskFactory,
    serials: Serials,
    tmp_path: Path,
) -> None:
    a = loop_disk_factory(112, None, [])
    b = loop_disk_factory(112, None, [])
    serials(a, f"{tag()}-A")
    serials(b, f"{tag()}-B")
    image_on(job_drive, source, tmp_path, "images/pc")
    write_on(job_drive, tmp_path, {"rescue-job.toml": restore_job("size:112MiB", "shell")})
    blank = disk_digest(a.path)
    asked: list[str] = []
    app = app_for([source, job_drive, a, b], "quiet", asked)  # found by the RESCUE label
    seen: dict[str, str] = {}

    async def scenario(pilot: Pilot[int]) -> None:
        await until(pilot, lambda: has_job_screen(app) and job_screen(app).state == "ask")
        screen = job_screen(app)
        seen["ask"] = screen.text
        assert [d.path for d in screen.candidates] == [a.path, b.path]
        await pilot.pause(3)  # longer than the countdown: nothing starts by itself
        assert screen.state == "ask" and not isinstance(app.screen, JobScreen)
        # the technician picks disk B: now it is a restore started by hand
        screen.query_one("#candidates", DataTable).move_cursor(row=1)
        await pilot.press("enter")
        await until(pilot, lambda: screen.state == "ready")
        seen["ready"] = screen.text
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, TypedConfirmScreen))
        confirm = app.screen
        assert isinstance(confirm, TypedConfirmScreen)
        seen["confirm"] = confirm.summary
        confirm.query_one("#typed", Input).value = b.path.rsplit("/", 1)[-1]
        await pilot.press("enter")
        await until(pilot, lambda: screen.state == "done", timeout=300)
        seen["done"] = screen.text
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, HomeScreen))

    run_ui(app, scenario)
    assert "its rule matches 2 disks, and a job never guesses" in seen["ask"]
    assert f"serial {tag()}-A" in seen["ask"] and f"serial {tag()}-B" in seen["ask"]
    assert "use the disk chosen here" in seen["ask"]
    assert f"{b.path}" in seen["ready"] and "chosen by the technician" in seen["ready"]
    assert f"serial {tag()}-B" in seen["confirm"]
    assert "done" in seen["done"] and "Log: /images/rescue-job-" in seen["done"]
    assert asked == []  # after = "shell": nothing more
    assert disk_digest(a.path) == blank  # the disk not chosen is untouched
    b.rescan()
    want = file_hashes(source.mount(0, tmp_path / "a", "ro"))
    assert file_hashes(b.mount(0, tmp_path / "b", "ro")) == want
    (log,) = logs_on(job_drive, tmp_path, "images")
    assert "chosen by the technician (the rule 'size:112MiB' did not pick one)" in log


def test_esc_stops_the_countdown_and_the_job_list_starts_it_by_hand(
    source: LoopDisk,
    job_drive: LoopDisk,
    tmp_path: Path,
) -> None:
    image_on(job_drive, source, tmp_path, "images/pc")
    write_on(job_drive, tmp_path, {"rescue-job.toml": 'action = "verify"\nimage = "images/pc"\n'
                                   'after = "reboot"\n'})  # fmt: skip
    asked: list[str] = []
    app = app_for([source, job_drive], "quiet", asked)
    seen: dict[str, str] = {}

    async def scenario(pilot: Pilot[int]) -> None:
        await until(pilot, lambda: has_job_screen(app) and job_screen(app).state == "counting")
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, HomeScreen))
        await pilot.pause(3)  # past the countdown: it stays stopped
        assert not isinstance(app.screen, JobScreen)
        await until(pilot, lambda: job_drive.parts[0] not in mounted_sources(), timeout=10)
        seen["stopped"] = "yes"
        await pilot.press("j")
        await until(pilot, lambda: isinstance(app.screen, JobListScreen))
        jobs = app.screen.query_one("#jobs", OptionList)
        await until(pilot, lambda: jobs.option_count == 1)
        seen["listed"] = str(jobs.get_option_at_index(0).prompt)
        await pilot.press("enter")
        await until(pilot, lambda: has_job_screen(app) and job_screen(app).state == "ready")
        screen = job_screen(app)
        await pilot.pause(3)  # started by hand: no countdown
        assert screen.state == "ready"
        await pilot.press("enter")
        await until(pilot, lambda: screen.state == "after", timeout=300)
        seen["after"] = screen.text
        await pilot.press("escape")  # stay: no restart
        await until(pilot, lambda: screen.state == "done")
        seen["done"] = screen.text
        await pilot.pause(3)

    run_ui(app, scenario)
    assert seen["stopped"] == "yes"
    assert "RESCUE:/rescue-job.toml on " + job_drive.parts[0] in seen["listed"]
    assert "verify images/pc then reboot" in seen["listed"]
    assert "Restarting in" in seen["after"] and "is intact" in seen["after"]
    assert "Not carried out: reboot" in seen["done"]
    assert asked == []
    (log,) = logs_on(job_drive, tmp_path, "images")  # one log: the job ran once
    assert "result: ok" in log
