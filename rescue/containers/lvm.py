"""LVM2 physical volumes.

A label sector (``LABELONE`` ... ``LVM2 001``) in one of the first four sectors
points to the PV header: the PV's UUID, its size, the data area (where the
physical extents start, ``pe_start``) and the metadata areas, which hold the
volume group's text metadata (a ring buffer after the label, usually in the
first MiB).

``probe`` recognises the PV from its label. ``open_layer`` reads through it:
the metadata areas' current text (parsed by :mod:`rescue.containers.lvm_metadata`)
gives the volume group, and each LV whose linear or striped segments all lie on
this PV becomes a volume read through its extents; what cannot be read inside
(thin pools, RAID, mirrors, caches, snapshot stores, LVs on several PVs) is
stored whole with the reason, and free extents are not stored.
"""

from __future__ import annotations

import bisect
import itertools
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from rescue.blockio import merge_ranges
from rescue.containers.base import Container, Opened
from rescue.containers.lvm_metadata import (
    MAX_TEXT,
    SECTOR,
    LogicalVolume,
    PhysicalVolume,
    Segment,
    VolumeGroup,
    parse,
    volume_group,
)
from rescue.errors import FilesystemError
from rescue.units import human_size

LABEL = b"LABELONE"
TYPE = b"LVM2 001"
_MAX_AREAS = 16


def _uuid(raw: bytes) -> str:
    text = raw.decode("ascii", errors="replace")
    cuts = (6, 4, 4, 4, 4, 4, 6)
    out, pos = [], 0
    for n in cuts:
        out.append(text[pos : pos + n])
        pos += n
    return "-".join(out)


def _areas(head: bytes, pos: int) -> tuple[list[tuple[int, int]], int]:
    """A zero-terminated list of (offset, size) disk areas at ``pos``; and where it ends."""
    found = []
    for _ in range(_MAX_AREAS):
        if pos + 16 > len(head):
            break
        offset, size = struct.unpack_from("<QQ", head, pos)
        pos += 16
        if offset == 0:
            break
        found.append((offset, size))
    return found, pos


def probe(head: bytes, f: BinaryIO, size: int) -> Container | None:
    for sector in range(4):
        at = sector * 512
        if head[at : at + 8] == LABEL and head[at + 24 : at + 32] == TYPE:
            break
    else:
        return None
    (offset,) = struct.unpack_from("<I", head, at + 20)
    pv = at + offset
    if pv + 40 > len(head):
        return None
    uuid = _uuid(head[pv : pv + 32])
    data, pos = _areas(head, pv + 40)
    meta, _ = _areas(head, pos)
    pe_start = data[0][0] if data else None
    metadata = [(0, at + 512)]
    metadata += [(o, n) for o, n in meta if 0 < o < size]
    return Container(
        kind="lvm2-pv",
        name="LVM2 physical volume",
        uuid=uuid,
        metadata=tuple(metadata),
        data_offset=pe_start if pe_start and pe_start < size else None,
    )


# --- Reading through the PV: its metadata areas, the VG's text, one volume per LV ---

MDA_MAGIC = b" LVM2 x[5A%r0N*>"
MDA_HEADER = 512
"""A metadata area starts with this header; its ring buffer of text fills the rest."""
CRC_INIT = 0xF597A6CF
"""LVM's CRC-32 (zlib's polynomial) starts from this value and is not inverted at the end."""
RAW_LOCN_IGNORED = 1
"""A metadata area marked ignored (``pvchange --metadataignore``) holds stale text."""
_LABEL_SECTORS = 4
_SECTOR = 512


def lvm_crc(data: bytes, crc: int = CRC_INIT) -> int:
    """LVM's checksum of ``data`` (label sector, metadata area header, metadata text)."""
    return zlib.crc32(data, crc ^ 0xFFFFFFFF) ^ 0xFFFFFFFF


def _read_exact(f: BinaryIO, offset: int, size: int) -> bytes:
    """``size`` bytes at ``offset``; a PV that ends sooner is a damaged one."""
    f.seek(offset)
    parts, got = [], 0
    while got < size:
        chunk = f.read(size - got)
        if not chunk:
            raise FilesystemError(
                f"The LVM physical volume ends at byte {offset + got}, before the "
                f"{size} bytes at {offset} its metadata points to."
            )
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


@dataclass(frozen=True)
class PvLabel:
    """The label sector and the PV header inside it."""

    offset: int
    """Byte offset of the label sector (one of the first four sectors)."""
    uuid: str
    device_size: int
    data_areas: tuple[tuple[int, int], ...]
    metadata_areas: tuple[tuple[int, int], ...]
    """``(offset, size)`` in bytes of each metadata area (mda)."""


