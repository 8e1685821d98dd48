"""What this machine lets the tests do; tests that need more skip and say what is missing."""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

import pytest


@functools.cache
def capabilities() -> dict[str, bool]:
    root = os.geteuid() == 0
    return {
        "root": root,
        "loop": root and Path("/dev/loop-control").exists() and shutil.which("losetup") is not None,
        "udev": Path("/run/udev/control").exists() or Path("/lib/systemd/systemd-udevd").exists(),
        "fuse": Path("/dev/fuse").exists() and shutil.which("fusermount3") is not None,
        "qemu": shutil.which("qemu-system-x86_64") is not None,
        "partclone": shutil.which("partclone.ext4") is not None
        or Path("/usr/sbin/partclone.ext4").exists(),
    }


def need(*names: str) -> pytest.MarkDecorator:
    """Skip unless every named capability is present, naming the missing ones."""
    caps = capabilities()
    missing = [n for n in names if not caps.get(n, False)]
    return pytest.mark.skipif(bool(missing), reason=f"this machine lacks: {', '.join(missing)}")
