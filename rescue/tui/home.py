"""Home: every disk, what it holds, why it must not be written, and its health.

Its keys ask the app for a workflow (:mod:`rescue.tui.messages`): the screen
knows no other screen.
"""

from __future__ import annotations

import threading
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Footer, Header, Input, Label, Static

from rescue.devices import Disk
from rescue.devices.network import Interface, set_static, use_dhcp
from rescue.devices.network import summary as network_summary
from rescue.devices.smart import SmartSummary
from rescue.errors import RescueError
from rescue.text import shown
from rescue.tui.messages import (
    BrowseRequested,
    CaptureRequested,
    JobsRequested,
    RestoreRequested,
    VerifyRequested,
)
from rescue.tui.services import Services
from rescue.tui.text import plain
from rescue.units import human_size

FLAG_SHORT = {
    "boot-medium": "BOOT",
    "mounted": "mounted",
    "swap-active": "swap",
    "in-use": "in use",
    "read-only": "ro",
}
FLAG_WORDS = {
    "boot-medium": "BOOT MEDIUM (the running system)",
    "mounted": "mounted",
    "swap-active": "swap in use",
    "in-use": "in use (LVM/RAID)",
    "read-only": "read-only",
}


NETWORK_EVERY = 5.0
"""Seconds between two readings of the network addresses."""


