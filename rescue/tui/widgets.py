"""Widgets more than one screen uses: the image picker."""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.content import Content
from textual.message import Message
from textual.widgets import Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from rescue.errors import RescueError
from rescue.image.folder import sealed_folder
from rescue.image.sealing import is_encrypted, unlock_image
from rescue.image.view import ImageView, find_images, looks_like_image, open_image
from rescue.text import shown
from rescue.tui.services import ImageFinder
from rescue.tui.share import ShareDialog
from rescue.tui.text import plain
from rescue.units import human_size


def describe_image(image: ImageView) -> str:
    """A few lines on an image; every name in them shown safely (no control characters)."""
    table = f" ({shown(image.table)})" if image.table else ""
    lines = [f"{shown(image.folder)}: {image.kind} image{table}"]
    m = image.manifest
    if m is not None:
        src = m.source
        lines.append(
            f"  from {shown(src.model or src.path)} {shown(src.serial or '')} "
            f"{human_size(src.size)}, captured {shown(m.created)} by {shown(m.tool)}"
        )
    else:
        lines.append("  written by Clonezilla")
    lines.extend(
        f"  {shown(p.name):10} {shown(p.fstype or 'raw'):6} {human_size(p.size):>9} "
        f"used {human_size(p.used_bytes):>9}  {shown(p.label or '')}"
        for p in image.parts
    )
    return "\n".join(lines)


class ImagePicker(Vertical):
    """An image folder: typed in, or chosen from those found on the mounted drives.

    Posts :class:`ImagePicker.Changed` with the image it opened (None: no usable image).
    """

    class Changed(Message):
        def __init__(self, image: ImageView | None) -> None:
            super().__init__()
            self.image = image

    DEFAULT_CSS = """
    ImagePicker { height: auto; }
    ImagePicker #found { height: auto; max-height: 6; }
    ImagePicker #about { height: auto; max-height: 9; color: $text-muted; }
    ImagePicker #image-key { display: none; }
    ImagePicker #image-key.wanted { display: block; }
    """

    def compose(self) -> ComposeResult:
        yield Label("Image folder (type it, or pick one found on the drives; F6: a network share):")
        yield Input(placeholder="/mnt/usb/images/pc-2026-11-26", id="image")
        yield OptionList(id="found")
        yield Input(password=True, placeholder="passphrase of the encrypted image, then Enter",
                    id="image-key")  # fmt: skip
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
            ol.add_option(Option(Content(shown(f)), id=str(f)))

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        if event.option_list.id == "found" and event.option.id:
            self.query_one("#image", Input).value = event.option.id

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id != "image":
            return
        self._open(Path(event.value.strip()) if event.value.strip() else None)

    def _open(self, path: Path | None) -> None:
        about = self.query_one("#about", Static)
        key = self.query_one("#image-key", Input)
        if path is None or not path.is_dir():
            key.remove_class("wanted")
            about.update("")
            self.post_message(self.Changed(None))
            return
        locked = is_encrypted(path) and sealed_folder(path) is None
        key.set_class(locked, "wanted")
        if locked:
            about.update(plain(f"{path} is an encrypted image: type its passphrase above."))
            self.post_message(self.Changed(None))
            return
        try:
            image = open_image(path)
        except RescueError as exc:
            about.update(plain(f"Not usable: {exc}"))
            self.post_message(self.Changed(None))
            return
        about.update(plain(describe_image(image)))
        self.post_message(self.Changed(image))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id != "image-key" or self.value is None or not event.value:
            return
        folder, value = self.value, event.value.encode()
        event.input.value = ""
        self.query_one("#about", Static).update("Opening the image...")

        def work() -> None:  # Argon2id takes a moment: off the UI thread
            try:
                unlock_image(folder, value)
            except RescueError as exc:
                self.app.call_from_thread(self._unlock_failed, str(exc))
                return
            self.app.call_from_thread(self._open, folder)

        self.run_worker(work, thread=True, group="unlock", exit_on_error=False, exclusive=True)

    def _unlock_failed(self, message: str) -> None:
        self.query_one("#about", Static).update(plain(message))

    def open_share(self) -> None:
        """Mount a network share (read-only) and look for images in it."""

        def mounted(folder: Path | None) -> None:
            if folder is None:
                return
            if looks_like_image(folder):
                self.query_one("#image", Input).value = str(folder)
                return
            found = find_images([folder])
            self._show_found(found)
            self.query_one("#about", Static).update(
                plain(f"{len(found)} image(s) found on the share, listed above: pick one.")
            )

        self.app.push_screen(ShareDialog(read_only=True), mounted)

    @property
    def value(self) -> Path | None:
        text = self.query_one("#image", Input).value.strip()
        return Path(text) if text else None
