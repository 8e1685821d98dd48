"""Incremental images: a partition read through the chain of images it was captured against.

An incremental image (``rescue capture --base``) stores, for a partition, a
partclone stream of only the regions whose digests differ from the base's
region list (FORMAT.md section 13); every other region holding used data is the
base's, which may itself be incremental. Reading region *r* of the partition:

- not in the newest link's region list: no used byte there (zeros);
- otherwise, the newest link whose stream holds any block of *r* holds all of
  *r*: a region is stored whole or not at all, and a region not stored had the
  same digest, so the same used blocks and bytes, as in the link below.

:func:`region_owners` works that out once for every region (one byte each);
:func:`chain_chunks` gives the partclone stream a full capture would have
written (byte for byte), and :class:`ChainReader` reads the partition at random.
"""

from __future__ import annotations

import hashlib
import heapq
import os
import stat
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from rescue.blockio import binary
from rescue.errors import BaseImageError, ImageDamagedError, RescueError
from rescue.image.folder import MAX_MANIFEST, read_member
from rescue.image.manifest import Manifest, PartitionRecord, StoredAs, read_manifest
from rescue.image.names import MANIFEST_NAME
from rescue.image.partclone import Bitmap, BlockEncoder, PartcloneHeader, StreamReader, crc32
from rescue.image.random_access import PartitionReader, Piece, zeros
from rescue.image.regions import read_regions
from rescue.image.seekable import INFLIGHT
from rescue.image.streams import ChunkFile, open_stream_chunks
from rescue.image.volumes import VolumeReader

MAX_CHAIN = 250
"""Links in one chain (an owner is one byte; 255 and 254 mean "no used data" and "not yet")."""
_FREE = 0xFF
_WANTED = 0xFE
_OUT = 4 << 20
"""Bytes of composed stream given out at a time."""


@dataclass(frozen=True)
class Link:
    """One image's stream of a partition, in a chain (newest first)."""

    stream: Path
    """Base path of the stream (split volumes found by name)."""
    regions: Path
    """Its region list."""


@dataclass(frozen=True)
class ChainedImage:
    folder: Path
    manifest: Manifest


def manifest_digest(folder: Path) -> str:
    """SHA-256 of an image's ``rescue.json`` as stored: what an image built on it records."""
    return hashlib.sha256(
        read_member(folder, MANIFEST_NAME, MAX_MANIFEST, "the manifest")
    ).hexdigest()


def base_folder(folder: Path, name: str) -> Path:
    """The base named ``name`` of the image in ``folder``: a real folder beside it."""
    path = folder.parent / name
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise BaseImageError(
            f"{folder.name} is an incremental image of {name}, which is not beside it in "
            f"{folder.parent}: without it, it cannot be read.",
            hint=f"Put the folder {name} back next to {folder.name} (images of one chain live in "
            "one folder).",
        ) from None
    if not stat.S_ISDIR(st.st_mode):
        raise BaseImageError(
            f"{path} (the base of {folder.name}) is not a folder"
            + (
                " but a symbolic link, which rescue does not follow."
                if stat.S_ISLNK(st.st_mode)
                else "."
            )
        )
    return path


def image_chain(folder: Path, manifest: Manifest) -> list[ChainedImage]:
    """The image and every base under it, newest first, each checked against the manifest
    hash its child recorded."""
    chain = [ChainedImage(folder, manifest)]
    seen = {folder.resolve()}
    while (ref := chain[-1].manifest.base) is not None:
        child = chain[-1].folder
        if len(chain) >= MAX_CHAIN:
            raise BaseImageError(f"{folder.name}'s chain has more than {MAX_CHAIN} images.")
        path = base_folder(child, ref.name)
        if path.resolve() in seen:
            raise BaseImageError(f"{child.name}'s base {ref.name} is in its own chain (a loop).")
        seen.add(path.resolve())
        try:
            digest = manifest_digest(path)
            base = read_manifest(path)
        except RescueError as exc:
            raise BaseImageError(
                f"{path}, the base of {child.name}, cannot be read: {exc.message}", hint=exc.hint
            ) from exc
        except OSError as exc:
            raise BaseImageError(
                f"{path}, the base of {child.name}, cannot be read: {exc.strerror or exc}."
            ) from exc
        if digest != ref.sha256:
            raise BaseImageError(
                f"{path} is not the base {child.name} was captured against: its rescue.json has "
                f"changed (SHA-256 {digest[:16]}..., recorded {ref.sha256[:16]}...).",
                hint="Find the original base image; an image of another capture cannot stand in.",
            )
        chain.append(ChainedImage(path, base))
    return chain


