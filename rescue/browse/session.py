"""The browsing API the UI's file browser uses: one image partition, opened read-only."""

from __future__ import annotations

import threading
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from rescue.browse import extract as extract_mod
from rescue.browse import mounts
from rescue.browse.paths import Entry, entry_of, inside, list_dir, resolve
from rescue.containers.keys import Secret
from rescue.errors import BadInputError
from rescue.progress import ProgressReporter


class BrowseSession:
    """A partition of an image mounted privately; closed, every piece of the mount is gone."""

    def __init__(
        self,
        folder: Path,
        partition: int | None = None,
        *,
        progress: ProgressReporter | None = None,
        cancel: threading.Event | None = None,
        volume: str | None = None,
        secret: Secret | None = None,
    ) -> None:
        self._mounted = mounts.mount_image(
            folder, None, partition=partition, progress=progress, cancel=cancel,
            volume=volume, secret=secret,
        )  # fmt: skip
        self.root = self._mounted.mountpoint
        self.part = self._mounted.part
        self.fstype = self._mounted.record.fstype
        self._closed = False

    def list_dir(self, path: str = "/") -> list[Entry]:
        return list_dir(self.root, path)

    def stat(self, path: str) -> Entry:
        real = resolve(self.root, path, follow_last=False)
        return entry_of(real, inside(self.root, real))

    def open_file(self, path: str) -> BinaryIO:
        real = resolve(self.root, path)
        if not real.is_file():
            raise BadInputError(f"{path} is not a file.")
        return open(real, "rb")

    def read_file(self, path: str, offset: int = 0, length: int = -1) -> bytes:
        with self.open_file(path) as f:
            f.seek(offset)
            return f.read(length)

    def extract(
        self,
        paths: list[str],
        dest: Path,
        *,
        progress: ProgressReporter | None = None,
        cancel: threading.Event | None = None,
        no_special: bool = False,
    ) -> extract_mod.ExtractResult:
        return extract_mod.extract(
            self.root, paths, dest, progress=progress, cancel=cancel, no_special=no_special
        )

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            mounts.unmount(self.root)

    def __enter__(self) -> BrowseSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
