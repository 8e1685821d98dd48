"""``rescue.json``: what an image holds, written last so its presence means "complete".

The schema is specified in docs/FORMAT.md ("rescue.json"). Readers refuse a
newer ``format_version`` instead of guessing.
"""

from __future__ import annotations

import enum
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rescue.blockio import write_all
from rescue.errors import (
    ImageDamagedError,
    IncompleteImageError,
    NotAnImageError,
    UnsupportedImageError,
)
from rescue.image.names import MANIFEST_NAME

FORMAT_NAME = "rescue-image"
FORMAT_VERSION = 1


class StoredAs(enum.StrEnum):
    """How a partition is stored in an image (``stored_as`` in rescue.json; the values are
    the on-disk words, so a member equals and serialises as its string)."""

    PARTCLONE = "partclone"
    """Used blocks only, in a partclone stream."""
    DD = "dd"
    """Every byte, in a raw stream."""
    SWAP = "swap"
    """Nothing but its identity (Clonezilla's swap info file): recreated on restore."""
    NONE = "none"
    """Nothing stored."""


DATA_STREAMS = (StoredAs.PARTCLONE, StoredAs.DD)
"""The kinds that hold the partition's data in a stream."""


@dataclass(frozen=True)
class StoredFile:
    """One file of the image folder with its size and SHA-256."""

    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class PartitionRecord:
    """One partition of the source and how it was stored."""

    name: str
    number: int | None
    start: int
    size: int
    fstype: str | None
    uuid: str | None
    label: str | None
    stored_as: str
    """A :class:`StoredAs` value: "partclone" (used blocks), "dd" (every byte), "swap" (info
    file only), "none"."""
    stream: str | None = None
    """Base name of the data stream (without split suffix), None when nothing is stored."""
    block_size: int = 0
    total_blocks: int = 0
    used_blocks: int = 0
    used_bytes: int = 0
    stream_bytes: int = 0
    """Size of the decompressed stream."""
    files: tuple[StoredFile, ...] = ()
    warnings: tuple[str, ...] = ()
    unreadable: tuple[tuple[int, int], ...] = ()
    """Byte ranges (offset within the partition, length) that could not be read."""
    damaged_files: tuple[str, ...] = ()
    """Paths of the files (and metadata) that hold unreadable bytes, where known."""
    tail: str | None = None
    """Base64 of the partition's bytes after the filesystem's last whole block (NTFS keeps
    its backup boot sector there), which a partclone stream cannot carry."""

    @staticmethod
    def from_dict(data: dict[str, Any]) -> PartitionRecord:
        return _record_from_dict(data)


def _record_from_dict(p: dict[str, Any]) -> PartitionRecord:
    return PartitionRecord(
        **{
            **p,
            "files": tuple(StoredFile(**f) for f in p.get("files", ())),
            "warnings": tuple(p.get("warnings", ())),
            "unreadable": tuple((int(a), int(b)) for a, b in p.get("unreadable", ())),
            "damaged_files": tuple(p.get("damaged_files", ())),
        }
    )


@dataclass(frozen=True)
class SourceIdentity:
    path: str
    name: str
    kind: str
    """"disk" or "partition"."""
    size: int
    model: str | None = None
    serial: str | None = None
    logical_sector_size: int = 512
    physical_sector_size: int = 512
    partition_table: str | None = None


@dataclass(frozen=True)
class Manifest:
    tool: str
    created: str
    source: SourceIdentity
    compression: dict[str, Any]
    partitions: tuple[PartitionRecord, ...]
    files: tuple[StoredFile, ...] = ()
    """The layout files (partition table dumps, boot code, lists) with their hashes."""
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def used_bytes(self) -> int:
        return sum(p.used_bytes for p in self.partitions)

    def to_json(self) -> str:
        data = asdict(self)
        # format first, for anyone reading the file by eye
        ordered = {"format": data.pop("format"), "format_version": data.pop("format_version")}
        ordered.update(data)
        return json.dumps(ordered, indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        try:
            src = SourceIdentity(**data["source"])
            parts = tuple(PartitionRecord.from_dict(p) for p in data["partitions"])
            return cls(
                tool=data["tool"],
                created=data["created"],
                source=src,
                compression=dict(data.get("compression", {})),
                partitions=parts,
                files=tuple(StoredFile(**f) for f in data.get("files", ())),
                format=data["format"],
                format_version=data["format_version"],
                extra=dict(data.get("extra", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ImageDamagedError(f"The manifest {MANIFEST_NAME} is malformed: {exc}.") from exc


def write_manifest(image_dir: Path, manifest: Manifest) -> None:
    """Write the manifest atomically: temp file, fsync, rename, fsync the folder."""
    final = image_dir / MANIFEST_NAME
    tmp = image_dir / f".{MANIFEST_NAME}.tmp"
    data = manifest.to_json().encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        write_all(fd, data, tmp)
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(final)
    fsync_dir(image_dir)


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (new or renamed files) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_manifest(image_dir: Path) -> Manifest:
    """Read and check the manifest, with an error a technician can act on."""
    if not image_dir.is_dir():
        raise NotAnImageError(f"{image_dir} is not a folder.")
    path = image_dir / MANIFEST_NAME
    if not path.exists():
        raise IncompleteImageError(
            f"{image_dir} has no {MANIFEST_NAME}: the capture that made it never finished "
            "(or it was not made by rescue).",
            hint="Capture the disk again; an incomplete image must not be trusted.",
        )
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ImageDamagedError(f"{path} cannot be read: {exc}.") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise ImageDamagedError(f"{path} is not a rescue manifest.")
    version = data.get("format_version")
    if not isinstance(version, int):
        raise ImageDamagedError(f"{path} has no valid format_version.")
    if version > FORMAT_VERSION:
        raise UnsupportedImageError(
            f"{image_dir} was written in image format {version}; this rescue reads up to "
            f"format {FORMAT_VERSION}.",
            hint="Use a newer rescue to read it.",
        )
    return Manifest.from_dict(data)
