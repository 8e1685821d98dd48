"""Which partitions of a source need a key, so a front end can ask before a capture.

:func:`encrypted_partitions` reads only the head of each partition (the layer
signatures), never anything that needs a key; the capture itself tries every
key given before it writes anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from rescue.blockio import Window, binary
from rescue.containers.stack import ENCRYPTED, find_container
from rescue.errors import BadInputError, RescueError
from rescue.filesystems import registry
from rescue.image import layout as layout_mod
from rescue.image.view import open_image
from rescue.operations.source import Source, resolve_source


@dataclass(frozen=True)
class EncryptedPartition:
    name: str
    """Kernel name (``sda3``): the key a capture's secrets are given by."""
    what: str
    """``LUKS2 (UUID ...)``, ``BitLocker``."""
    size: int
    """Bytes stored when it is left locked (every block, as ciphertext)."""


def encrypted_partitions(source_path: str) -> list[EncryptedPartition]:
    """The encrypted partitions of ``source_path`` (a disk, a partition, a disk file)."""
    try:
        return _encrypted(resolve_source(source_path))
    except (OSError, RescueError):
        return []  # the capture itself reads the disk again and says what is wrong


def _encrypted(src: Source) -> list[EncryptedPartition]:
    fd = os.open(src.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        parts = [(src.name, 0, src.size)]
        if not src.is_partition:
            disk = layout_mod.read_source_layout(src.path, src.name)
            if disk.table is not None:
                parts = [(p.name, p.start, p.size) for p in disk.partitions]
        found = []
        for name, start, size in parts:
            layer = find_container(binary(Window(fd, start, size)), size)
            if layer is not None and layer.kind in ENCRYPTED:
                found.append(EncryptedPartition(name, layer.describe(), size))
        return found
    finally:
        os.close(fd)


def partition_name(given: str) -> str:
    """The kernel name of a partition given as ``/dev/sda3``, a by-id link or ``sda3``."""
    if given.startswith("/"):
        return os.path.basename(os.path.realpath(given))
    if not given or "/" in given or given in (".", ".."):
        raise BadInputError(f"{given!r} is not a partition name (give /dev/NAME or NAME).")
    return given


def encrypted_image_partition(image_dir: Path, number: int | None) -> str | None:
    """What the image's partition ``number`` is, when it was stored still encrypted."""
    try:
        image = open_image(image_dir)
    except RescueError:
        return None  # the command itself says what is wrong with the folder
    parts = [p for p in image.parts if number is None or p.number == number]
    if len(parts) != 1:
        return None
    fs = registry.get(parts[0].fstype)
    if fs is None or not fs.layer or not fs.encrypted:
        return None
    return f"{parts[0].name} is a {fs.human_name}"
