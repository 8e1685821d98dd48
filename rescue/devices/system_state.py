"""What the running system does with block devices: mounts, swap, the boot medium.

Read from /proc, so it works with or without udev. Devices are keyed by their
device number (major, minor), which identifies them whatever name or link is used.
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from rescue.kernel import DevNum, mount_table, unescape

# Where the running system lives: the root filesystem and Debian live's medium
LIVE_MEDIUM_MOUNTPOINTS = ("/run/live/medium", "/lib/live/mount/medium", "/run/initramfs/live")
BOOT_MOUNTPOINTS = ("/", *LIVE_MEDIUM_MOUNTPOINTS)


def devnum_of(path: str) -> DevNum | None:
    """(major, minor) of a block device node, None when ``path`` is not one."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISBLK(st.st_mode):
        return None
    return os.major(st.st_rdev), os.minor(st.st_rdev)


@dataclass
class SystemState:
    mounts: dict[DevNum, list[str]] = field(default_factory=dict)
    writable: set[DevNum] = field(default_factory=set)
    """Devices with a filesystem mounted read-write (changing under a capture)."""
    swaps: set[DevNum] = field(default_factory=set)
    boot: set[DevNum] = field(default_factory=set)
    medium_fs_devs: set[int] = field(default_factory=set)
    """st_dev of the live medium's filesystem: a loop file there is the live system itself."""

    @classmethod
    def read(cls, proc: Path = Path("/proc")) -> SystemState:
        state = cls()
        for entry in mount_table(proc):
            mountpoint, source = entry.mountpoint, entry.source
            major, minor = entry.devnum
            nums = set()
            if major != 0:
                nums.add((major, minor))
            if source.startswith("/dev/"):
                # FUSE mounts (ntfs-3g) have an anonymous device number; the source names the disk
                num = devnum_of(source)
                if num is not None:
                    nums.add(num)
            writable = "rw" in entry.options
            for num in nums:
                state.mounts.setdefault(num, []).append(mountpoint)
                if writable:
                    state.writable.add(num)
                if mountpoint in BOOT_MOUNTPOINTS:
                    state.boot.add(num)
            if mountpoint in LIVE_MEDIUM_MOUNTPOINTS:
                with contextlib.suppress(OSError):
                    state.medium_fs_devs.add(os.stat(mountpoint).st_dev)
        try:
            swaps = (proc / "swaps").read_text().splitlines()[1:]
        except OSError:
            swaps = []
        for line in swaps:
            parts = line.split()
            if parts:
                num = devnum_of(unescape(parts[0]))
                if num is not None:
                    state.swaps.add(num)
        return state