def partition_links(chain: Sequence[ChainedImage], name: str) -> tuple[Link, ...]:
    """The links holding partition ``name`` of the newest image, down to the full one; empty
    when the newest image stores it whole. Each delta names its partition in the base."""
    links: list[Link] = []
    for image in chain:
        record = _record(image, name)
        if not links and record.delta is None:
            return ()
        if record.stream is None or not record.regions or record.stored_as != StoredAs.PARTCLONE:
            raise BaseImageError(
                f"{image.folder.name} holds no partclone stream with region list for {name}, "
                "which the image above it builds on."
            )
        regions = image.folder / record.regions[0].name
        links.append(Link(image.folder / record.stream, regions))
        if record.delta is None:
            return tuple(links)
        name = record.delta.base
    raise BaseImageError(
        f"The chain of {chain[0].folder.name} ends without a full image of {name}."
    )


def _record(image: ChainedImage, name: str) -> PartitionRecord:
    for r in image.manifest.partitions:
        if r.name == name:
            return r
    raise BaseImageError(
        f"{image.folder.name} has no partition {name}, which the image above it builds on."
    )


# --- which link holds which region ------------------------------------------------------------


def _blocks_per_region(header: PartcloneHeader, region_size: int, name: str) -> int:
    if region_size % header.block_size:
        raise ImageDamagedError(
            f"{name}: blocks of {header.block_size} bytes do not divide its regions of "
            f"{region_size}."
        )
    return region_size // header.block_size


def _same_geometry(headers: Sequence[PartcloneHeader], links: Sequence[Link]) -> None:
    top = headers[0]
    for h, link in zip(headers[1:], links[1:], strict=True):
        if (h.fs, h.block_size, h.total_blocks, h.device_size) != (
            top.fs, top.block_size, top.total_blocks, top.device_size
        ):  # fmt: skip
            raise ImageDamagedError(
                f"{link.stream.name} in {link.stream.parent.name} describes another filesystem "
                f"({h.total_blocks} blocks of {h.block_size}) than {links[0].stream.name} "
                f"({top.total_blocks} of {top.block_size}): the chain does not fit together."
            )


