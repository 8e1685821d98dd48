"""Browse an image read-only and copy chosen files and folders out of it."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Footer, Header, Input, Label, Static

from rescue.browse.extract import describe_failures
from rescue.browse.paths import Entry
from rescue.browse.session import BrowseSession
from rescue.containers.keys import Secret, SecretKind
from rescue.errors import RescueError
from rescue.progress import ProgressReporter
from rescue.text import shown, shown_message
from rescue.tui.jobs import JobScreen
from rescue.tui.services import Services
from rescue.tui.text import plain
from rescue.tui.widgets import ImagePicker
from rescue.units import human_size


class AskFolder(ModalScreen[Path | None]):
    """Where extracted files go."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]
    DEFAULT_CSS = """
    AskFolder { align: center middle; }
    AskFolder > Vertical { width: 70; height: auto; border: thick $accent; padding: 1 2;
                           background: $surface; }
    """

    def __init__(self, question: str) -> None:
        super().__init__()
        self._question = question

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(plain(self._question))
            yield Input(placeholder="/mnt/usb/recovered", id="folder")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        self.dismiss(Path(text) if text else None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class BrowseScreen(Screen[None]):
    """Open an image's partition, walk its folders, mark entries, extract them."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+o", "open", "Open image"),
        Binding("space", "mark", "Mark"),
        Binding("backspace", "up", "Up"),
        Binding("ctrl+e", "extract", "Extract marked"),
        Binding("f6", "share", "Share"),
        Binding("escape", "leave", "Back"),
    ]
    DEFAULT_CSS = """
    BrowseScreen > Vertical { padding: 0 1; height: auto; }
    BrowseScreen #files { height: 1fr; }
    BrowseScreen #where { padding: 0 1; text-style: bold; }
    """

    def __init__(self, services: Services) -> None:
        super().__init__()
        self.services = services
        self.session: BrowseSession | None = None
        self.cwd = "/"
        self.entries: list[Entry] = []
        self.marked: set[str] = set()

    def compose(self) -> ComposeResult:
        yield Header(icon="*")
        with Vertical(id="chooser"):
            yield ImagePicker(self.services.find_images)
            yield Label("Partition number (empty when the image holds one filesystem):")
            yield Input(placeholder="2", id="partition")
            yield Label("Encrypted partition: its passphrase or recovery password (hidden); "
                        "LVM: the volume as VG/LV")  # fmt: skip
            yield Input(password=True, placeholder="key (empty when not encrypted)", id="key")
            yield Input(placeholder="VG/LV (empty when there is one)", id="volume")
        yield Static("", id="where")
        yield DataTable(id="files", cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#files", DataTable).add_columns("", "name", "kind", "size", "modified")

    def on_unmount(self) -> None:
        self._close()

    def _close(self) -> None:
        if self.session is not None:
            session, self.session = self.session, None
            try:
                session.close()
            except RescueError as exc:
                self.app.notify(
                    f"Unmounting the image failed: {shown_message(str(exc))}",
                    severity="error",
                    markup=False,
                )

    def action_share(self) -> None:
        self.query_one(ImagePicker).open_share()

    def action_open(self) -> None:
        image = self.query_one(ImagePicker).value
        number_text = self.query_one("#partition", Input).value.strip()
        if image is None:
            self.notify("Choose an image.", severity="warning")
            return
        if number_text and not number_text.isdigit():
            self.notify("The partition is a number.", severity="warning")
            return
        number = int(number_text) if number_text else None
        typed = self.query_one("#key", Input).value
        secret = Secret(SecretKind.PASSPHRASE, typed.encode()) if typed else None
        volume = self.query_one("#volume", Input).value.strip() or None
        self._close()
        self.query_one("#where", Static).update(plain(f"Opening {image}..."))

        def work() -> None:
            try:
                session = BrowseSession(image, number, volume=volume, secret=secret)
            except RescueError as exc:
                message = str(exc)
                self.app.call_from_thread(self._failed, message)
                return
            self.app.call_from_thread(self._opened, session)

        self.run_worker(work, thread=True, group="open", exit_on_error=False, exclusive=True)

    def _failed(self, message: str) -> None:
        self.query_one("#where", Static).update(plain(f"Cannot open: {message}"))

    def _opened(self, session: BrowseSession) -> None:
        self.session = session
        self.marked.clear()
        self.query_one("#chooser").display = False
        self.show("/")
        self.query_one("#files", DataTable).focus()

    def show(self, path: str) -> None:
        if self.session is None:
            return
        try:
            self.entries = self.session.list_dir(path)
        except (RescueError, OSError) as exc:
            self.notify(shown_message(f"{path}: {exc}"), severity="error", markup=False)
            return
        self.cwd = path if path.startswith("/") else "/" + path
        table = self.query_one("#files", DataTable)
        table.clear()
        for e in self.entries:
            table.add_row(  # names from the image: text, never markup or control codes
                "*" if e.path in self.marked else "",
                Text(shown(e.name) + ("/" if e.kind == "dir" else "")),
                Text(e.kind if e.kind != "symlink" else f"-> {shown(e.target)}"),
                human_size(e.size) if e.kind == "file" else "",
                _mtime(e.mtime_ns),
                key=e.path,
            )
        part = self.session.part
        self.query_one("#where", Static).update(
            plain(
                f"{shown(part.name)} ({self.session.fstype}) {shown(self.cwd)}   "
                f"{len(self.marked)} marked · Enter opens · Space marks · Ctrl+E extracts"
            )
        )

    def _current(self) -> Entry | None:
        table = self.query_one("#files", DataTable)
        if not self.entries or not 0 <= table.cursor_row < len(self.entries):
            return None
        return self.entries[table.cursor_row]

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        entry = self._current()
        if entry is not None and entry.kind == "dir":
            self.show(entry.path)

    def action_up(self) -> None:
        if self.cwd != "/":
            self.show(self.cwd.rstrip("/").rsplit("/", 1)[0] or "/")

    def action_mark(self) -> None:
        entry = self._current()
        if entry is None:
            return
        self.marked.symmetric_difference_update({entry.path})
        row = self.query_one("#files", DataTable).cursor_row
        self.show(self.cwd)
        self.query_one("#files", DataTable).move_cursor(row=min(row + 1, len(self.entries) - 1))

    def action_extract(self) -> None:
        session = self.session
        if session is None:
            self.notify("Open an image first.", severity="warning")
            return
        paths = sorted(self.marked) or ([e.path] if (e := self._current()) else [])
        if not paths:
            return

        def chosen(dest: Path | None) -> None:
            if dest is None:
                return

            def job(progress: ProgressReporter, cancel: threading.Event) -> str:
                result = session.extract(paths, dest, progress=progress, cancel=cancel)
                if not result.ok:
                    raise RescueError(
                        f"{len(result.failed)} item(s) could not be copied:\n"
                        + describe_failures(result, limit=5)
                    )
                return (
                    f"Copied {result.files} file(s), {result.folders} folder(s), "
                    f"{result.symlinks} symlink(s), {human_size(result.bytes)} to {dest}."
                )

            self.app.push_screen(JobScreen(f"Extract {len(paths)} item(s)", job))

        self.app.push_screen(AskFolder(f"Copy {len(paths)} item(s) to which folder?"), chosen)

    def action_leave(self) -> None:
        self._close()
        self.app.pop_screen()


def _mtime(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ns / 1e9)) if ns else ""
