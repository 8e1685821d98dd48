"""Which files the unreadable sectors of a capture belong to.

For ext2/3/4, debugfs maps blocks to inodes (``icheck``) and inodes to paths
(``ncheck``); for NTFS, ntfscluster lists the files holding a cluster range.
Both read the filesystem's metadata from the source, read-only, through a
read-only loop device over the partition. Bytes that no file holds are
filesystem metadata; a file system without such a tool gives no report (the
byte ranges are still in the manifest).
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator

from rescue import kernel
from rescue.errors import ExternalToolError
from rescue.system import output, run, which

log = logging.getLogger(__name__)

_EXT = ("ext2", "ext3", "ext4")
_FIRST_USER_INODE = 11


@contextlib.contextmanager
def _partition_view(path: str, start: int, size: int) -> Iterator[str]:
    """A read-only name for the partition: itself, or a loop device over its byte range."""
    if start == 0:
        yield path
        return
    with kernel.loop_device(path, read_only=True, offset=start, size=size) as loop:
        yield loop


def _blocks(ranges: list[tuple[int, int]], block_size: int) -> list[int]:
    found: set[int] = set()
    for off, n in ranges:
        found.update(range(off // block_size, (off + n - 1) // block_size + 1))
    return sorted(found)


def _ext_files(dev: str, ranges: list[tuple[int, int]], block_size: int) -> list[str]:
    blocks = _blocks(ranges, block_size)
    inodes: set[int] = set()
    metadata = False
    for i in range(0, len(blocks), 500):
        batch = " ".join(str(b) for b in blocks[i : i + 500])
        text = output(["debugfs", "-R", f"icheck {batch}", dev], timeout=300)
        for line in text.splitlines()[1:]:
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                inodes.add(int(parts[1]))
            elif parts:
                metadata = True  # a block of no inode: bitmaps, inode tables, journal...
    found = []
    user = sorted(i for i in inodes if i >= _FIRST_USER_INODE)
    if user:
        text = output(["debugfs", "-R", "ncheck " + " ".join(map(str, user)), dev], timeout=300)
        for line in text.splitlines()[1:]:
            parts = line.split("\t", 1)
            if len(parts) == 2:
                found.append(re.sub(r"/+", "/", parts[1].strip()))
    if metadata or any(i < _FIRST_USER_INODE for i in inodes):
        found.append("(filesystem metadata)")
    return sorted(set(found))


def _ntfs_files(dev: str, ranges: list[tuple[int, int]], cluster: int) -> list[str]:
    found: set[str] = set()
    for off, n in ranges:
        lo, hi = off // cluster, (off + n - 1) // cluster
        text = run(["ntfscluster", "-c", f"{lo}-{hi}", dev], check=False, timeout=300)
        for line in text.stdout.decode(errors="replace").splitlines():
            m = re.match(r"Inode (\d+) (/.*)$", line.strip())
            if not m:
                continue
            inode, path = int(m.group(1)), m.group(2)
            path = re.sub(r"/\$[A-Z_]+(\(.*\))?$", "", path) or "/"
            found.add("(filesystem metadata)" if inode < 16 or "/$" in path else path)
    return sorted(found)


def damaged_files(
    path: str, *, start: int, size: int, fstype: str | None, block_size: int,
    ranges: list[tuple[int, int]],
) -> list[str] | None:  # fmt: skip
    """Paths holding the unreadable ``ranges`` (partition-relative); None if unknown."""
    if not ranges:
        return []
    tool = "debugfs" if fstype in _EXT else "ntfscluster" if fstype == "ntfs" else None
    if tool is None or which(tool) is None:
        return None
    try:
        with _partition_view(path, start, size) as dev:
            if fstype in _EXT:
                return _ext_files(dev, ranges, block_size)
            return _ntfs_files(dev, ranges, block_size)
    except ExternalToolError as exc:
        log.warning("no damage report: %s", exc)
        return None
