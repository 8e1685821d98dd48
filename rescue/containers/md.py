"""Linux software RAID (md) members: RAID1 read through, other levels stored whole.

Every md superblock starts with the magic ``0xa92b4efc`` (little-endian).

- Version 1.x (``struct mdp_superblock_1``) sits at the start of the member
  (1.1), 4 KiB in (1.2) or near its end (1.0, at ``(size - 8 KiB) & ~4 KiB``); it
  says where the member's data starts (``data_offset``) and how long it is
  (``data_size``), both in 512-byte sectors. Its write-intent bitmap and bad-block
  log lie between the superblock and the data (1.1, 1.2) or before the
  superblock, after the data (1.0).
- Version 0.90 (``mdp_super_t``, 32-bit words) sits in the last 64 KiB-aligned
  64 KiB of the member, the data at its start; word 8 is the data size in KiB.

A RAID1 member holds a whole copy of the array's content, so the filesystem
inside is read from the data area like any partition's and only its used blocks
are stored; everything outside the data area (superblock, bitmap, bad-block log)
is the layer's metadata and is always stored. The restored member assembles as
the same array (same set and device UUIDs): alone, degraded, until its mirror is
added again. A member of another level holds a stripe of the content, not a
filesystem: it is stored whole. So is a member whose superblock says it holds no
whole copy: a spare, a failed member, one being rebuilt (``recovery_offset``).

Checked against members made by mdadm 4.2 in the live system (scripts/boot-test:
1.2, 1.0 and 0.90 with internal bitmaps); a 0.90 UUID is shown as mdadm and blkid
print it, each 32-bit word's value in turn.
"""

from __future__ import annotations

import struct
import uuid as uuid_mod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from rescue.containers.base import Container, Opened, read_at
from rescue.errors import FilesystemError

MAGIC = 0xA92B4EFC
_SB1_SIZE = 256
"""The fixed part of a 1.x superblock; the roles of the devices (16 bits each) follow."""
_SB1_MAX = 4096
"""A 1.x superblock with its roles is at most 4 KiB."""
_RECOVERY_OFFSET = 2
"""``feature_map`` bit: this member is being rebuilt, its copy good up to ``recovery_offset``."""
_ROLES = {0xFFFF: "a spare", 0xFFFE: "a failed member", 0xFFFD: "a journal device"}
_V090_RESERVED = 64 * 1024


def _sb1_offsets(size: int) -> list[tuple[str, int]]:
    """Where each 1.x superblock would be on a member of ``size`` bytes (none past its end)."""
    end = (size - 8 * 1024) & ~(4 * 1024 - 1)
    places = [("1.1", 0), ("1.2", 4096)] + ([("1.0", end)] if end >= 8192 else [])
    return [(version, at) for version, at in places if at + _SB1_SIZE <= size]


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", errors="replace")


@dataclass(frozen=True)
class _Member:
    version: str
    level: int
    raid_disks: int
    set_uuid: str
    name: str
    data_offset: int
    """Bytes from the member's start to its data."""
    data_size: int
    """Bytes of data (the array's content, for RAID1)."""
    not_a_copy: str | None = None
    """Why the data area holds no whole copy of the array (a spare, a member being rebuilt)."""


def _read_v1(block: bytes, version: str, offset: int, size: int) -> _Member | None:
    (magic, major) = struct.unpack_from("<II", block, 0)
    (super_offset,) = struct.unpack_from("<Q", block, 144)
    if magic != MAGIC or major != 1 or super_offset * 512 != offset:
        return None  # a superblock says where it is: a copy elsewhere is not this member's
    set_uuid = str(uuid_mod.UUID(bytes=block[16:32]))
    (level,) = struct.unpack_from("<i", block, 72)
    (raid_disks,) = struct.unpack_from("<I", block, 92)
    data_offset, data_size = struct.unpack_from("<QQ", block, 128)
    start, end = data_offset * 512, (data_offset + data_size) * 512
    if not 0 < data_size * 512 <= size or end > size:
        raise FilesystemError(
            f"md superblock {version}: a data area of {data_size} sectors at sector "
            f"{data_offset} does not fit the {size}-byte member"
        )
    if start < offset + _SB1_SIZE and end > offset:
        raise FilesystemError(
            f"md superblock {version}: its data area (sectors {data_offset} to "
            f"{data_offset + data_size}) covers the superblock itself"
        )
    return _Member(
        version, level, raid_disks, set_uuid, _text(block[32:64]),
        data_offset * 512, data_size * 512, _not_a_copy(block),
    )  # fmt: skip


