"""One view of an image folder, whether rescue or Clonezilla wrote it."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rescue.errors import ImageDamagedError, IncompleteImageError, NotAnImageError, RescueError
from rescue.filesystems.swap import SWAP
from rescue.image import layout as layout_mod
from rescue.image import names
from rescue.image.chain import Link, chain_chunks, image_chain, partition_links
from rescue.image.folder import (
    MAX_LAYOUT_FILE,
    has_member,
    member_size,
    read_member,
)
from rescue.image.manifest import Manifest, StoredAs, StoredFile, read_manifest
from rescue.image.names import (
    CLONEZILLA_LOG,
    INCOMPLETE_MARKER,
    MANIFEST_NAME,
    PARTS_FILE,
    STREAM_SUFFIX,
)
from rescue.image.partclone import HEADER_SIZE, PartcloneHeader
from rescue.image.streams import open_stream_chunks
from rescue.text import printable


@dataclass(frozen=True)
class ImagePart:
    name: str
    number: int | None
    start: int
    size: int
    fstype: str | None
    stored_as: str
    """A :class:`~rescue.image.manifest.StoredAs`: partclone, dd, swap or none."""
    stream: Path | None
    """Base path of the stream (split suffixes are found by the volume reader)."""
    compression: str
    uuid: str | None = None
    label: str | None = None
    used_bytes: int = 0
    tail: bytes | None = None
    """Bytes after the filesystem's last block (NTFS's backup boot sector)."""
    tail_offset: int = 0
    """Where ``tail`` goes: the end of the filesystem's last block."""
    links: tuple[Link, ...] = ()
    """For a partition of an incremental image: its stream and those it builds on, newest
    first, down to a full one (:mod:`rescue.image.chain`); empty when ``stream`` holds it all."""
    region_size: int = 0


@dataclass(frozen=True)
class ImageView:
    folder: Path
    kind: str
    """"disk" or "partition"."""
    disk_name: str | None
    parts: tuple[ImagePart, ...]
    manifest: Manifest | None
    """None for an image written by Clonezilla (no rescue.json)."""
    table: str | None = None
    """gpt, dos or None (a partition image)."""
    bases: tuple[Path, ...] = ()
    """For an incremental image, the folders of the images it builds on, its base first."""

    @property
    def required_size(self) -> int:
        """Smallest target that holds every partition (and a GPT's backup at the end)."""
        end = max((p.start + p.size for p in self.parts), default=0)
        if self.table == "gpt":
            end += 33 * 512  # the backup GPT after the last partition
        return end

    @property
    def used_bytes(self) -> int:
        return sum(p.used_bytes for p in self.parts)


def open_image(folder: Path) -> ImageView:
    """Read an image folder; refuses an incomplete rescue capture."""
    if not folder.is_dir():
        raise NotAnImageError(f"{folder} is not a folder.")
    if (folder / MANIFEST_NAME).exists():
        return _from_manifest(folder, read_manifest(folder))
    if (folder / INCOMPLETE_MARKER).exists() or _written_by_rescue(folder):
        raise IncompleteImageError(
            f"{folder} is an incomplete image: its capture did not finish.",
            hint="Capture the disk again; an incomplete image must not be trusted.",
        )
    return _from_layout(folder)


def part_chunks(part: ImagePart) -> Iterator[bytes]:
    """The decoded stream of ``part``: its own, or composed from its chain (for a partition
    of an incremental image), as a full capture would have written it."""
    assert part.stream is not None
    if part.links:
        return chain_chunks(part.links, part.region_size)
    return open_stream_chunks(part.stream, part.compression)


def check_present(folder: Path, stored: StoredFile) -> None:
    """The file is a regular file of the folder with the size the manifest recorded.

    Cheap (no hashing); a symbolic link, a FIFO or a device in its place is refused.
    """
    size = member_size(folder, stored.name)
    if size != stored.size:
        raise ImageDamagedError(
            f"{printable(stored.name)} has {size} bytes; the manifest recorded {stored.size} "
            "(truncated or overwritten)."
        )


def table_files(image: ImageView) -> list[str]:
    """The files a restore of the partition table reads (none for a partition image)."""
    if image.kind != "disk" or image.disk_name is None:
        return []
    disk = image.disk_name
    wanted = [names.sfdisk_dump(disk), names.mbr_file(disk)]
    if image.table != "gpt" and has_member(image.folder, names.hidden_data_file(disk)):
        wanted.append(names.hidden_data_file(disk))
    return wanted


def check_all_present(image: ImageView) -> None:
    """Every file a restore will read is a regular file of the folder: before anything is written.

    For rescue's images, with the size the manifest recorded.
    """
    for name in table_files(image):
        member_size(image.folder, name, "a partition-table file")
    for part in image.parts:
        if part.stored_as == StoredAs.SWAP and image.manifest is None:
            info = names.swap_info_file(part.name)
            if has_member(image.folder, info):
                member_size(image.folder, info, "a swap partition's identity")
    if image.manifest is None:
        return
    m = image.manifest
    for stored in (*m.files, *(f for p in m.partitions for f in p.files)):
        check_present(image.folder, stored)


