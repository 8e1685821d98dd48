"""``rescue.json``: what an image holds, written last so its presence means "complete".

The schema is specified in docs/FORMAT.md ("rescue.json"). Readers refuse a
newer ``format_version`` instead of guessing.
"""

from __future__ import annotations

import base64
import enum
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rescue.blockio import write_durable
from rescue.containers.base import LayerInfo, VolumeInfo
from rescue.errors import (
    ImageDamagedError,
    ImageLockedError,
    IncompleteImageError,
    NotAnImageError,
    UnsupportedImageError,
)
from rescue.filesystems import registry
from rescue.image.folder import MAX_MANIFEST, has_member, read_member, sealed_folder
from rescue.image.hashing import sha256_file
from rescue.image.names import INCOMPLETE_MARKER, MANIFEST_NAME
from rescue.image.partclone import MAX_BLOCK_SIZE, MIN_BLOCK_SIZE
from rescue.image.schema import Fields, damaged
from rescue.image.sealing import (
    KEY_FILE,
    SCHEME,
    folder_sealer,
    sealed_name,
    write_sealed_member,
)
from rescue.text import printable

FORMAT_NAME = "rescue-image"
FORMAT_VERSION = 1
ENCRYPTED_FORMAT_VERSION = 2
"""The outer manifest of an encrypted image: older readers refuse it in words."""
INCREMENTAL_FORMAT_VERSION = 3
"""An incremental image (it has a ``base``): older readers refuse it in words."""


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
    layers: tuple[LayerInfo, ...] = ()
    """The volume layers the partition was read through (LUKS, BitLocker, LVM): what
    they are, whether they were read inside, and the volumes inside them."""
    regions: tuple[StoredFile, ...] = ()
    """The region hash list (``rescue/image/regions.py``): one file, none in older images."""
    region_size: int = 0
    """Bytes of partition per region hash (0: no list)."""
    delta: Delta | None = None
    """Set when the stream holds only the regions that changed since the base image (the
    rest is the base's): what the partition held in all. None: the stream holds it all."""

    @property
    def stored(self) -> tuple[StoredFile, ...]:
        """Every file written for this partition's data: the stream's volumes, the region list."""
        return (*self.files, *self.regions)

    @staticmethod
    def from_dict(data: object, where: str = "partition") -> PartitionRecord:
        return _record(Fields(data, where))


@dataclass(frozen=True)
class Delta:
    """A partition stored as a difference from the same partition of the base image."""

    base: str
    """The partition's name in the base image (the disk may have had another kernel name)."""
    used_blocks: int
    """Used blocks of the partition as captured (the stream holds the changed ones)."""
    used_bytes: int
    regions: int
    """Regions holding used data (the records of the region list)."""
    regions_stored: int
    """Of those, the regions whose data the stream holds (changed or new since the base)."""


@dataclass(frozen=True)
class BaseRef:
    """The image an incremental image was captured against."""

    name: str
    """Its folder, a sibling of this image's folder (a plain name)."""
    sha256: str
    """SHA-256 of its ``rescue.json`` as it was when this image was made."""
    created: str


MAX_PARTITIONS = 1024
MAX_FILES = 1_000_000
"""Files listed in one manifest (a stream split into small volumes makes many)."""
MAX_RANGES = 1_000_000
MAX_TAIL = 4 * 1024 * 1024
"""Bytes after a filesystem's last block: at most one block of the largest size."""
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _stored_file(f: Fields) -> StoredFile:
    digest = f.required_text("sha256", max_len=64)
    if not _SHA256.fullmatch(digest):
        raise damaged(f.at("sha256"), "is not a SHA-256 in hex")
    name = f.name("name", "a file")
    assert name is not None
    return StoredFile(name, f.required_int("size"), digest)


def _ranges(f: Fields, key: str, limit: int) -> tuple[tuple[int, int], ...]:
    out = []
    for i, pair in enumerate(f.items(key, max_items=MAX_RANGES)):
        ok = (
            isinstance(pair, list)
            and len(pair) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in pair)
        )
        if not ok or pair[0] + pair[1] > limit:
            raise damaged(f"{f.at(key)}[{i}]", f"is not a byte range inside the {limit} bytes")
        out.append((pair[0], pair[1]))
    return tuple(out)


MAX_LAYER_DEPTH = 4
MAX_VOLUMES = 4096


def _pairs(f: Fields, key: str) -> tuple[tuple[str, str], ...]:
    out = []
    for i, pair in enumerate(f.items(key, max_items=64)):
        if not (
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(v, str) for v in pair)
        ):
            raise damaged(f"{f.at(key)}[{i}]", "is not a pair of texts")
        out.append((printable(pair[0])[:64], printable(pair[1])[:1024]))
    return tuple(out)


