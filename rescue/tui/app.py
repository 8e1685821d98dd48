"""The Textual application: the technician's console.

This first screen lists the disks; the capture, restore and browse workflows
build on it. No disk logic lives here: it calls the core and shows results.
"""

from __future__ import annotations

from typing import ClassVar

from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Footer, Header, Static

from rescue.devices import Disk, list_disks
from rescue.units import human_size


class RescueApp(App[int]):
    """Home: every disk with what the technician needs to tell them apart."""

    TITLE = "rescue"
    SUB_TITLE = "disk imaging and recovery"
    CSS = """
    #status { height: 1; padding: 0 1; color: $text-muted; }
    DataTable { height: 1fr; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit"),
        Binding("r", "refresh", "Refresh"),
    ]

    def __init__(self, disks_source: object = None) -> None:
        super().__init__()
        self._list = list_disks if disks_source is None else disks_source

    def compose(self) -> ComposeResult:
        yield Header()
        yield DataTable(id="disks", cursor_type="row", zebra_stripes=True)
        yield Static("", id="status")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#disks", DataTable)
        table.add_columns("device", "size", "model / file", "bus", "table", "partitions", "flags")
        self.action_refresh()

    def action_refresh(self) -> None:
        table = self.query_one("#disks", DataTable)
        table.clear()
        disks: list[Disk] = self._list()  # type: ignore[operator]
        for d in disks:
            parts = ", ".join(
                f"{p.number}:{p.fstype or '?'} {human_size(p.size)}" for p in d.partitions
            )
            table.add_row(
                d.path,
                human_size(d.size),
                d.model or d.backing_file or "",
                d.transport or "",
                d.partition_table or "-",
                parts or (d.fstype or ""),
                " ".join(d.flags),
                key=d.path,
            )
        self.query_one("#status", Static).update(f"{len(disks)} disk(s). r: refresh, q: quit")


def run_app() -> int:
    result = RescueApp().run()
    return result or 0
