"""The Textual application: the technician's console.

Screens: home (disks), capture, restore, verify, browse, unattended jobs, and
the progress screen every long job runs on. At start on the console, a job found
on the drives or the kernel command line is shown and counted down
(:mod:`rescue.tui.unattended`). No disk logic lives here: the screens call the
same core as the command line, long work runs in thread workers.

This is the one module that knows every screen. A screen asks for another by
posting a message (:mod:`rescue.tui.messages`); it bubbles up to the app,
which pushes the screen that serves it. What the screens ask of the system
comes in one :class:`~rescue.tui.services.Services`, filled here.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, ClassVar

from textual import on
from textual.app import App
from textual.binding import Binding, BindingType

from rescue.devices import list_disks
from rescue.devices.network import interfaces
from rescue.devices.smart import smart_summary
from rescue.errors import RescueError
from rescue.tui.home import HomeScreen
from rescue.tui.messages import (
    BrowseRequested,
    CaptureRequested,
    JobsRequested,
    RestoreRequested,
    VerifyRequested,
)
from rescue.tui.services import (
    AfterJob,
    DiskLister,
    ImageFinder,
    JobFinder,
    NetworkReader,
    Services,
    SmartReader,
    UsedReader,
    carry_out,
    every_job,
    find_images_on_drives,
    jobs_at_start,
    used_bytes,
)

if TYPE_CHECKING:
    from rescue.operations.job_finding import FoundJob

# The screens other than home are imported when first asked for (see services.py).


class RescueApp(App[int]):
    """Home first; every workflow is a screen pushed over it."""

    TITLE = "rescue: disk imaging and recovery"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+l", "redraw", "Redraw the screen", show=False)
    ]
    REDRAW_EVERY = 15.0
    """Seconds between full redraws: whatever wrote over the console is gone by then."""
    SUB_TITLE = ""  # Textual joins title and subtitle with a dash the Linux console lacks

    def __init__(
        self,
        disks_source: DiskLister | None = None,
        *,
        smart: SmartReader | None = None,
        used: UsedReader | None = None,
        find_images: ImageFinder | None = None,
        network: NetworkReader | None = None,
        hotplug: bool = True,
        find_jobs: JobFinder | None = None,
        after_job: AfterJob | None = None,
        startup_jobs: bool = False,
    ) -> None:
        super().__init__()
        lister = disks_source or list_disks
        self.services = Services(
            list_disks=lister,
            smart=smart or smart_summary,
            used=used or used_bytes,
            find_images=find_images or find_images_on_drives,
            network=network or interfaces,
            find_jobs=find_jobs or (lambda: every_job(lister)),
            carry_out=after_job or carry_out,
        )
        self._jobs_at_start = find_jobs or (lambda: jobs_at_start(lister))
        """The jobs at start (boot): the drive the kernel command line's job names is waited for."""
        self._hotplug = hotplug
        self._startup_jobs = startup_jobs
        """Look for jobs at start and show the one found, counting down (the rescue system's
        console); off for a UI started only to look around, and in tests that want none."""
        self._stop = threading.Event()
        self.home = HomeScreen(self.services)

    def on_mount(self) -> None:
        self.push_screen(self.home)
        self.set_interval(self.REDRAW_EVERY, self.action_redraw)
        if self._hotplug:
            self.run_worker(self._watch, thread=True, group="hotplug")
        self.call_after_refresh(self._after_first_paint)

    def _after_first_paint(self) -> None:
        """Once the home screen is on the screen: the jobs are looked for, and the other
        screens' modules are read in the background, so the first key opens its screen
        without waiting for them."""
        if self._startup_jobs:
            self.run_worker(self._look_for_jobs, thread=True, group="jobs", exit_on_error=False)
        self.run_worker(_import_screens, thread=True, group="imports", exit_on_error=False)

    def _look_for_jobs(self) -> None:
        from rescue.tui.unattended import pick_startup_job  # noqa: PLC0415

        try:
            found = self._jobs_at_start()
        except RescueError as exc:  # a bad rescue.job= option: said, and the UI goes on
            self.call_from_thread(self.notify, f"No job run: {exc}", severity="error",
                                  timeout=30, markup=False)  # fmt: skip
            return
        self.call_from_thread(self._start_job, pick_startup_job(found))

    def _start_job(self, picked: FoundJob | list[FoundJob] | None) -> None:
        from rescue.tui.unattended import JobListScreen, UnattendedScreen  # noqa: PLC0415

        if isinstance(picked, list):
            self.push_screen(JobListScreen(self.services, picked))
        elif picked is not None:
            self.push_screen(UnattendedScreen(picked.ref, self.services))

    def action_redraw(self) -> None:
        """Draw every cell of the screen again, not only what changed: the kernel or a
        service may have written over the console (ctrl+l, and every few seconds)."""
        self.screen.refresh(self.screen.region)

    @on(CaptureRequested)
    def _capture(self, message: CaptureRequested) -> None:
        from rescue.tui.capture import CaptureScreen  # noqa: PLC0415

        self.push_screen(CaptureScreen(message.disk, self.services))

    @on(RestoreRequested)
    def _restore(self) -> None:
        from rescue.tui.restore import RestoreScreen  # noqa: PLC0415

        self.push_screen(RestoreScreen(self.services))

    @on(VerifyRequested)
    def _verify(self) -> None:
        from rescue.tui.restore import VerifyScreen  # noqa: PLC0415

        self.push_screen(VerifyScreen(self.services))

    @on(BrowseRequested)
    def _browse(self) -> None:
        from rescue.tui.browse import BrowseScreen  # noqa: PLC0415

        self.push_screen(BrowseScreen(self.services))

    @on(JobsRequested)
    def _jobs(self) -> None:
        from rescue.tui.unattended import JobListScreen  # noqa: PLC0415

        self.push_screen(JobListScreen(self.services))

    def _watch(self) -> None:
        """Follow disks plugged in and out; the home screen is re-read on each change."""
        from rescue.devices.monitor import watch_disks  # noqa: PLC0415

        try:
            for event in watch_disks(self._stop):
                self.call_from_thread(self.home.action_refresh)
                self.call_from_thread(self.notify, f"{event.path} {event.action}", timeout=4)
        except Exception as exc:  # noqa: BLE001  (no live updates, but the UI goes on)
            self.call_from_thread(
                self.notify, f"No live disk updates: {exc}. Press F5 to refresh.", timeout=8
            )

    def on_unmount(self) -> None:
        self._stop.set()


def _import_screens() -> None:
    import rescue.tui.browse  # noqa: PLC0415
    import rescue.tui.capture  # noqa: PLC0415
    import rescue.tui.restore  # noqa: PLC0415
    import rescue.tui.unattended  # noqa: F401, PLC0415


def run_app() -> int:
    app = RescueApp(startup_jobs=True)
    try:
        result = app.run()
    finally:
        app._stop.set()
        from rescue.tui.share import unmount_all  # noqa: PLC0415

        for problem in unmount_all():  # the network shares the screens mounted
            print(f"rescue: could not unmount {problem}")
    return result or 0