def _layer(f: Fields, depth: int = 0) -> LayerInfo:
    if depth >= MAX_LAYER_DEPTH:
        raise damaged(f.at("volumes"), f"nests layers deeper than {MAX_LAYER_DEPTH}")
    return LayerInfo(
        kind=f.required_text("kind", max_len=32),
        name=f.required_text("name", max_len=128),
        uuid=f.text("uuid", optional=True, max_len=256),
        state=f.choice("state", (LayerInfo.READ, LayerInfo.LOCKED, LayerInfo.WHOLE)),
        reason=f.text("reason", optional=True),
        metadata_bytes=f.count("metadata_bytes"),
        details=_pairs(f, "details"),
        volumes=f.each("volumes", lambda v: _volume(v, depth), max_items=MAX_VOLUMES),
    )


def _volume(f: Fields, depth: int) -> VolumeInfo:
    return VolumeInfo(
        name=f.required_text("name", max_len=256),
        size=f.count("size"),
        fstype=f.text("fstype", optional=True, max_len=64),
        used_bytes=f.count("used_bytes"),
        uuid=f.text("uuid", optional=True, max_len=256),
        label=f.text("label", optional=True, max_len=256),
        note=f.text("note", optional=True),
        layers=f.each("layers", lambda inner: _layer(inner, depth + 1), max_items=4),
    )