def read_label(f: BinaryIO, size: int) -> PvLabel:
    """The PV label (``LABELONE`` ... ``LVM2 001``, checksummed) and the PV header it points to.

    The PV header holds the PV's UUID, the device size, then two zero-terminated
    lists of (offset, size) disk areas: the data area (``pe_start``) and the
    metadata areas.
    """
    head = _read_exact(f, 0, min(_LABEL_SECTORS * _SECTOR, size) // _SECTOR * _SECTOR)
    for sector in range(len(head) // _SECTOR):
        at = sector * _SECTOR
        label = head[at : at + _SECTOR]
        if label[:8] == LABEL and label[24:32] == TYPE:
            break
    else:
        raise FilesystemError("No LVM2 label in the first four sectors.")
    sector_xl, crc, offset = struct.unpack_from("<QII", label, 8)
    if sector_xl != sector:
        raise FilesystemError(f"The LVM label in sector {sector} says it is in sector {sector_xl}.")
    if lvm_crc(label[20:]) != crc:
        raise FilesystemError("The LVM label sector is damaged (checksum mismatch).")
    if not 32 <= offset <= _SECTOR - 40 - 32:
        raise FilesystemError(f"The LVM label points to a PV header at an impossible {offset}.")
    uuid = _uuid(label[offset : offset + 32])
    (device_size,) = struct.unpack_from("<Q", label, offset + 32)
    data, pos = _areas(label, offset + 40)
    meta, _ = _areas(label, pos)
    for area_offset, area_size in meta:
        if area_offset < at + _SECTOR or area_size <= MDA_HEADER or area_offset + area_size > size:
            raise FilesystemError(
                f"The LVM PV header gives a metadata area of {area_size} bytes at "
                f"{area_offset}, which does not fit on the {size}-byte volume."
            )
    return PvLabel(at, uuid, device_size, tuple(data), tuple(meta))


@dataclass(frozen=True)
class MetadataText:
    """The current metadata text of one metadata area, or why it has none."""

    area: tuple[int, int]
    text: str | None
    """None for an orphan PV (no volume group) or an area marked ignored."""
    ignored: bool = False


def read_metadata_area(f: BinaryIO, area: tuple[int, int]) -> MetadataText:
    """The current text in the metadata area ``area`` = (offset, size).

    The area's header (``mda_header``: checksum, magic, version, start, size,
    then ``raw_locn`` entries of offset, size, checksum, flags) gives where the
    committed text lies in the ring buffer after the header; text that runs
    past the end of the area goes on right after the header.
    """
    start, length = area
    header = _read_exact(f, start, MDA_HEADER)
    crc, magic, version, where, span = struct.unpack_from("<I16sIQQ", header)
    if magic != MDA_MAGIC:
        raise FilesystemError(f"The LVM metadata area at byte {start} has no LVM2 magic.")
    if lvm_crc(header[4:]) != crc:
        raise FilesystemError(f"The LVM metadata area header at byte {start} is damaged.")
    if version != 1 or where != start or span != length:
        raise FilesystemError(
            f"The LVM metadata area header at byte {start} says version {version}, "
            f"start {where}, size {span}; the PV header says start {start}, size {length}."
        )
    rel, text_size, text_crc, flags = struct.unpack_from("<QQII", header, 40)
    if flags & RAW_LOCN_IGNORED:
        return MetadataText(area, None, ignored=True)
    if rel == 0 and text_size == 0:
        return MetadataText(area, None)
    ring = length - MDA_HEADER
    if not MDA_HEADER <= rel < length or not 0 < text_size <= ring:
        raise FilesystemError(
            f"The LVM metadata area at byte {start} points to {text_size} bytes of text "
            f"at {rel}, outside its {length} bytes."
        )
    if text_size > MAX_TEXT:
        raise FilesystemError(
            f"The LVM metadata text of {text_size} bytes is larger than rescue reads."
        )
    first = min(text_size, length - rel)
    raw = _read_exact(f, start + rel, first)
    if first < text_size:  # the ring buffer wrapped
        raw += _read_exact(f, start + MDA_HEADER, text_size - first)
    if lvm_crc(raw) != text_crc:
        raise FilesystemError(
            f"The LVM metadata text in the area at byte {start} is damaged (checksum mismatch)."
        )
    return MetadataText(area, raw.split(b"\0", 1)[0].decode("utf-8", errors="replace"))


@dataclass(frozen=True)
class _Piece:
    """A segment of an LV as byte ranges of the PV."""

    lv_offset: int
    length: int
    starts: tuple[int, ...]
    """PV byte offset of each stripe's area (one for a linear segment)."""
    chunk: int
    """Bytes of one stripe chunk (the whole segment when linear)."""


class LogicalVolumeOnPv:
    """An LV whose every extent lies on this PV, read through its segments."""

    def __init__(self, f: BinaryIO, name: str, pieces: tuple[_Piece, ...]) -> None:
        self.name = name
        self.size = sum(p.length for p in pieces)
        self._f = f
        self._pieces = pieces
        self._offsets = [p.lv_offset for p in pieces]

    def _runs(self, offset: int, length: int) -> Iterator[tuple[int, int]]:
        """PV ``(offset, length)`` runs of the LV's bytes, in LV order, not merged."""
        offset = max(0, offset)
        end = min(self.size, offset + max(0, length))
        i = bisect.bisect_right(self._offsets, offset) - 1
        while offset < end:
            p = self._pieces[i]
            stop = min(end, p.lv_offset + p.length)
            while offset < stop:
                number, within = divmod(offset - p.lv_offset, p.chunk)
                row, stripe = divmod(number, len(p.starts))
                n = min(p.chunk - within, stop - offset)
                yield p.starts[stripe] + row * p.chunk + within, n
                offset += n
            i += 1

    def pread(self, offset: int, size: int) -> bytes:
        return b"".join(_read_exact(self._f, at, n) for at, n in self._runs(offset, size))

    def outer_ranges(self, offset: int, length: int) -> Iterator[tuple[int, int]]:
        at, n = -1, 0
        for start, count in self._runs(offset, length):
            if start == at + n:
                n += count
                continue
            if n:
                yield at, n
            at, n = start, count
        if n:
            yield at, n

    def __repr__(self) -> str:
        return f"LogicalVolumeOnPv({self.name!r}, {self.size})"


def _choose(f: BinaryIO, label: PvLabel) -> tuple[VolumeGroup | None, int]:
    """The VG of the newest metadata copy that reads (None on an orphan PV); copies read."""
    if not label.metadata_areas:
        raise FilesystemError(
            "This LVM physical volume keeps no metadata area (made with --metadatacopies 0): "
            "its volume group's layout is only on the group's other PVs."
        )
    problems: list[str] = []
    groups: list[VolumeGroup] = []
    empty = ignored = 0
    for area in label.metadata_areas:
        try:
            found = read_metadata_area(f, area)
            if found.text is None:
                ignored += found.ignored
                empty += not found.ignored
                continue
            groups.append(volume_group(parse(found.text)))
        except FilesystemError as e:
            problems.append(e.message)
    if groups:
        return max(groups, key=lambda vg: vg.seqno), len(groups)
    if problems:
        raise FilesystemError(" ".join(problems))
    if ignored and not empty:
        raise FilesystemError(
            "The metadata areas of this LVM physical volume are marked ignored: its volume "
            "group's layout is kept on the group's other PVs."
        )
    return None, 0


def _listed(vg: VolumeGroup, names: Iterable[str]) -> str:
    """``vg/a, vg/b``: at most five names, then how many more (hostile metadata may hold many)."""
    unique = list(dict.fromkeys(names))
    shown = ", ".join(f"{vg.name}/{n}" for n in unique[:5])
    return shown + (f" and {len(unique) - 5} more" if len(unique) > 5 else "")


def _reason(vg: VolumeGroup, lv: LogicalVolume, elsewhere: bool, own: str, thin: list[str]) -> str:
    """Why ``lv`` (with whatever it is built on) is stored whole, for a technician."""
    q = f"{vg.name}/{lv.name}"
    types = lv.types
    segment = lv.segments[0]
    if "thin-pool" in types:
        holding = f" (holding {_listed(vg, thin)})" if thin else ""
        return f"{q} is a thin pool{holding}: stored whole, its data and metadata"
    if "snapshot" in types:
        cow = segment.values.get("cow_store", "?")
        origin = segment.values.get("origin", "?")
        return (
            f"{vg.name}/{cow} holds the changes of a snapshot of {vg.name}/{origin} "
            "(its copy-on-write store): stored whole"
        )
    if any(t.startswith("raid") for t in types):
        return f"{q} is a RAID LV ({', '.join(types)}): stored whole, every leg"
    if "mirror" in types:
        return f"{q} is a mirrored LV: stored whole, every leg and its log"
    if "cache" in types or "writecache" in types:
        return f"{q} is a cached LV ({', '.join(types)}): stored whole, with its cache"
    if "vdo" in types or "vdo-pool" in types:
        return f"{q} is a VDO volume (deduplicated and compressed): stored whole"
    if "thin" in types:
        return f"{q} is a thin volume with an external origin: stored whole, with its origin"
    if "integrity" in types:
        return f"{q} keeps dm-integrity checksums: stored whole"
    if types != ("striped",):
        return (
            f"{q} has segments of type {', '.join(types)}, which rescue does not read: stored whole"
        )
    if any(s.uses for s in lv.segments):
        names = _listed(vg, (n for s in lv.segments for n in s.uses))
        return f"{q} lies on other LVs ({names}), as while pvmove runs: stored whole"
    if elsewhere:
        return (
            f"{q} has extents on another physical volume too: its part on this one "
            f"(PV {own}) is stored whole"
        )
    if not lv.visible:
        if lv.name.endswith("_pmspare"):
            return f"{q} is LVM's spare for repairing thin pool metadata: stored whole"
        return f"{q} is a hidden LV that LVM keeps for itself: stored whole"
    return f"{q}'s stripes do not divide its extents evenly: stored whole"


def open_layer(f: BinaryIO, size: int, found: Container) -> Opened:
    """The LVs of the PV in ``f`` (``size`` bytes) that ``probe`` recognised as ``found``.

    Reads the label and PV header, the metadata areas and the newest volume group
    text in them, finds this PV in the group by its UUID, and maps each LV's
    segments to byte ranges of this PV: an LV of linear or striped segments all
    on this PV becomes a volume read through that mapping; anything else that
    has extents here (thin pools, RAID, mirrors, caches, snapshot stores, LVs
    spread over several PVs, LVM's hidden LVs) is stored whole, with the reason.
    Everything before the first extent and every metadata area is metadata; free
    extents are neither.
    """
    label = read_label(f, size)
    if found.uuid is not None and found.uuid != label.uuid:
        raise FilesystemError(f"The LVM label now gives PV {label.uuid}, not {found.uuid}.")
    vg, copies = _choose(f, label)
    pe_start = label.data_areas[0][0] if label.data_areas else 0
    if vg is None:
        return Opened(
            volumes=(),
            metadata=_merged_ranges(
                [(0, min(size, max(pe_start, label.offset + _SECTOR))), *label.metadata_areas]
            ),
            details=(
                ("volume group", "none (an orphan physical volume: nothing is allocated)"),
                ("read with", "rescue's LVM2 metadata reader"),
            ),
        )
    pv = vg.pv(label.uuid)
    if pv is None:
        raise FilesystemError(
            f"Volume group {vg.name}'s metadata does not list this physical volume ({label.uuid})."
        )
    extent = vg.extent_size * SECTOR
    data_start = pv.pe_start * SECTOR
    data_end = data_start + pv.pe_count * extent
    if data_start < label.offset + _SECTOR or data_end > size:
        raise FilesystemError(
            f"Volume group {vg.name} puts {pv.pe_count} extents of {extent} bytes at byte "
            f"{data_start} of this physical volume, which has {size} bytes."
        )
    for at, n in label.metadata_areas:
        if at < data_end and at + n > data_start:
            raise FilesystemError(
                f"The LVM metadata area at byte {at} overlaps the extents of volume group "
                f"{vg.name}."
            )
    metadata = _merged_ranges([(0, data_start), *label.metadata_areas])
    volumes, whole = _layout(f, vg, pv, data_start, extent)
    return Opened(
        volumes=volumes,
        metadata=metadata,
        whole=whole,
        details=(
            ("volume group", vg.name),
            ("extent size", human_size(extent)),
            ("metadata copies read", f"{copies} of {len(label.metadata_areas)}"),
            ("read with", "rescue's LVM2 metadata reader"),
        ),
    )


def _area_extents(segment: Segment) -> int:
    """Extents of one stripe's or leg's area of ``segment``."""
    if segment.type == "striped":
        return -(-segment.extent_count // segment.stripe_count)
    return segment.extent_count


def _tops(vg: VolumeGroup, owner: dict[str, str]) -> dict[str, str]:
    """Each LV -> the LV at the top of what it is part of (a pool's data LV -> the pool).

    Every chain is walked once (what an earlier walk found is reused), so a long
    chain of LVs built on each other costs no more than its length.
    """
    top: dict[str, str] = {}
    for lv in vg.lvs:
        path: list[str] = []
        on_path: set[str] = set()
        name = lv.name
        while name not in top and name in owner:
            if name in on_path:
                shown = ", ".join(path[:5]) + (", ..." if len(path) > 5 else "")
                raise FilesystemError(
                    f"LVM metadata of {vg.name} is damaged: LVs {shown} are built on each "
                    "other in a loop."
                )
            path.append(name)
            on_path.add(name)
            name = owner[name]
        root = top.get(name, name)
        top[name] = root
        for member in path:
            top[member] = root
    return top


def _layout(
    f: BinaryIO, vg: VolumeGroup, pv: PhysicalVolume, data_start: int, extent: int
) -> tuple[tuple[LogicalVolumeOnPv, ...], tuple[tuple[str, tuple[tuple[int, int], ...]], ...]]:
    keys = {p.key for p in vg.pvs}
    owner: dict[str, str] = {}
    for lv in vg.lvs:
        for segment in lv.segments:
            for used in segment.uses:
                if used == lv.name:
                    raise FilesystemError(
                        f"LVM metadata of {vg.name}: {lv.name} is built on itself."
                    )
                owner.setdefault(used, lv.name)
    here: dict[str, list[tuple[int, int]]] = {}
    elsewhere: set[str] = set()
    claims: list[tuple[int, int, str]] = []
    for lv in vg.lvs:
        for segment in lv.segments:
            count = _area_extents(segment)
            for key, first in segment.areas:
                if key not in keys:
                    raise FilesystemError(
                        f"LVM metadata of {vg.name}: {lv.name} lies on {key}, which the group "
                        "does not list."
                    )
                if key != pv.key:
                    elsewhere.add(lv.name)
                    continue
                if first + count > pv.pe_count:
                    raise FilesystemError(
                        f"LVM metadata of {vg.name}: {lv.name} reaches extent {first + count} "
                        f"of this physical volume, which has {pv.pe_count}."
                    )
                here.setdefault(lv.name, []).append((first, count))
                claims.append((first, count, lv.name))
    claims.sort()
    for (a, n, lv_a), (b, _, lv_b) in itertools.pairwise(claims):
        if b < a + n:
            raise FilesystemError(
                f"LVM metadata of {vg.name} is damaged: extent {b} of this physical volume is "
                f"given to both {lv_a} and {lv_b}."
            )
    volumes: list[LogicalVolumeOnPv] = []
    stored: dict[str, list[tuple[int, int]]] = {}
    tops: dict[str, list[str]] = {}
    for name, top in _tops(vg, owner).items():
        tops.setdefault(top, []).append(name)
    thin: dict[str, list[str]] = {}
    for lv in vg.lvs:
        for segment in lv.segments:
            pool = segment.values.get("thin_pool")
            if segment.type == "thin" and isinstance(pool, str):
                thin.setdefault(pool, []).append(lv.name)
    for lv in vg.lvs:
        if lv.name not in tops:
            continue
        members = tops[lv.name]
        pieces = _pieces(lv, data_start, extent, elsewhere, pv.key)
        if pieces is not None and members == [lv.name] and lv.visible:
            volumes.append(LogicalVolumeOnPv(f, f"{vg.name}/{lv.name}", pieces))
            continue
        ranges = [
            (data_start + first * extent, count * extent)
            for member in members
            for first, count in here.get(member, ())
        ]
        if ranges:
            split = any(member in elsewhere for member in members)
            stored[_reason(vg, lv, split, pv.uuid, thin.get(lv.name, []))] = ranges
    return tuple(volumes), tuple((reason, _merged_ranges(r)) for reason, r in stored.items())


def _pieces(
    lv: LogicalVolume, data_start: int, extent: int, elsewhere: set[str], key: str
) -> tuple[_Piece, ...] | None:
    """``lv``'s segments as pieces of this PV, or None when it cannot be read here."""
    if lv.name in elsewhere or lv.types != ("striped",) or any(s.uses for s in lv.segments):
        return None
    pieces = []
    for segment in lv.segments:
        starts = tuple(data_start + first * extent for _, first in segment.areas)
        length = segment.extent_count * extent
        if segment.stripe_count == 1:
            pieces.append(_Piece(segment.start_extent * extent, length, starts, length))
            continue
        chunk = segment.stripe_size * SECTOR
        if segment.extent_count % segment.stripe_count or (length // segment.stripe_count) % chunk:
            return None
        pieces.append(_Piece(segment.start_extent * extent, length, starts, chunk))
    assert all(a == key for s in lv.segments for a, _ in s.areas)
    return tuple(pieces)


def _merged_ranges(ranges: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    return tuple(merge_ranges(ranges))
