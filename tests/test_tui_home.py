"""The home screen lists real disks and quits on q."""

from __future__ import annotations

import asyncio

from capabilities import need
from conftest import DiskFactory
from diskbench import PartSpec
from textual.widgets import DataTable, Static

from rescue.devices.model import Disk
from rescue.tui.app import RescueApp


@need("root", "loop")
def test_home_lists_a_loop_disk_and_quits(loop_disk_factory: DiskFactory) -> None:
    disk = loop_disk_factory(64, "gpt", [PartSpec(None, "ext4")])

    async def scenario() -> None:
        app = RescueApp(hotplug=False, smart=lambda _p: None)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause()
            table = app.screen.query_one("#disks", DataTable)
            paths = [str(table.get_row_at(i)[0]) for i in range(table.row_count)]
            assert disk.path in paths
            assert len(table.get_row(disk.path)) == len(table.columns)  # every column filled
            table.move_cursor(row=paths.index(disk.path))
            await pilot.pause(0.3)
            await app.workers.wait_for_complete()
            await pilot.pause()
            detail = str(app.screen.query_one("#detail", Static).render())
            assert "ext4" in detail and "used" in detail
            await pilot.press("q")
        assert app.return_code == 0

    asyncio.run(scenario())


def test_refresh_shows_new_disks() -> None:
    """The list is read again on r (a fake list: this test is about the key, not udev)."""
    calls: list[int] = []

    def fake() -> list[Disk]:
        calls.append(1)
        return []

    async def scenario() -> None:
        app = RescueApp(disks_source=fake, hotplug=False)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("f5")
            await pilot.pause()
            await pilot.press("q")

    asyncio.run(scenario())
    assert len(calls) == 2


def test_rescue_without_arguments_starts_the_ui_and_q_quits() -> None:
    """The real entry point on a real pseudo-terminal, as on the console."""
    import os  # noqa: PLC0415
    import pty  # noqa: PLC0415
    import select  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415
    import time  # noqa: PLC0415

    main_fd, child_fd = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "80", "LINES": "24"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rescue"],
        stdin=child_fd, stdout=child_fd, stderr=child_fd, env=env, close_fds=True,
    )  # fmt: skip
    os.close(child_fd)
    seen = b""
    try:
        deadline = time.monotonic() + 30
        while b"Capture" not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([main_fd], [], [], 0.5)
            if ready:
                seen += os.read(main_fd, 65536)
        assert b"Capture" in seen, seen[-500:]
        os.write(main_fd, b"q")
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(main_fd)


def test_redraw_paints_every_cell_again() -> None:
    """Text written over the console is painted over: ctrl+l (and a timer) redraw the whole
    screen, where Textual otherwise sends only the cells that changed."""
    sizes: list[int] = []

    async def scenario() -> None:
        app = RescueApp(list, hotplug=False, smart=lambda _p: None)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            real = app._display

            def display(screen: object, renderable: object) -> None:
                console = app.console
                with console.capture() as cap:
                    if renderable is not None:
                        console.print(renderable, end="")
                sizes.append(cap.get().count("\x1b[") if renderable is not None else 0)
                real(screen, renderable)  # type: ignore[arg-type]

            app._display = display  # type: ignore[method-assign]
            await pilot.pause(0.3)
            idle = sum(sizes)
            await pilot.press("ctrl+l")
            await pilot.pause(0.3)
            await pilot.press("q")
        assert sum(sizes) > idle + 24  # a cursor move to each of the 24 lines at least

    asyncio.run(scenario())