class NetworkDialog(ModalScreen[str | None]):
    """A static address for a wired interface, or DHCP again (empty address)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]
    DEFAULT_CSS = """
    NetworkDialog { align: center middle; }
    NetworkDialog Vertical { width: 72; height: auto; border: round $accent; padding: 0 1; }
    NetworkDialog #net-error { color: $error; height: auto; }
    """

    def __init__(self, wired: list[Interface]) -> None:
        super().__init__()
        self.wired = wired

    def compose(self) -> ComposeResult:
        with Vertical():
            names = ", ".join(f"{i.name} ({i.mac})" for i in self.wired) or "none found"
            yield Label(plain(f"Wired interfaces: {names}"))
            yield Label("Interface:")
            first = self.wired[0].name if self.wired else ""
            yield Input(first, id="net-iface")
            yield Label("Address/prefix (empty: DHCP again), e.g. 192.168.1.50/24:")
            yield Input(id="net-address")
            yield Label("Gateway (optional):")
            yield Input(id="net-gateway")
            yield Label("DNS server (optional):")
            yield Input(id="net-dns")
            yield Static("", id="net-error")
            yield Label("Enter applies (until the next boot); Esc cancels.")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        value = {n: self.query_one(f"#net-{n}", Input).value.strip()
                 for n in ("iface", "address", "gateway", "dns")}  # fmt: skip
        try:
            if value["address"]:
                dns = (value["dns"],) if value["dns"] else ()
                set_static(value["iface"], value["address"], value["gateway"] or None, dns)
                self.dismiss(f"{value['iface']}: static address {value['address']} set.")
            else:
                use_dhcp(value["iface"])
                self.dismiss(f"{value['iface']}: DHCP again.")
        except RescueError as exc:
            self.query_one("#net-error", Static).update(plain(str(exc)))

    def action_cancel(self) -> None:
        self.dismiss(None)


class HomeScreen(Screen[None]):
    """The disks table; details of the selected disk below it."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("c", "capture", "Capture"),
        Binding("r", "restore", "Restore"),
        Binding("v", "verify", "Verify"),
        Binding("b", "browse", "Browse"),
        Binding("n", "network", "Net"),
        Binding("j", "jobs", "Jobs"),
        Binding("f5,u", "refresh", "Refresh", show=False),  # disks are followed live
        Binding("q", "app.quit", "Quit"),
    ]
    DEFAULT_CSS = """
    HomeScreen #disks { height: 1fr; }
    HomeScreen #detail { height: auto; max-height: 12; padding: 0 1; border-top: solid $panel; }
    HomeScreen #status { height: 1; padding: 0 1; color: $text-muted; }
    HomeScreen #network { height: 1; padding: 0 1; color: $text-muted; }
    """

    def __init__(self, services: Services) -> None:
        super().__init__()
        self.services = services
        self._lister = services.list_disks
        self._smart = services.smart
        self._used = services.used
        self.disks: list[Disk] = []
        self.health: dict[str, SmartSummary | None] = {}
        self._used_cache: dict[tuple[str, int], int | None] = {}
        self._stop = threading.Event()

    def compose(self) -> ComposeResult:
        yield Header(icon="*")
        yield DataTable(id="disks", cursor_type="row", zebra_stripes=True)
        yield Static("", id="detail")
        yield Static("", id="status")
        yield Static("Network: ...", id="network")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#disks", DataTable)
        table.add_columns("device", "size", "model / file", "bus", "health", "do not write: why")
        self.action_refresh()
        self._read_network()
        self.set_interval(NETWORK_EVERY, self._read_network)

    def on_unmount(self) -> None:
        self._stop.set()

    @property
    def selected(self) -> Disk | None:
        table = self.query_one("#disks", DataTable)
        if not self.disks or table.cursor_row < 0 or table.cursor_row >= len(self.disks):
            return None
        return self.disks[table.cursor_row]

    def action_refresh(self) -> None:
        table = self.query_one("#disks", DataTable)
        keep = self.selected.path if self.selected else None
        self.disks = self._lister()
        table.clear()
        for d in self.disks:
            health = self.health.get(d.path)
            table.add_row(  # names from the disk: text, never markup or control codes
                Text(shown(d.path)),
                human_size(d.size),
                Text(_clip(shown(d.model or d.backing_file or ""), 18)),
                Text(shown(d.transport or "")),
                _clip(health.short(), 12) if health else "-",
                ", ".join(FLAG_SHORT.get(f, f) for f in d.flags),
                key=d.path,
            )
        for i, d in enumerate(self.disks):
            if d.path == keep:
                table.move_cursor(row=i)
        self.query_one("#status", Static).update(
            f"{len(self.disks)} disk(s). Plug in a drive and it appears here."
        )
        self._show_detail()
        self.run_worker(
            self._read_health, thread=True, group="health", exit_on_error=False, exclusive=True
        )

    def _read_health(self) -> None:
        for d in list(self.disks):
            if d.path not in self.health and not self._stop.is_set():
                summary = self._smart(d.path)
                self.health[d.path] = summary
                if summary is not None:
                    self.app.call_from_thread(self.action_refresh)

    def _read_network(self) -> None:
        """The addresses, read off the UI thread (a DHCP lease comes some seconds after boot)."""

        def work() -> None:
            try:
                line = network_summary(self.services.network())
            except RescueError as exc:
                line = f"Network: unknown ({exc})"
            if not self._stop.is_set():
                self.app.call_from_thread(self._show_network, line)

        self.run_worker(work, thread=True, group="network", exit_on_error=False, exclusive=True)

    def _show_network(self, line: str) -> None:
        self.query_one("#network", Static).update(plain(line))

    def action_network(self) -> None:
        wired = [i for i in self.services.network() if i.wired]

        def done(result: str | None) -> None:
            if result:
                self.notify(result, markup=False)
            self._read_network()

        self.app.push_screen(NetworkDialog(wired), done)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_detail()

    def _show_detail(self) -> None:
        d = self.selected
        detail = self.query_one("#detail", Static)
        if d is None:
            detail.update("No disk found.")
            return
        table_kind = f"{d.partition_table} table" if d.partition_table else "no partition table"
        model = shown(d.model or d.backing_file or "unknown model")
        serial = f", serial {shown(d.serial)}" if d.serial else ""
        lines = [f"{shown(d.path)}: {model}{serial}, {human_size(d.size)}, {shown(table_kind)}"]
        lines.extend(f"  ! {FLAG_WORDS.get(flag, flag)}" for flag in d.flags)
        health = self.health.get(d.path)
        if health is not None and health.failing:
            lines.append(
                f"  ! SMART: {health.describe()}: image this disk first, before anything else"
            )
        for p in d.partitions[:8]:
            known = (p.path, p.size) in self._used_cache
            used = self._used_cache.get((p.path, p.size))
            used_text = human_size(used) if used is not None else ("?" if known else "...")
            lines.append(
                f"  {p.number:>2} {shown(p.fstype or '?'):7} {human_size(p.size):>9} "
                f"used {used_text:>9}  "
                f"{shown(p.label or '')} {' '.join(p.flags)}"
            )
        if len(d.partitions) > 8:
            lines.append(f"  ... and {len(d.partitions) - 8} more")
        detail.update(plain("\n".join(lines)))
        missing = [p for p in d.partitions if (p.path, p.size) not in self._used_cache]
        if missing:
            self.run_worker(
                lambda: self._read_used(d),
                thread=True,
                group="used",
                exit_on_error=False,
                exclusive=True,
            )

    def _read_used(self, d: Disk) -> None:
        for p in d.partitions:
            if self._stop.is_set():
                return
            self._used_cache[(p.path, p.size)] = self._used(p.path, p.size, p.fstype)
        self.app.call_from_thread(self._show_detail)

    def _need_disk(self) -> Disk | None:
        d = self.selected
        if d is None:
            self.notify("Choose a disk first.", severity="warning")
        return d

    def action_capture(self) -> None:
        d = self._need_disk()
        if d is not None:
            self.post_message(CaptureRequested(d))

    def action_restore(self) -> None:
        self.post_message(RestoreRequested())

    def action_verify(self) -> None:
        self.post_message(VerifyRequested())

    def action_browse(self) -> None:
        self.post_message(BrowseRequested())

    def action_jobs(self) -> None:
        self.post_message(JobsRequested())


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."
