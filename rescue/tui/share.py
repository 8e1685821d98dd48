"""A network share for the screens: a dialog that mounts one, and the app's list of them.

The capture screen offers it beside the local drives (its destination list has a
"network share" entry: F2 on it), the image picker with F6. The dialog takes a
URL (``smb://[DOMAIN;]USER@HOST/SHARE/PATH``, ``nfs://HOST/EXPORT/PATH``,
``ssh://USER@HOST[:PORT]/PATH``; ``smb://USER@HOST`` alone lists the server's
shares), a password (hidden) or an SSH key file, and
mounts the share (read-write for a capture's destination, read-only for images)
under rescue's private folder, recorded as ``rescue mount-share`` records it. An
SSH server rescue does not know yet shows its key fingerprints to be confirmed
(y/n) before anything is sent to it. The app unmounts every share it mounted
when it quits.
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Static

from rescue.errors import RescueError
from rescue.shares.hostkeys import HostKey, describe
from rescue.shares.location import parse_location
from rescue.shares.mounts import Credentials, mount_share, run_dir, unmount_share
from rescue.shares.smb import list_shares
from rescue.tui.jobs import ConfirmScreen
from rescue.tui.text import plain

_MOUNTED: list[Path] = []
_LOCK = threading.Lock()


def unmount_all() -> list[str]:
    """Take down every share the screens mounted (the app calls it when it quits)."""
    problems = []
    with _LOCK:
        while _MOUNTED:
            where = _MOUNTED.pop()
            try:
                unmount_share(where)
                where.rmdir()
            except (RescueError, OSError) as exc:
                problems.append(f"{where}: {exc}")
    return problems


class ShareDialog(ModalScreen[Path | None]):
    """Mount a network share; dismissed with the local folder it is mounted at."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]
    DEFAULT_CSS = """
    ShareDialog { align: center middle; }
    ShareDialog Vertical { width: 90%; max-width: 100; height: auto; border: round $accent;
                           padding: 0 1; background: $surface; }
    ShareDialog #share-error { color: $error; height: auto; }
    """

    def __init__(self, *, read_only: bool) -> None:
        super().__init__()
        self.read_only = read_only

    def compose(self) -> ComposeResult:
        with Vertical():
            what = "images (read-only)" if self.read_only else "the new image (read-write)"
            yield Label(f"Network share for {what}:")
            yield Input(placeholder="smb://USER@HOST/SHARE/PATH, nfs://HOST/EXPORT/PATH, "
                        "ssh://USER@HOST/PATH", id="share-url")  # fmt: skip
            yield Label("Password (hidden; empty for guests, NFS, or an SSH key):")
            yield Input(password=True, id="share-password")
            yield Label("SSH private key file (optional):")
            yield Input(placeholder="/root/.ssh/id_ed25519", id="share-identity")
            yield Static("", id="share-error")
            yield Label("Enter mounts it; Esc cancels.")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        url = self.query_one("#share-url", Input).value.strip()
        password = self.query_one("#share-password", Input).value
        identity = self.query_one("#share-identity", Input).value.strip()
        error = self.query_one("#share-error", Static)
        if not url:
            error.update("Type the share's URL first.")
            return
        error.update("Connecting...")

        def confirm(entry: str, keys: list[HostKey]) -> bool:
            """Asked from the worker thread: the answer comes from a y/n screen."""
            answer: list[bool] = []
            done = threading.Event()

            def ask() -> None:
                question = (
                    f"The SSH server {entry} is not known yet. Its keys:\n{describe(keys)}\n"
                    "Compare them with the server's own (ssh-keygen -lf on the server). "
                    "Is this the server?"
                )

                def answered(yes: bool | None) -> None:
                    answer.append(bool(yes))
                    done.set()

                self.app.push_screen(ConfirmScreen(question), answered)

            self.app.call_from_thread(ask)
            done.wait()
            return answer[0]

        def work() -> None:
            try:
                server = parse_location(url, server_only=True)
                if server.scheme == "smb" and not server.path:  # no share named: list them
                    shares = list_shares(server, password.encode() if password else None)
                    names = ", ".join(name for name, _ in shares) or "none listed"
                    base = server.url().rstrip("/")
                    text = f"Shares on {server.host_in_url}: {names}. Add one: {base}/SHARE/..."
                    self.app.call_from_thread(error.update, plain(text))
                    return
                loc = parse_location(url)
                creds = Credentials(
                    password=password.encode() if password else None,
                    identity=Path(identity) if identity else None,
                    confirm_host_key=confirm,
                )
                folder = Path(tempfile.mkdtemp(prefix="tui-", dir=run_dir()))
                try:
                    mount_share(loc, folder, creds, read_only=self.read_only)
                except BaseException:
                    folder.rmdir()
                    raise
                with _LOCK:
                    _MOUNTED.append(folder)
            except RescueError as exc:
                self.app.call_from_thread(error.update, plain(str(exc)))
                return
            self.app.call_from_thread(self.dismiss, folder)

        self.run_worker(work, thread=True, group="share", exit_on_error=False, exclusive=True)

    def action_cancel(self) -> None:
        self.dismiss(None)
