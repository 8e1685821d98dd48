"""ext2/3/4 through e2fsprogs: check, grow, shrink, minimum size, new UUID, damaged files.

The home of ext2/3/4 is :mod:`rescue.filesystems.ext` (its allocation map and its
registry entry, :data:`rescue.filesystems.ext.EXT`); this module holds the code
that runs e2fsprogs' programs for it, so that each rule (e2fsck's exit codes,
the folder times resize2fs changes) is written once.
"""

from __future__ import annotations

import os
import re
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

from rescue.errors import ExternalToolError
from rescue.filesystems.interface import CheckResult, run_checker
from rescue.system import output, run

FIRST_USER_INODE = 11

E2FSCK_MENDED = (0, 1)
"""e2fsck's exit codes after ``-y`` that leave a consistent filesystem: 0 clean, 1 mended.
2 and up: mended but the system must reboot (4: errors left, 8: it could not run)."""

Mount = Callable[[str], AbstractContextManager[Path]]
"""A read-only mount of the filesystem in a private folder."""


def check(dev: str) -> CheckResult:
    """``e2fsck -f -n``: clean only when it found nothing (exit 0)."""
    return run_checker(["e2fsck", "-f", "-n", dev])


def repair(dev: str) -> CheckResult:
    """``e2fsck -f -y``: every problem it can mend is mended (exit 0 or 1 is a good result)."""
    return run_checker(["e2fsck", "-f", "-y", dev], ok=E2FSCK_MENDED)


def grow(dev: str) -> None:
    """e2fsck (resize2fs insists), then resize2fs to fill the partition."""
    fsck = repair(dev)
    if not fsck.ok:
        raise ExternalToolError(
            f"e2fsck found problems on {dev} before growing it (exit {fsck.code})."
        )
    run(["resize2fs", dev])


def minimum_size(dev: str) -> int:
    """``resize2fs -P`` (in blocks) times the block size ``dumpe2fs -h`` reports."""
    text = output(["resize2fs", "-P", dev])
    m = re.search(r"minimum size of the filesystem:\s*(\d+)", text)
    if m is None:
        raise ExternalToolError(f"resize2fs -P gave no minimum size for {dev}: {text.strip()}")
    b = re.search(r"^Block size:\s*(\d+)", output(["dumpe2fs", "-h", dev]), re.M)
    if b is None:
        raise ExternalToolError(f"dumpe2fs gave no block size for {dev}.")
    return int(m.group(1)) * int(b.group(1))


def shrink(dev: str, size: int, mount: Mount) -> None:
    """e2fsck, then resize2fs to ``size`` bytes; the folder times it changes are put back."""
    fsck = repair(dev)
    if not fsck.ok:
        raise ExternalToolError(
            f"e2fsck found problems in the image's filesystem that it could not mend "
            f"(exit {fsck.code}); it cannot be shrunk.",
            hint="Restore onto a disk at least as large as the source instead.",
        )
    before = folder_times(dev, mount)
    run(["resize2fs", dev, f"{size // 512}s"])
    put_back_folder_times(dev, before, mount)


def folder_times(dev: str, mount: Mount) -> dict[str, tuple[int, int, int]]:
    """Every folder of the ext filesystem on ``dev``: path -> (inode, mtime ns, ctime ns)."""
    found: dict[str, tuple[int, int, int]] = {}
    with mount(dev) as mnt:
        st = os.stat(mnt)
        found[""] = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
        stack = [""]
        while stack:
            rel = stack.pop()
            with os.scandir(os.path.join(mnt, rel)) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)
                        path = os.path.join(rel, entry.name)
                        found[path] = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
                        stack.append(path)
    return found


def ext_time(field: str, inode: int, ns: int) -> list[str]:
    """debugfs commands setting ``field`` (mtime, ctime) of ``inode`` to ``ns`` since the epoch."""
    seconds, nanos = divmod(ns, 10**9)
    low = seconds & 0xFFFFFFFF
    signed = low - (1 << 32) if low >= 1 << 31 else low
    epoch = ((seconds - signed) >> 32) & 3  # ext4 keeps times past 2038 in two extra bits
    return [
        f"set_inode_field <{inode}> {field} @{seconds}",
        f"set_inode_field <{inode}> {field}_extra {nanos << 2 | epoch}",
    ]


def put_back_folder_times(dev: str, before: dict[str, tuple[int, int, int]], mount: Mount) -> int:
    """Give back the folder times resize2fs changed; returns how many folders it touched.

    resize2fs renumbers the inodes it moves out of the removed block groups and
    stamps the folders holding them with the current time (on purpose, so that
    incremental backups see them). A restore must leave them as they were.
    """
    commands = []
    for path, (inode, mtime, ctime) in folder_times(dev, mount).items():
        old = before.get(path)
        if old is not None and (old[1], old[2]) != (mtime, ctime):
            commands += ext_time("mtime", inode, old[1]) + ext_time("ctime", inode, old[2])
    if commands:
        with tempfile.NamedTemporaryFile("w", prefix="rescue-debugfs-", suffix=".txt") as f:
            f.write("\n".join(commands) + "\n")
            f.flush()
            run(["debugfs", "-w", "-f", f.name, dev])
    return len(commands) // 4


def new_uuid(dev: str) -> str:
    """e2fsck (tune2fs insists after a restore), then a new random UUID with tune2fs."""
    fsck = repair(dev)
    if not fsck.ok:
        raise ExternalToolError(f"e2fsck found problems on {dev} (exit {fsck.code}).")
    new = str(uuid.uuid4())
    run(["tune2fs", "-U", new, dev])
    return new


def _blocks(ranges: list[tuple[int, int]], block_size: int) -> list[int]:
    found: set[int] = set()
    for off, n in ranges:
        found.update(range(off // block_size, (off + n - 1) // block_size + 1))
    return sorted(found)


def _batches(items: list[int], n: int) -> Iterator[list[int]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def files_at(dev: str, ranges: list[tuple[int, int]], block_size: int) -> list[str]:
    """debugfs maps the blocks to inodes (``icheck``), the inodes to paths (``ncheck``)."""
    inodes: set[int] = set()
    metadata = False
    for batch in _batches(_blocks(ranges, block_size), 500):
        text = output(["debugfs", "-R", "icheck " + " ".join(map(str, batch)), dev], timeout=300)
        for line in text.splitlines()[1:]:
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                inodes.add(int(parts[1]))
            elif parts:
                metadata = True  # a block of no inode: bitmaps, inode tables, journal...
    found = []
    user = sorted(i for i in inodes if i >= FIRST_USER_INODE)
    if user:
        text = output(["debugfs", "-R", "ncheck " + " ".join(map(str, user)), dev], timeout=300)
        for line in text.splitlines()[1:]:
            parts = line.split("\t", 1)
            if len(parts) == 2:
                found.append(re.sub(r"/+", "/", parts[1].strip()))
    if metadata or any(i < FIRST_USER_INODE for i in inodes):
        found.append("(filesystem metadata)")
    return sorted(set(found))
