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

DevNum = tuple[int, int]

# Where the running system lives: the root filesystem and Debian live's medium
LIVE_MEDIUM_MOUNTPOINTS = ("/run/live/medium", "/lib/live/mount/medium", "/run/initramfs/live")
BOOT_MOUNTPOINTS = ("/", *LIVE_MEDIUM_MOUNTPOINTS)


def _unescape(text: str) -> str:
    """Undo /proc's octal escapes (a space in a mountpoint is written \\040)."""
    if "\\" not in text:
        return text
    out = []
    i = 0
    while i < len(text):
        if text[i] == "\\" and i + 4 <= len(text) and text[i + 1 : i + 4].isdigit():
            out.append(chr(int(text[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def devnum_of(path: str) -> DevNum | None:
    """(major, minor) of a block device node, None when ``path`` is not one."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISBLK(st.st_mode):
        return None
    return os.major(st.st_rdev), os.minor(st.st_rdev)


@dataclass(frozen=True)
class MountEntry:
    mountpoint: str
    source: str
    fstype: str
    options: tuple[str, ...]
    devnum: DevNum = (0, 0)
    """The filesystem's device number (major 0: anonymous, as FUSE and tmpfs have)."""


def mount_table(proc: Path = Path("/proc")) -> list[MountEntry]:
    """Every mount this process sees, in mount order."""
    try:
        lines = (proc / "self" / "mountinfo").read_text().splitlines()
    except OSError:
        return []
    entries = []
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = left.split()
        rfields = right.split()
        if len(fields) < 6 or len(rfields) < 2:
            continue
        major, minor = (int(x) for x in fields[2].split(":"))
        entries.append(
            MountEntry(
                mountpoint=_unescape(fields[4]),
                source=_unescape(rfields[1]),
                fstype=rfields[0],
                options=tuple(fields[5].split(",")),
                devnum=(major, minor),
            )
        )
    return entries


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
                num = devnum_of(_unescape(parts[0]))
                if num is not None:
                    state.swaps.add(num)
        return state