def _record(f: Fields) -> PartitionRecord:
    stored_as = StoredAs(f.choice("stored_as", tuple(k.value for k in StoredAs)))
    name = f.name("name", "a partition")
    assert name is not None
    size = f.required_int("size")
    fstype = f.text("fstype", optional=True, max_len=64)
    block_size, total, used = f.count("block_size"), f.count("total_blocks"), f.count("used_blocks")
    stream = f.name("stream", "a stream", optional=True)
    if stored_as in DATA_STREAMS:
        if stream is None:
            raise damaged(f.at("stream"), f"is missing for a partition stored as {stored_as}")
        if not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE or block_size & (block_size - 1):
            raise damaged(
                f.at("block_size"),
                f"is {block_size}, not a power of two from {MIN_BLOCK_SIZE} to {MAX_BLOCK_SIZE}",
            )
        if total * block_size >= size + block_size or used > total:
            raise damaged(
                f.where,
                f"has {used} used of {total} blocks of {block_size} bytes: that does not fit "
                f"its {size} bytes",
            )
    if stored_as == StoredAs.PARTCLONE:
        fs = registry.get(fstype)
        if fs is None or not fs.imaged:
            raise damaged(
                f.at("fstype"),
                f"is {printable(repr(fstype))}, not a filesystem this rescue reads: it cannot "
                "restore this partition",
            )
    used_bytes = f.count("used_bytes")
    if used_bytes > max(size, total * block_size):
        raise damaged(f.at("used_bytes"), f"is {used_bytes}, more than the partition's {size}")
    tail = f.text("tail", optional=True, max_len=MAX_TAIL * 4 // 3 + 4)
    if tail is not None:
        try:
            raw_tail = base64.b64decode(tail, validate=True)
        except ValueError as exc:
            raise damaged(f.at("tail"), "is not base64") from exc
        if total * block_size + len(raw_tail) > size:
            raise damaged(f.at("tail"), "does not fit after the filesystem's last block")
    return PartitionRecord(
        name=name,
        number=f.integer("number", low=1, high=1 << 16, optional=True),
        start=f.required_int("start"),
        size=size,
        fstype=fstype,
        uuid=f.text("uuid", optional=True, max_len=256),
        label=f.text("label", optional=True, max_len=256),
        stored_as=stored_as,
        stream=stream,
        block_size=block_size,
        total_blocks=total,
        used_blocks=used,
        used_bytes=used_bytes,
        stream_bytes=f.count("stream_bytes"),
        files=f.each("files", _stored_file, max_items=MAX_FILES),
        warnings=f.texts("warnings", max_items=MAX_RANGES),
        unreadable=_ranges(f, "unreadable", size),
        damaged_files=f.texts("damaged_files", max_items=MAX_RANGES),
        tail=tail,
        layers=f.each("layers", _layer, max_items=4),
        regions=f.each("regions", _stored_file, max_items=1),
        region_size=_region_size(f),
        delta=_delta(f, stored_as, total, used),
    )


def _delta(f: Fields, stored_as: str, total: int, stored: int) -> Delta | None:
    if f.doc.get("delta") is None:
        return None
    d = Fields(f.doc.get("delta"), f.at("delta"))
    used = d.count("used_blocks")
    base = d.name("base", "the base's partition")
    assert base is not None
    delta = Delta(base, used, d.count("used_bytes"), d.count("regions"), d.count("regions_stored"))
    if stored_as != StoredAs.PARTCLONE or not f.objects("regions", max_items=1):
        raise damaged(f.at("delta"), "is only for a partclone stream with its region list")
    if not stored <= used <= total or delta.regions_stored > delta.regions:
        raise damaged(
            f.at("delta"),
            f"says {used} used blocks ({delta.regions_stored} of {delta.regions} regions "
            f"stored) where the stream holds {stored} of {total}",
        )
    return delta


def _region_size(f: Fields) -> int:
    size = f.count("region_size", high=1 << 30)
    if size & (size - 1) or 0 < size < 4096:
        raise damaged(f.at("region_size"), f"is {size}, not a power of two of 4 KiB or more")
    if bool(size) != bool(f.objects("regions", max_items=1)):
        raise damaged(f.at("region_size"), "and the region list go together")
    return size


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
    base: BaseRef | None = None
    """The image this one was captured against (format 3); None: a full image."""

    @property
    def used_bytes(self) -> int:
        """The used data of every partition (of the partition as captured, for a delta)."""
        return sum(p.delta.used_bytes if p.delta else p.used_bytes for p in self.partitions)

    def to_json(self) -> str:
        data = asdict(self)
        # format first, for anyone reading the file by eye
        ordered = {"format": data.pop("format"), "format_version": data.pop("format_version")}
        ordered.update(data)
        return json.dumps(ordered, indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: object) -> Manifest:
        f = Fields(data, MANIFEST_NAME)
        src = Fields(f.doc.get("source"), f.at("source"))
        kind = src.choice("kind", ("disk", "partition"))
        source = SourceIdentity(
            path=src.required_text("path"),
            name=src.name("name", "the source disk") or "",
            kind=kind,
            size=src.required_int("size"),
            model=src.text("model", optional=True),
            serial=src.text("serial", optional=True),
            logical_sector_size=src.choice(
                "logical_sector_size", (512, 1024, 2048, 4096), optional=True
            )
            or 512,
            physical_sector_size=src.integer(
                "physical_sector_size", low=512, high=1 << 20, optional=True, default=512
            )
            or 512,
            partition_table=src.choice("partition_table", ("gpt", "dos", None), optional=True),
        )
        compression = f.mapping("compression")
        if compression.get("algorithm", "zstd") != "zstd":
            raise damaged(
                f.at("compression.algorithm"),
                f"is {printable(repr(compression.get('algorithm')))}; this rescue reads zstd only",
            )
        parts = tuple(
            PartitionRecord.from_dict(p.doc, p.where)
            for p in f.objects("partitions", max_items=MAX_PARTITIONS, optional=False)
        )
        if kind == "disk":
            for p in parts:
                if p.start + p.size > source.size:
                    raise damaged(
                        f"{MANIFEST_NAME}: partition {printable(p.name)}",
                        f"ends at byte {p.start + p.size}, past the end of its "
                        f"{source.size}-byte disk",
                    )
        return cls(
            tool=f.required_text("tool"),
            created=f.required_text("created", max_len=64),
            source=source,
            compression=compression,
            partitions=parts,
            files=f.each("files", _stored_file, max_items=MAX_FILES),
            format=f.required_text("format"),
            format_version=f.required_int("format_version", high=1 << 16),
            extra=f.mapping("extra"),
            base=_base(f),
        )


def _base(f: Fields) -> BaseRef | None:
    version = f.doc.get("format_version")
    if f.doc.get("base") is None:
        if version == INCREMENTAL_FORMAT_VERSION:
            raise damaged(f.at("base"), f"is missing in an image of format {version}")
        return None
    if version != INCREMENTAL_FORMAT_VERSION:
        raise damaged(
            f.at("base"), f"belongs to format {INCREMENTAL_FORMAT_VERSION}, not {version}"
        )
    b = Fields(f.doc.get("base"), f.at("base"))
    name = b.name("name", "the base image")
    assert name is not None
    digest = b.required_text("sha256", max_len=64)
    if not _SHA256.fullmatch(digest):
        raise damaged(b.at("sha256"), "is not a SHA-256 in hex")
    return BaseRef(name, digest, b.required_text("created", max_len=64))


@dataclass(frozen=True)
class OuterManifest:
    """The plain ``rescue.json`` of an encrypted image: what a check without the
    passphrase can know (every stored file's size and hash, who made it and when)."""

    tool: str
    created: str
    files: tuple[StoredFile, ...]

    def to_json(self) -> str:
        doc = {
            "format": FORMAT_NAME,
            "format_version": ENCRYPTED_FORMAT_VERSION,
            "tool": self.tool,
            "created": self.created,
            "encryption": {"scheme": SCHEME, "key_file": KEY_FILE},
            "files": [asdict(f) for f in self.files],
        }
        return json.dumps(doc, indent=2) + "\n"


def _stored_files(image_dir: Path, manifest: Manifest) -> tuple[StoredFile, ...]:
    """Every file of a sealed image's folder with its size and hash (the streams' hashes
    as the capture computed them while writing)."""
    streams = {f.name: f for p in manifest.partitions for f in p.stored}
    out = []
    for name in sorted(os.listdir(image_dir)):
        if name in (MANIFEST_NAME, INCOMPLETE_MARKER) or name.startswith("."):
            continue
        if name in streams:
            out.append(streams[name])
            continue
        path = image_dir / name
        if path.is_file() and not path.is_symlink():
            size, digest = sha256_file(path)
            out.append(StoredFile(name, size, digest))
    return tuple(out)


def write_manifest(image_dir: Path, manifest: Manifest) -> None:
    """Write the manifest atomically: temp file, fsync, rename, fsync the folder.

    In an encrypted image's folder the manifest is sealed, and the plain
    ``rescue.json`` written last lists every stored file with its hash."""
    sealer = folder_sealer(image_dir)
    if sealer is None:
        data = manifest.to_json().encode()
    else:
        write_sealed_member(image_dir, MANIFEST_NAME, manifest.to_json().encode(), sealer)
        outer = OuterManifest(manifest.tool, manifest.created, _stored_files(image_dir, manifest))
        data = outer.to_json().encode()
    final = image_dir / MANIFEST_NAME
    tmp = image_dir / f".{MANIFEST_NAME}.tmp"
    write_durable(tmp, data)
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
    if not has_member(image_dir, MANIFEST_NAME):
        raise IncompleteImageError(
            f"{image_dir} has no {MANIFEST_NAME}: the capture that made it never finished "
            "(or it was not made by rescue).",
            hint="Capture the disk again; an incomplete image must not be trusted.",
        )
    data = _manifest_doc(image_dir, read_member(image_dir, MANIFEST_NAME, MAX_MANIFEST,
                                                "the manifest"), path)  # fmt: skip
    if data.get("format_version") == ENCRYPTED_FORMAT_VERSION:
        handler = sealed_folder(image_dir)
        if handler is None:
            raise ImageLockedError(
                f"{image_dir} is an encrypted image: it opens with its passphrase.",
                hint="Give it with --image-passphrase-file FILE (its first line), or run the "
                "command on a terminal to be asked for it.",
            )
        path = image_dir / sealed_name(MANIFEST_NAME)
        inner = handler.read(image_dir, MANIFEST_NAME, MAX_MANIFEST, "the sealed manifest")
        data = _manifest_doc(image_dir, inner, path)
        if data.get("format_version") != FORMAT_VERSION:
            raise ImageDamagedError(f"{path} holds no plain manifest of format {FORMAT_VERSION}.")
    return Manifest.from_dict(data)


def _manifest_doc(image_dir: Path, raw: bytes, path: Path) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ImageDamagedError(f"{path} is not valid JSON: {printable(str(exc))[:200]}.") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise ImageDamagedError(f"{path} is not a rescue manifest.")
    version = data.get("format_version")
    if not isinstance(version, int):
        raise ImageDamagedError(f"{path} has no valid format_version.")
    if version > INCREMENTAL_FORMAT_VERSION or (
        version == ENCRYPTED_FORMAT_VERSION and not isinstance(data.get("encryption"), dict)
    ):
        raise UnsupportedImageError(
            f"{image_dir} was written in image format {version}; this rescue reads up to "
            f"format {INCREMENTAL_FORMAT_VERSION}.",
            hint="Use a newer rescue to read it.",
        )
    return data


def read_outer_manifest(image_dir: Path) -> OuterManifest | None:
    """The plain manifest of an encrypted image (None: the image is not encrypted)."""
    path = image_dir / MANIFEST_NAME
    data = _manifest_doc(image_dir, read_member(image_dir, MANIFEST_NAME, MAX_MANIFEST,
                                                "the manifest"), path)  # fmt: skip
    if data.get("format_version") != ENCRYPTED_FORMAT_VERSION:
        return None
    f = Fields(data, MANIFEST_NAME)
    enc = f.mapping("encryption")
    if enc.get("scheme") != SCHEME:
        raise UnsupportedImageError(
            f"{image_dir} is encrypted with {printable(repr(enc.get('scheme')))}; this rescue "
            f"reads {SCHEME}.",
            hint="Use a newer rescue to read it.",
        )
    return OuterManifest(
        tool=f.required_text("tool"),
        created=f.required_text("created", max_len=64),
        files=f.each("files", _stored_file, max_items=MAX_FILES),
    )