def _written_by_rescue(folder: Path) -> bool:
    """Our captures sign Clonezilla's log; such a folder without rescue.json is unfinished."""
    try:
        head = read_member(folder, CLONEZILLA_LOG, MAX_LAYOUT_FILE)
    except RescueError:
        return False
    return head.decode(errors="replace").startswith(layout_mod.LOG_SIGNATURE)


def _from_manifest(folder: Path, manifest: Manifest) -> ImageView:
    chain = image_chain(folder, manifest) if manifest.base is not None else []
    parts = tuple(
        ImagePart(
            name=r.name,
            number=r.number,
            start=r.start,
            size=r.size,
            fstype=r.fstype,
            stored_as=r.stored_as,
            stream=folder / r.stream if r.stream else None,  # a plain name: the schema checks it
            compression="zst",
            uuid=r.uuid,
            label=r.label,
            used_bytes=r.delta.used_bytes if r.delta else r.used_bytes,
            tail=base64.b64decode(r.tail) if r.tail else None,
            tail_offset=r.total_blocks * r.block_size,
            links=partition_links(chain, r.name) if r.delta else (),
            region_size=r.region_size,
        )
        for r in manifest.partitions
    )
    return ImageView(
        folder=folder,
        kind=manifest.source.kind,
        disk_name=manifest.source.name if manifest.source.kind == "disk" else None,
        parts=parts,
        manifest=manifest,
        table=manifest.source.partition_table,
        bases=tuple(c.folder for c in chain[1:]),
    )


def _from_layout(folder: Path) -> ImageView:
    """An image written by Clonezilla: its own files say what it holds."""
    layout = layout_mod.read_image_layout(folder)
    entries = {e.name: e for e in layout.table.partitions} if layout.table else {}
    if layout.disk is None and len(layout.parts) != 1:
        raise NotAnImageError(
            f"{folder} holds {len(layout.parts)} separate partitions; "
            "rescue restores a partition image with exactly one."
        )
    parts = []
    for name in layout.parts:
        entry = entries.get(name)
        if layout.disk is not None and entry is None:
            raise NotAnImageError(
                f"{folder}: partition {name} is not in the saved partition table."
            )
        stream = layout.streams.get(name)
        swap = layout.swap.get(name)
        if stream is not None:
            stored_as, fstype = stream.kind, stream.fstype
        elif swap is not None:
            stored_as, fstype = StoredAs.SWAP, SWAP.name
        else:
            stored_as, fstype = StoredAs.NONE, None
        size = entry.size if entry else 0
        used = 0
        if entry is None and stream is not None and stream.kind == StoredAs.PARTCLONE:
            size, used = _sizes_from_header(stream.base, stream.compression)
        parts.append(
            ImagePart(
                name=name,
                number=entry.number if entry else None,
                start=entry.start if entry else 0,
                size=size,
                used_bytes=used,
                fstype=fstype,
                stored_as=stored_as,
                stream=stream.base if stream else None,
                compression=stream.compression if stream else "",
                uuid=swap.get("UUID") if swap else None,
                label=swap.get("LABEL") if swap else None,
            )
        )
    return ImageView(
        folder=folder,
        kind="disk" if layout.disk else "partition",
        disk_name=layout.disk,
        parts=tuple(parts),
        manifest=None,
        table=layout.table.table if layout.table else None,
    )


def _sizes_from_header(stream: Path, compression: str) -> tuple[int, int]:
    """(partition size, used bytes) from a stream's partclone header; (0, 0) if unreadable.

    A partition image written by Clonezilla records no partition table: its
    stream's header is the only place that knows how large the partition was.
    """
    head = b""
    try:
        chunks = open_stream_chunks(stream, compression)
        try:
            for chunk in chunks:
                head += chunk
                if len(head) >= HEADER_SIZE:
                    break
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        header = PartcloneHeader.unpack(head[:HEADER_SIZE])
    except (RescueError, OSError):
        return 0, 0
    return header.device_size, header.used_blocks * header.block_size


def looks_like_image(folder: Path) -> bool:
    return (
        (folder / MANIFEST_NAME).is_file()
        or (folder / CLONEZILLA_LOG).is_file()
        or ((folder / PARTS_FILE).is_file() and any(folder.glob(f"*{STREAM_SUFFIX}.*")))
    )


def find_images(roots: list[Path], depth: int = 2) -> list[Path]:
    """Image folders in ``roots`` and up to ``depth`` levels below them (hidden ones skipped)."""
    found: list[Path] = []
    seen: set[Path] = set()

    def walk(folder: Path, level: int) -> None:
        try:
            real = folder.resolve()
        except OSError:
            return
        if real in seen:
            return
        seen.add(real)
        if looks_like_image(folder):
            found.append(folder)
            return
        if level >= depth:
            return
        try:
            children = sorted(
                p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")
            )
        except OSError:
            return
        for child in children:
            walk(child, level + 1)

    for root in roots:
        walk(root, 0)
    return found
