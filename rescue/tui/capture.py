"""Capture: the chosen disk (or one of its partitions) into a new image folder."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Checkbox, Footer, Header, Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from rescue.containers.keys import Secret, SecretKind
from rescue.devices import Disk, Partition
from rescue.errors import RescueError
from rescue.image.sealing import folder_sealer, is_encrypted, unlock_image
from rescue.operations.capture import capture
from rescue.operations.capture_map import resumable
from rescue.operations.destination import destination_candidates, mount_destination
from rescue.operations.estimate import capture_need, free_bytes
from rescue.operations.incremental import Base, find_base, surely_new
from rescue.operations.unlock import EncryptedPartition
from rescue.progress import ProgressReporter
from rescue.text import shown, shown_message
from rescue.tui.jobs import JobScreen, JobWarning
from rescue.tui.services import Services
from rescue.tui.share import ShareDialog
from rescue.units import human_size

SHARE_OPTION = "network-share"
"""The destination list's entry that mounts a network share."""


def default_name(disk: Disk) -> str:
    """Host name (or disk model) and date: what a technician would write on the label."""
    base = socket.gethostname() or ""
    if not base or base in ("localhost", "debian", "rescue"):
        base = disk.model or disk.name
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in base).strip("-")
    return f"{safe or 'disk'}-{time.strftime('%Y-%m-%d')}"