def _not_a_copy(block: bytes) -> str | None:
    """What the superblock says of this device when it holds no whole copy of the array."""
    (feature_map,) = struct.unpack_from("<I", block, 8)
    (recovery_offset,) = struct.unpack_from("<Q", block, 152)
    (dev_number,) = struct.unpack_from("<I", block, 160)
    at = _SB1_SIZE + 2 * dev_number
    if at + 2 <= len(block):
        role = _ROLES.get(struct.unpack_from("<H", block, at)[0])
        if role is not None:
            return f"this device is {role} of the array"
    if feature_map & _RECOVERY_OFFSET:
        return (
            f"this member was being rebuilt: its copy is whole only up to sector {recovery_offset}"
        )
    return None


def _read_v090(f: BinaryIO, size: int) -> _Member | None:
    if size < 2 * _V090_RESERVED:
        return None
    at = (size & ~(_V090_RESERVED - 1)) - _V090_RESERVED
    words = read_at(f, at, 4 * 32)
    if len(words) < 4 * 32:
        return None
    w = struct.unpack_from("<32I", words)
    if w[0] != MAGIC or (w[1], w[2]) != (0, 90):
        return None
    level = struct.unpack_from("<i", words, 7 * 4)[0]
    data_size = w[8] * 1024
    if not 0 < data_size <= at:
        raise FilesystemError(
            f"md superblock 0.90: a data area of {w[8]} KiB does not fit the {size}-byte member"
        )
    # the UUID as mdadm and blkid print it: each 32-bit word's value, most significant first
    raw_uuid = struct.pack(">IIII", w[5], w[13], w[14], w[15])
    return _Member("0.90", level, w[10], str(uuid_mod.UUID(bytes=raw_uuid)), "", 0, data_size)


def _member(head: bytes, f: BinaryIO, size: int) -> _Member | None:
    for version, offset in _sb1_offsets(size):
        block = head[offset : offset + _SB1_MAX] if offset + _SB1_SIZE <= len(head) else b""
        if not block:
            block = read_at(f, offset, min(_SB1_MAX, size - offset))
        if len(block) >= _SB1_SIZE:
            found = _read_v1(block, version, offset, size)
            if found is not None:
                return found
    return _read_v090(f, size)


def _outside(member: _Member, size: int) -> tuple[tuple[int, int], ...]:
    """Every byte of the member outside its data area: superblock, bitmap, bad-block log."""
    ranges = []
    if member.data_offset:
        ranges.append((0, member.data_offset))
    end = member.data_offset + member.data_size
    if end < size:
        ranges.append((end, size - end))
    return tuple(ranges)


def probe(head: bytes, f: BinaryIO, size: int) -> Container | None:
    try:
        member = _member(head, f, size)
    except FilesystemError:
        return None  # an md magic with an impossible layout: not taken for a member
    if member is None:
        return None
    level = f"RAID{member.level}" if member.level >= 0 else "linear"
    details = [("level", level), ("members", str(member.raid_disks)),
               ("metadata", member.version)]  # fmt: skip
    if member.name:
        details.append(("array name", member.name))
    return Container(
        kind="md",
        name=f"md {level} member",
        uuid=member.set_uuid,
        metadata=_outside(member, size),
        data_offset=member.data_offset,
        details=tuple(details),
    )


@dataclass
class MirrorVolume:
    """The data area of a RAID1 member: the array's whole content."""

    f: BinaryIO = field(repr=False)
    offset: int
    size: int
    name: str

    def pread(self, offset: int, size: int) -> bytes:
        size = max(0, min(size, self.size - offset))
        return read_at(self.f, self.offset + offset, size) if size else b""

    def outer_ranges(self, offset: int, length: int) -> Iterator[tuple[int, int]]:
        end = min(offset + length, self.size)
        if end > offset:
            yield self.offset + offset, end - offset


def open_layer(f: BinaryIO, size: int, found: Container) -> Opened:
    """A RAID1 member's data area as one volume; any other level cannot be read alone."""
    head = read_at(f, 0, min(64 * 1024, size))
    member = _member(head, f, size)
    if member is None:
        raise FilesystemError("the md superblock is gone")
    if member.level != 1:
        level = f"RAID{member.level}" if member.level >= 0 else "linear"
        raise FilesystemError(
            f"a member of a {level} array holds a part of the array's content, not a "
            "filesystem (capture the assembled array, /dev/mdN, to image it by used blocks)"
        )
    if member.not_a_copy:
        raise FilesystemError(
            f"{member.not_a_copy} (capture an active, in-sync member, or the assembled array)"
        )
    name = f"md array {member.name or member.set_uuid}"
    return Opened(
        volumes=(MirrorVolume(f, member.data_offset, member.data_size, name),),
        details=(("read with", "rescue's md superblock reader"),),
    )