def region_owners(
    links: Sequence[Link],
    headers: Sequence[PartcloneHeader],
    bitmaps: Sequence[Bitmap],
    region_size: int,
) -> bytearray:
    """For each region of the partition, the index of the link holding it (``0xFF``: none)."""
    _same_geometry(headers, links)
    top = headers[0]
    bpr = _blocks_per_region(top, region_size, links[0].stream.name)
    count = -(-top.total_blocks // bpr)
    owner = bytearray(b"\xff") * count
    with VolumeReader([links[0].regions]) as v:
        try:
            for region, _digest in read_regions(binary(v)):
                if region >= count:
                    raise ImageDamagedError(
                        f"{links[0].regions.name} lists region {region}, past the partition's end."
                    )
                owner[region] = _WANTED
        except ValueError as exc:
            raise ImageDamagedError(f"{links[0].regions.name}: {exc}.") from exc
    for i, (header, bitmap) in enumerate(zip(headers, bitmaps, strict=True)):
        for first, n in bitmap.runs(header.total_blocks):
            for r in range(first // bpr, (first + n - 1) // bpr + 1):
                if owner[r] == _WANTED:
                    owner[r] = i
    lost = owner.find(_WANTED)
    if lost >= 0:
        raise ImageDamagedError(
            f"{links[0].stream.name}: region {lost} (partition bytes from {lost * region_size}) "
            "holds used data that no image of the chain stores."
        )
    return owner


def _owned(first: int, count: int, owner: bytearray, i: int, bpr: int) -> Iterator[tuple[int, int]]:
    """The blocks of ``[first, first + count)`` in regions link ``i`` holds, as ``[a, b)`` spans."""
    a, end = first, first + count
    lo = -1
    while a < end:
        stop = min(end, (a // bpr + 1) * bpr)
        if owner[a // bpr] == i:
            if lo < 0:
                lo = a
        elif lo >= 0:
            yield lo, a
            lo = -1
        a = stop
    if lo >= 0:
        yield lo, end


def _set_bits(bm: bytearray, a: int, b: int) -> None:
    while a < b and a & 7:
        bm[a >> 3] |= 1 << (a & 7)
        a += 1
    while b > a and b & 7:
        b -= 1
        bm[b >> 3] |= 1 << (b & 7)
    if a < b:
        bm[a >> 3 : b >> 3] = b"\xff" * ((b - a) >> 3)


def effective_bitmap(
    headers: Sequence[PartcloneHeader], bitmaps: Sequence[Bitmap], owner: bytearray, bpr: int
) -> tuple[bytearray, int]:
    """The partition's used-block bitmap (each region's bits from the link holding it), and
    how many blocks it marks."""
    top = headers[0]
    bm = bytearray(top.bitmap_bytes)
    used = 0
    for i, bitmap in enumerate(bitmaps):
        for first, n in bitmap.runs(top.total_blocks):
            for a, b in _owned(first, n, owner, i, bpr):
                _set_bits(bm, a, b)
                used += b - a
    return bm, used


# --- the composed stream --------------------------------------------------------------------


def _owned_blocks(
    i: int, reader: StreamReader, owner: bytearray, bpr: int
) -> Iterator[tuple[int, int, memoryview]]:
    bs = reader.header.block_size
    for first, pieces, n in reader.iter_pieces():
        data = memoryview(b"".join(pieces))
        for a, b in _owned(first, n // bs, owner, i, bpr):
            yield a, i, data[(a - first) * bs : (b - first) * bs]


def chain_chunks(links: Sequence[Link], region_size: int) -> Iterator[bytes]:
    """The decoded partclone stream of the partition as a full capture writes it (header,
    bitmap, every used block with its strip checksums), composed from the chain's streams."""
    readers = [
        StreamReader(ChunkFile(open_stream_chunks(link.stream, "zst")), name=link.stream.name)
        for link in links
    ]
    headers = [r.header for r in readers]
    bitmaps = [r.bitmap for r in readers]
    owner = region_owners(links, headers, bitmaps, region_size)
    bpr = region_size // headers[0].block_size
    bitmap, used = effective_bitmap(headers, bitmaps, owner, bpr)
    header = replace(headers[0], used_blocks=used)
    yield header.pack() + bytes(bitmap) + struct.pack("<I", crc32(bitmap))
    del bitmap
    encoder = BlockEncoder(header)
    bs = header.block_size
    merged = heapq.merge(*(_owned_blocks(i, r, owner, bpr) for i, r in enumerate(readers)))
    out: list[bytes | memoryview] = []
    size = 0
    written = 0
    for _block, _i, data in merged:
        out.extend(encoder.encode_pieces(data))
        size += len(data)
        written += len(data) // bs
        if size >= _OUT:
            yield b"".join(out)
            out, size = [], 0
    out.append(encoder.finish())
    yield b"".join(out)
    if written != used:
        raise ImageDamagedError(
            f"{links[0].stream.name}: the chain gave {written} blocks where its bitmap marks "
            f"{used}."
        )


# --- random access --------------------------------------------------------------------------


class ChainReader:
    """``pread`` on a partition stored in a chain: each region read from the link holding it."""

    def __init__(
        self,
        links: Sequence[Link],
        region_size: int,
        *,
        size: int | None = None,
        cache_frames: int = 16,
        cache_bytes: int = INFLIGHT,
        prefetch: int = 0,
    ) -> None:
        """Open every link's stream (``size`` is the partition's). The frame cache is shared
        out: an increment's stream keeps at most what it holds (usually little) and a
        share of half of it; the full image at the bottom, which holds most of the data,
        the rest."""
        self._readers: list[PartitionReader] = []
        try:
            for link in links:
                self._readers.append(
                    PartitionReader(
                        link.stream,
                        size=size,
                        cache_frames=cache_frames,
                        cache_bytes=cache_bytes,
                        prefetch=prefetch,
                    )
                )
            headers = [r.header for r in self._readers]
            bitmaps = [r.bitmap for r in self._readers]
            self._owner = region_owners(links, headers, bitmaps, region_size)
        except BaseException:
            self.close()
            raise
        deltas = self._readers[:-1]
        given = 0
        for r in deltas:
            share = min(r.stream_size, cache_bytes // (2 * len(deltas)))
            r.limit_cache(share)
            given += share
        self._readers[-1].limit_cache(cache_bytes - given)
        self.header = headers[0]
        self.size = self._readers[0].size
        self.raw = False
        self._region = region_size

    def pieces(self, offset: int, length: int) -> list[Piece]:
        end = min(offset + length, self.size)
        out: list[Piece] = []
        pos = offset
        rs = self._region
        owner = self._owner
        while pos < end:
            r = pos // rs
            who = owner[r] if r < len(owner) else _FREE
            stop = (r + 1) * rs
            while stop < end and stop // rs < len(owner) and owner[stop // rs] == who:
                stop += rs
            stop = min(stop, end)
            if who == _FREE:
                out.extend(zeros(stop - pos))
            else:
                out.extend(self._readers[who].pieces(pos, stop - pos))
            pos = stop
        return out

    def pread(self, offset: int, length: int) -> bytes:
        return b"".join(self.pieces(offset, length))

    def close(self) -> None:
        for r in self._readers:
            r.close()
        self._readers = []