class CaptureScreen(Screen[None]):
    """Source, destination folder, image name, room needed and free; then the job."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+s", "start", "Start capture"),
        Binding("f2", "mount_dest", "Mount destination"),
        Binding("escape", "app.pop_screen", "Back"),
    ]
    DEFAULT_CSS = """
    CaptureScreen Vertical { padding: 0 1; height: auto; }
    CaptureScreen Input { width: 1fr; }
    CaptureScreen #sources { height: auto; max-height: 6; }
    CaptureScreen #dests { height: auto; max-height: 5; }
    CaptureScreen #room { padding: 0 1; }
    CaptureScreen #keys { padding: 0; }
    CaptureScreen #encrypt { height: auto; }
    CaptureScreen #base { padding: 0; }
    """

    def __init__(self, disk: Disk, services: Services) -> None:
        super().__init__()
        self.disk = disk
        self.services = services
        self._need: dict[str, int | None] = {}
        self._keys: dict[str, str] = {}
        """Input id -> kernel name of the encrypted partition it takes the key of."""
        self._generation = 0
        self._base: Base | None = None
        """The image of this disk found at the destination, offered as the base."""
        self._base_key: tuple[str, str] | None = None
        self._at_least: int | None = None

    def compose(self) -> ComposeResult:
        yield Header(icon="*")
        with Vertical():
            yield Label(
                Content(f"Source (Up/Down): whole disk or one partition of {shown(self.disk.path)}")
            )
            size = human_size(self.disk.size)
            options = [
                Option(Content(f"whole disk {shown(self.disk.path)} ({size})"), id=self.disk.path)
            ]
            options += [
                Option(
                    Content(
                        f"partition {shown(p.path)} {shown(p.fstype or '?')} "
                        f"{human_size(p.size)} {shown(p.label or '')}"
                    ),
                    id=p.path,
                )
                for p in self.disk.partitions
            ]
            yield OptionList(*options, id="sources")
            yield Label(
                "Destination folder (F2 mounts the drive or network share highlighted below):"
            )
            yield Input(placeholder="/mnt/usb", id="dest")
            yield OptionList(id="dests")
            yield Label("Image name:")
            yield Input(default_name(self.disk), id="name")
            yield Vertical(id="base")
            yield Label("Encrypt (empty: no; only rescue opens encrypted images): passphrase twice")
            with Horizontal(id="encrypt"):
                yield Input(password=True, placeholder="passphrase (hidden)", id="pass1")
                yield Input(password=True, placeholder="the same again", id="pass2")
            yield Vertical(id="keys")
        yield Static("", id="room")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#sources", OptionList).highlighted = 0
        dests = self.query_one("#dests", OptionList)
        for p in destination_candidates(self.services.list_disks(), self.disk):
            where = p.mountpoints[0] if p.mountpoints else "not mounted"
            text = (
                f"{shown(p.path)} {shown(p.fstype or '?')} {human_size(p.size)} "
                f"{shown(p.label or '')} ({shown(where)})"
            )
            dests.add_option(Option(Content(text), id=p.path))
        dests.add_option(Option("network share (SMB, NFS, SSH): F2 connects", id=SHARE_OPTION))
        self._estimate()
        self._show_keys()

    @property
    def source_path(self) -> str:
        ol = self.query_one("#sources", OptionList)
        idx = ol.highlighted or 0
        opt = ol.get_option_at_index(idx)
        return opt.id or self.disk.path

    def _source(self) -> Disk | Partition:
        path = self.source_path
        for p in self.disk.partitions:
            if p.path == path:
                return p
        return self.disk

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        if event.option_list.id == "sources":
            self._estimate()
            self._show_keys()
            self._find_base()

    def _show_keys(self) -> None:
        """Read which partitions of the source are encrypted (their headers), then ask."""
        path = self.source_path

        def work() -> None:
            found = self.services.encrypted(path)
            self.app.call_from_thread(self._key_fields, path, found)

        self.run_worker(work, thread=True, group="keys", exit_on_error=False, exclusive=True)

    def _key_fields(self, path: str, found: list[EncryptedPartition]) -> None:
        """A hidden field per encrypted partition of the source: its key, or empty to leave it
        locked (stored whole: its size is what that costs)."""
        if path != self.source_path:
            return  # another source was chosen meanwhile
        box = self.query_one("#keys", Vertical)
        if [p.name for p in found] == list(self._keys.values()):
            return  # the same partitions: keep what was typed
        box.remove_children()
        self._keys = {}
        self._generation += 1
        widgets: list[Widget] = []
        for i, p in enumerate(found):
            widgets.append(Label(Content(
                f"{shown(p.name)} is {shown(p.what)}: passphrase or recovery password "
                f"(empty: leave it locked, stored whole: {human_size(p.size)})"
            )))  # fmt: skip
            ident = f"key-{self._generation}-{i}"
            widgets.append(Input(password=True, placeholder="key (hidden)", id=ident))
            self._keys[ident] = p.name
        if widgets:
            box.mount_all(widgets)

    def _secrets(self) -> dict[str, Secret]:
        out = {}
        for ident, name in self._keys.items():
            value = self.query_one(f"#{ident}", Input).value
            if value:
                out[name] = Secret(SecretKind.PASSPHRASE, value.encode())
        return out

    def on_input_changed(self, event: Input.Changed) -> None:
        self._show_room()
        if event.input.id == "dest":
            self._find_base()

    def _find_base(self) -> None:
        """Look at the destination for an earlier image of the source (same serial, or the
        same filesystem UUIDs): offered as the base, with what an increment stores at least."""
        dest = self.query_one("#dest", Input).value.strip()
        source = self._source()
        key = (dest, source.path)
        if key == self._base_key:
            return
        self._base_key = key

        def work() -> None:
            base = find_base(Path(dest), source) if dest else None
            at_least = surely_new(source, base) if base is not None else None
            self.app.call_from_thread(self._offer_base, key, base, at_least)

        self.run_worker(work, thread=True, group="base", exit_on_error=False, exclusive=True)

    def _offer_base(self, key: tuple[str, str], base: Base | None, at_least: int | None) -> None:
        if key != self._base_key:
            return  # another destination or source meanwhile
        box = self.query_one("#base", Vertical)
        box.remove_children()
        self._base = base
        if base is None:
            return
        when = base.manifest.created.replace("T", " ").rstrip("Z")
        self._at_least = at_least
        box.mount_all([
            Checkbox(Content(
                f"Incremental: store only what changed since {shown(base.folder.name)} "
                f"({when} UTC)"
            ), value=True, id="incremental"),
            Label(self._base_cost(), id="base-cost"),
        ])  # fmt: skip

    def _base_cost(self) -> Content:
        """What the offered increment costs against a full image (the source's used data is
        read in its own worker: the line is redrawn when that is known)."""
        need = self._need.get(self.source_path)
        full = f"{human_size(need)} of used data" if need else "all its used data"
        at_least = self._at_least
        sure = f"at least {human_size(at_least)}" if at_least is not None else "an unknown part"
        return Content(
            f"  A full image copies {full}; this one what changed: {sure} is new since then, "
            "plus what was rewritten in place (found as the disk is read)."
        )

    def _estimate(self) -> None:
        src = self._source()
        if src.path in self._need:
            self._show_room()
            return

        def work() -> None:
            self._need[src.path] = capture_need(src, self.services.used)
            self.app.call_from_thread(self._show_room)

        self.query_one("#room", Static).update("Reading the allocation maps...")
        self.run_worker(work, thread=True, group="estimate", exit_on_error=False, exclusive=True)

    def _show_room(self) -> None:
        need = self._need.get(self.source_path)
        dest = self.query_one("#dest", Input).value.strip()
        text = f"Used data to copy: {human_size(need)} (less once compressed)." if need else ""
        if dest:
            try:
                text += f"  Free at the destination: {human_size(free_bytes(Path(dest)))}."
            except OSError as exc:
                text += f"  Destination: {exc.strerror}."
        self.query_one("#room", Static).update(text)
        for label in self.query("#base-cost").results(Label):
            label.update(self._base_cost())

    def action_mount_dest(self) -> None:
        dests = self.query_one("#dests", OptionList)
        if dests.highlighted is None:
            self.notify("Highlight a partition in the list first.", severity="warning")
            return
        path = dests.get_option_at_index(dests.highlighted).id
        if path == SHARE_OPTION:

            def mounted(folder: Path | None) -> None:
                if folder is not None:
                    self.query_one("#dest", Input).value = str(folder)

            self.app.push_screen(ShareDialog(read_only=False), mounted)
            return
        part = next(
            (p for d in self.services.list_disks() for p in d.partitions if p.path == path), None
        )
        if part is None:
            self.notify(f"{shown(path)} is gone.", severity="error", markup=False)
            return
        try:
            folder = mount_destination(part)
        except RescueError as exc:
            self.notify(shown_message(str(exc)), severity="error", timeout=10, markup=False)
            return
        self.query_one("#dest", Input).value = str(folder)

    def action_start(self) -> None:
        dest = self.query_one("#dest", Input).value.strip()
        name = self.query_one("#name", Input).value.strip()
        if not dest or not name:
            self.notify("Give a destination folder and an image name.", severity="warning")
            return
        if "/" in name:
            self.notify("The image name is a folder name: no '/'.", severity="warning")
            return
        source = self.source_path
        image = Path(dest) / name
        first = self.query_one("#pass1", Input).value
        if first != self.query_one("#pass2", Input).value and not is_encrypted(image):
            self.notify("The two passphrases differ.", severity="warning")
            return
        image_key = Secret(SecretKind.PASSPHRASE, first.encode()) if first else None
        try:
            if image.is_dir() and is_encrypted(image) and folder_sealer(image) is None:
                if image_key is None:  # an interrupted encrypted capture: its map is sealed
                    self.notify(
                        f"{shown(image)} holds an interrupted encrypted capture: type its "
                        "passphrase to resume it.",
                        severity="warning",
                        markup=False,
                    )
                    return
                unlock_image(image, image_key.value)
            resume = resumable(image) is not None  # an interrupted capture of this name: go on
        except RescueError as exc:  # its map is damaged: the technician decides, not the screen
            self.notify(shown_message(str(exc)), severity="error", timeout=10, markup=False)
            return
        if resume:
            self.notify(f"{shown(image)} holds an interrupted capture: resuming it.", markup=False)

        secrets = self._secrets()
        base = None
        ticked = self.query("#incremental") and self.query_one("#incremental", Checkbox).value
        if self._base is not None and not resume and ticked:
            base = self._base.folder
            if image_key is not None:
                self.notify(
                    "An encrypted image cannot be incremental: untick Incremental for a full "
                    "encrypted image, or leave the passphrase empty.",
                    severity="warning",
                )
                return

        def job(progress: ProgressReporter, cancel: threading.Event) -> str:
            manifest = capture(
                source, image, progress=progress, cancel=cancel, resume=resume, secrets=secrets,
                image_key=image_key, base=base,
            )  # fmt: skip
            used = sum(p.used_bytes for p in manifest.partitions)
            lost = sum(n for p in manifest.partitions for _, n in p.unreadable)
            if lost:
                files = [f for p in manifest.partitions for f in p.damaged_files]
                raise JobWarning(
                    f"Image written to {image}, but {human_size(lost)} of used data could not be "
                    f"read from the disk (zeros in the image). Files affected: "
                    f"{', '.join(files[:5]) or 'unknown'}"
                    f"{' and more' if len(files) > 5 else ''}. See damage-report.txt."
                )
            sealed = " Encrypted: rescue opens it with the passphrase." if image_key else ""
            if manifest.base is not None:
                stored = sum(p.used_bytes for p in manifest.partitions)
                sealed = (
                    f" Incremental on {manifest.base.name}: {human_size(stored)} of it stored; "
                    "keep the images of the chain together."
                )
            return (
                f"Image complete: {image} ({len(manifest.partitions)} partition(s), "
                f"{human_size(used)} of used data).{sealed}"
            )

        self.app.push_screen(JobScreen(f"Capture {source} -> {image}", job))
