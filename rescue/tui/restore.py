"""Restore and verify: choose an image (typed, or found on the mounted drives), then act."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import Checkbox, DataTable, Footer, Header, Label, Static

from rescue.devices import Disk
from rescue.errors import RescueError
from rescue.image.view import open_image
from rescue.operations.plan_text import (
    default_verify_first,
    describe_plan,
    restore_checked,
)
from rescue.operations.restore import RestorePlan, plan_restore
from rescue.operations.verify import verify
from rescue.progress import ProgressReporter
from rescue.text import shown, shown_message
from rescue.tui.jobs import JobScreen, TypedConfirmScreen
from rescue.tui.services import Services
from rescue.tui.text import plain
from rescue.tui.widgets import ImagePicker
from rescue.units import human_size


def verify_label(on: bool) -> str:
    """The checkbox says its state in words: the Linux console shows no colour difference."""
    state = "ON" if on else "off"
    return f"Verify the whole image first (F5): {state}. If damaged, nothing is written."


class RestoreScreen(Screen[None]):
    """Image, target disk, a typed confirmation naming the disk, then the job.

    "Verify the whole image first" starts on for an image rescue did not write
    (Clonezilla's) and off for rescue's own; the technician may change it.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+s", "start", "Restore..."),
        Binding("f2", "toggle_keep", "Keep layout"),
        Binding("f3", "toggle_new_ids", "New IDs"),
        Binding("f4", "next_grow", "Grows"),
        Binding("f5", "toggle_verify", "Verify first", show=False),  # the box names F5
        Binding("f6", "share", "Share", show=False),  # the image picker's label names F6
        Binding("escape", "app.pop_screen", "Back"),
    ]
    DEFAULT_CSS = """
    RestoreScreen > Vertical { padding: 0 1; }
    RestoreScreen #targets { height: auto; max-height: 8; }
    RestoreScreen #options { padding: 0 1; color: $text-muted; }
    RestoreScreen #verify_first { border: none; padding: 0 1; height: 1; }
    """

    def __init__(self, services: Services) -> None:
        super().__init__()
        self.services = services
        self.disks: list[Disk] = []
        self.keep_layout = False
        self.new_ids = False
        self.grow: int | None = None
        """The partition that takes a larger disk's room (None: the last)."""

    def compose(self) -> ComposeResult:
        yield Header(icon="*")
        with Vertical():
            yield ImagePicker(self.services.find_images)
            yield Label("Target disk (Up/Down), everything on it is replaced:")
            yield DataTable(id="targets", cursor_type="row")
        yield Checkbox(verify_label(False), value=False, id="verify_first")
        yield Static("", id="options")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#targets", DataTable)
        table.add_columns("device", "size", "model / file", "serial", "flags")
        self.disks = self.services.list_disks()
        self._show_options()
        for d in self.disks:
            table.add_row(  # names from the disk: text, never markup or control codes
                Text(shown(d.path)),
                human_size(d.size),
                Text(shown(d.model or d.backing_file or "")),
                Text(shown(d.serial or "")),
                ", ".join(d.flags) or "-",
                key=d.path,
            )

    def _show_options(self) -> None:
        if self.keep_layout:
            layout = "kept as in the image"
        elif self.grow is not None:
            layout = f"partition {self.grow} takes a larger disk's room (the ones after it move)"
        else:
            layout = "fitted to the disk (last partition grows, or partitions shrink)"
        ids = "new GUIDs and UUIDs (a clone)" if self.new_ids else "kept"
        self.query_one("#options", Static).update(f"Layout: {layout}. Identities: {ids}.")

    def on_image_picker_changed(self, event: ImagePicker.Changed) -> None:
        """A new image: its own default for verifying first (on for one rescue did not write)."""
        if event.image is not None:
            self.query_one("#verify_first", Checkbox).value = default_verify_first(event.image)

    def on_checkbox_changed(self, event: Checkbox.Changed) -> None:
        if event.checkbox.id == "verify_first":
            event.checkbox.label = verify_label(event.value)

    @property
    def verify_first(self) -> bool:
        return self.query_one("#verify_first", Checkbox).value

    def action_toggle_verify(self) -> None:
        self.query_one("#verify_first", Checkbox).toggle()

    def action_toggle_keep(self) -> None:
        self.keep_layout = not self.keep_layout
        self._show_options()

    def action_next_grow(self) -> None:
        """Cycle through the image's partitions as the one that grows (then back to the last)."""
        folder = self.query_one(ImagePicker).value
        try:
            image = open_image(folder) if folder is not None else None
        except RescueError as exc:
            self.notify(shown(exc), severity="warning", markup=False)
            return
        numbers = sorted(p.number for p in image.parts if p.number is not None) if image else []
        if not numbers:
            self.notify("Choose a whole-disk image first.", severity="warning")
            return
        later = [n for n in numbers if self.grow is None or n > self.grow]
        self.grow = later[0] if later and later[0] != numbers[-1] else None
        self.keep_layout = False
        self._show_options()

    def action_toggle_new_ids(self) -> None:
        self.new_ids = not self.new_ids
        self._show_options()

    def action_share(self) -> None:
        self.query_one(ImagePicker).open_share()

    def action_start(self) -> None:
        image = self.query_one(ImagePicker).value
        table = self.query_one("#targets", DataTable)
        if image is None or not self.disks:
            self.notify("Choose an image and a target disk.", severity="warning")
            return
        target = self.disks[table.cursor_row].path
        layout = "keep" if self.keep_layout else "auto"
        new_ids, grow = self.new_ids, None if self.keep_layout else self.grow
        # planning reads the image (how small each filesystem can get): not on the UI thread
        self.query_one("#options", Static).update(
            plain(f"Checking {image} against {target}...")
        )  # until the plan is ready (or refused): then the options again
        self.run_worker(
            lambda: self._plan(image, target, layout, new_ids, grow),
            thread=True, exclusive=True, group="plan",
        )  # fmt: skip

    def _plan(self, image: Path, target: str, layout: str, new_ids: bool, grow: int | None) -> None:
        """Runs in a worker thread; hands the plan (or the refusal) back to the UI."""
        try:
            plan = plan_restore(image, target, layout, new_ids=new_ids, grow=grow)
        except RescueError as exc:
            self.app.call_from_thread(self._show_options)
            self.app.call_from_thread(
                self.notify,
                f"Refused: {shown_message(str(exc))}",
                severity="error",
                timeout=15,
                markup=False,
            )
            return
        self.app.call_from_thread(self._ask, plan)

    def _ask(self, plan: RestorePlan) -> None:
        self._show_options()
        name = plan.target.path.rsplit("/", 1)[-1]
        verify_first = self.verify_first

        def confirmed(ok: bool | None) -> None:
            if ok:
                self._run(plan, verify_first)
            else:
                self.notify("Not confirmed: nothing was written.")

        facts = describe_plan(plan, verify_first=verify_first)
        self.app.push_screen(TypedConfirmScreen(facts, name), confirmed)

    def _run(self, plan: RestorePlan, verify_first: bool) -> None:
        def job(progress: ProgressReporter, cancel: threading.Event) -> str:
            restore_checked(
                plan, confirmed=True, verify_first=verify_first, progress=progress, cancel=cancel
            )
            return f"Restore complete: {plan.image.folder} -> {plan.target.path}."

        self.app.push_screen(JobScreen(f"Restore -> {plan.target.path}", job))


class VerifyScreen(Screen[None]):
    """Read a whole image and check every checksum."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+s", "start", "Verify"),
        Binding("f6", "share", "Share"),
        Binding("escape", "app.pop_screen", "Back"),
    ]
    DEFAULT_CSS = "VerifyScreen > Vertical { padding: 0 1; }"

    def __init__(self, services: Services) -> None:
        super().__init__()
        self.services = services

    def compose(self) -> ComposeResult:
        yield Header(icon="*")
        with Vertical():
            yield ImagePicker(self.services.find_images)
        yield Footer()

    def action_share(self) -> None:
        self.query_one(ImagePicker).open_share()

    def action_start(self) -> None:
        image = self.query_one(ImagePicker).value
        if image is None:
            self.notify("Choose an image.", severity="warning")
            return

        def job(progress: ProgressReporter, cancel: threading.Event) -> str:
            report = verify(image, progress=progress, cancel=cancel)
            for note in report.notes:
                progress.note(note)
            return (
                f"Image intact: {report.files_checked} file(s) hashed, "
                f"{report.streams_checked} stream(s) decoded."
            )

        self.app.push_screen(JobScreen(f"Verify {image}", job))
