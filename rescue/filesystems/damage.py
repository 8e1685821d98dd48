"""Which files the unreadable sectors of a capture belong to.

The filesystem's registry entry names them (:meth:`Filesystem.files_at
<rescue.filesystems.interface.Filesystem.files_at>`): for ext2/3/4 debugfs maps
blocks to inodes and inodes to paths; for NTFS ntfscluster lists the files
holding a cluster range. Both read the filesystem's metadata from the source,
read-only, through a read-only loop device over the partition. Bytes that no
file holds are filesystem metadata; a filesystem without such a tool gives no
report (the byte ranges are still in the manifest).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from rescue import kernel
from rescue.errors import ExternalToolError
from rescue.filesystems import registry
from rescue.filesystems.interface import Op

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _partition_view(path: str, start: int, size: int) -> Iterator[str]:
    """A read-only name for the partition: itself, or a loop device over its byte range."""
    if start == 0:
        yield path
        return
    with kernel.loop_device(path, read_only=True, offset=start, size=size) as loop:
        yield loop


def damaged_files(
    path: str, *, start: int, size: int, fstype: str | None, block_size: int,
    ranges: list[tuple[int, int]],
) -> list[str] | None:  # fmt: skip
    """Paths holding the unreadable ``ranges`` (partition-relative); None if unknown."""
    if not ranges:
        return []
    fs = registry.get(fstype)
    if fs is None or not fs.supports(Op.DAMAGE) or fs.missing_tools(Op.DAMAGE):
        return None
    try:
        with _partition_view(path, start, size) as dev:
            return fs.files_at(dev, ranges, block_size)
    except ExternalToolError as exc:
        log.warning("no damage report: %s", exc)
        return None
