"""Widgets more than one screen uses: the image picker."""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from rescue.errors import RescueError
from rescue.image.view import ImageView, open_image
from rescue.tui.services import ImageFinder
from rescue.units import human_size


def describe_image(image: ImageView) -> str:
    lines = [f"{image.folder}: {image.kind} image{' (' + image.table + ')' if image.table else ''}"]
    m = image.manifest
    if m is not None:
        src = m.source
        lines.append(
            f"  from {src.model or src.path} {src.serial or ''} "
            f"{human_size(src.size)}, captured {m.created} by {m.tool}"
        )
    else:
        lines.append("  written by Clonezilla")
    lines.extend(
        f"  {p.name:10} {p.fstype or 'raw':6} {human_size(p.size):>9} "
        f"used {human_size(p.used_bytes):>9}  {p.label or ''}"
        for p in image.parts
    )
    return "\n".join(lines)


class ImagePicker(Vertical):
    """An image folder: typed in, or chosen from those found on the mounted drives."""

    DEFAULT_CSS = """
    ImagePicker { height: auto; }
    ImagePicker #found { height: auto; max-height: 6; }
    ImagePicker #about { height: auto; max-height: 9; color: $text-muted; }
    """

    def compose(self) -> ComposeResult:
        yield Label("Image folder (type it, or pick one found on the drives):")
        yield Input(placeholder="/mnt/usb/images/pc-2026-11-26", id="image")
        yield OptionList(id="found")
        yield Static("", id="about")

    def __init__(self, finder: ImageFinder) -> None:
        super().__init__()
        self._finder = finder

    def on_mount(self) -> None:
        self.run_worker(self._search, thread=True, group="search", exit_on_error=False)

    def _search(self) -> None:
        found = self._finder()
        self.app.call_from_thread(self._show_found, found)

    def _show_found(self, found: list[Path]) -> None:
        ol = self.query_one("#found", OptionList)
        ol.clear_options()
        for f in found:
            ol.add_option(Option(str(f), id=str(f)))

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        if event.option_list.id == "found" and event.option.id:
            self.query_one("#image", Input).value = event.option.id

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id != "image":
            return
        about = self.query_one("#about", Static)
        path = Path(event.value.strip())
        if not event.value.strip() or not path.is_dir():
            about.update("")
            return
        try:
            about.update(describe_image(open_image(path)))
        except RescueError as exc:
            about.update(f"Not usable: {exc}")

    @property
    def value(self) -> Path | None:
        text = self.query_one("#image", Input).value.strip()
        return Path(text) if text else None
