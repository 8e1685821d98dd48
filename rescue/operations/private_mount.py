"""A filesystem mounted for a moment in a private temporary folder, then unmounted."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from rescue.system import run


@contextlib.contextmanager
def private_mount(dev: str, fstype: str, options: str) -> Iterator[Path]:
    """``dev`` mounted with ``options`` (plus nosuid,nodev,noexec) until the block ends."""
    folder = Path(tempfile.mkdtemp(prefix="rescue-mnt-"))
    try:
        run(["mount", "-t", fstype, "-o", f"{options},nosuid,nodev,noexec", dev, str(folder)])
        try:
            yield folder
        finally:
            run(["umount", str(folder)])
    finally:
        os.rmdir(folder)
