"""btrfs: its registry entry (:data:`BTRFS`) and its used blocks: every extent the
extent tree records, on the physical device.

The chunk tree maps logical addresses to places on the device (bootstrapped by
the SYSTEM chunks kept in the superblock); the extent tree lists every
allocated data extent and tree block. A DUP profile keeps two copies: both are
marked. The map's unit is the node size, as partclone's is. Single-device
filesystems only; a filesystem with an unreplayed log is refused (its log
blocks are not in the extent tree).

btrfs-progs grows and shrinks it online (through a private mount), tells its
minimum (``btrfs inspect-internal min-dev-size``), checks it, and btrfstune
gives it a new UUID.
"""

from __future__ import annotations

import re
import struct
import uuid
from dataclasses import dataclass
from typing import BinaryIO, ClassVar

from rescue.errors import ExternalToolError, FilesystemError
from rescue.filesystems.base import Allocation, count_bits, read_at, set_run
from rescue.filesystems.interface import (
    CheckResult,
    Filesystem,
    KernelMount,
    Op,
    Reasons,
    Tools,
    run_checker,
)
from rescue.system import output, run

SUPER_OFFSET = 0x10000
SUPER_MIRRORS = (0x10000, 0x4000000, 0x4000000000)
MAGIC = b"_BHRfS_M"
HEADER_SIZE = 101
CHUNK_ITEM = 228
ROOT_ITEM = 132
EXTENT_ITEM = 168
METADATA_ITEM = 169
EXTENT_TREE = 2

_CRC32C = []
for _n in range(256):
    _c = _n
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC32C.append(_c)


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as btrfs checksums its superblock."""
    crc = 0xFFFFFFFF
    table = _CRC32C
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


@dataclass(frozen=True)
class _Chunk:
    logical: int
    length: int
    stripes: tuple[int, ...]
    """Physical offsets of every copy on this device."""


@dataclass(frozen=True)
class _Super:
    fsid: bytes
    root: int
    chunk_root: int
    log_root: int
    total_bytes: int
    bytes_used: int
    num_devices: int
    sectorsize: int
    nodesize: int
    root_level: int
    chunk_root_level: int
    devid: int
    label: str | None
    sys_chunks: bytes


def read_super(f: BinaryIO) -> _Super:
    sb = read_at(f, SUPER_OFFSET, 4096, "btrfs")
    if sb[0x40:0x48] != MAGIC:
        raise FilesystemError("No btrfs superblock (bad magic).")
    (csum_type,) = struct.unpack_from("<H", sb, 0xC4)
    if csum_type == 0 and struct.unpack_from("<I", sb, 0)[0] != crc32c(sb[0x20:]):
        raise FilesystemError("The btrfs superblock is damaged (checksum mismatch).")
    root, chunk_root, log_root = struct.unpack_from("<QQQ", sb, 0x50)
    total, used = struct.unpack_from("<QQ", sb, 0x70)
    (ndev,) = struct.unpack_from("<Q", sb, 0x88)
    sectorsize, nodesize = struct.unpack_from("<II", sb, 0x90)
    (sys_size,) = struct.unpack_from("<I", sb, 0xA0)
    root_level, chunk_level = sb[0xC6], sb[0xC7]
    (devid,) = struct.unpack_from("<Q", sb, 0xC9)
    if nodesize < 4096 or nodesize > 65536 or nodesize & (nodesize - 1) or sys_size > 2048:
        raise FilesystemError("btrfs superblock has impossible sizes.")
    label = sb[0x12B : 0x12B + 256].split(b"\0", 1)[0].decode(errors="replace")
    return _Super(
        fsid=sb[0x20:0x30],
        root=root,
        chunk_root=chunk_root,
        log_root=log_root,
        total_bytes=total,
        bytes_used=used,
        num_devices=ndev,
        sectorsize=sectorsize,
        nodesize=nodesize,
        root_level=root_level,
        chunk_root_level=chunk_level,
        devid=devid,
        label=label or None,
        sys_chunks=sb[0x32B : 0x32B + sys_size],
    )


def _parse_chunk(data: bytes, pos: int, logical: int, devid: int) -> tuple[_Chunk, int]:
    length = struct.unpack_from("<Q", data, pos)[0]
    (num_stripes,) = struct.unpack_from("<H", data, pos + 44)
    stripes = []
    for i in range(num_stripes):
        sdev, soff = struct.unpack_from("<QQ", data, pos + 48 + 32 * i)
        if sdev != devid:
            raise FilesystemError("btrfs chunk on another device: a multi-device filesystem.")
        stripes.append(soff)
    return _Chunk(logical, length, tuple(stripes)), pos + 48 + 32 * num_stripes


class _Reader:
    def __init__(self, f: BinaryIO, s: _Super, size: int) -> None:
        self.f = f
        self.s = s
        self.size = size
        self.chunks: list[_Chunk] = []
        pos = 0
        data = s.sys_chunks
        while pos < len(data):
            (_obj, ktype, logical) = struct.unpack_from("<QBQ", data, pos)
            if ktype != CHUNK_ITEM:
                raise FilesystemError("btrfs superblock's system chunk array is damaged.")
            chunk, pos = _parse_chunk(data, pos + 17, logical, s.devid)
            self.chunks.append(chunk)

    def physical(self, logical: int) -> int:
        for c in self.chunks:
            if c.logical <= logical < c.logical + c.length:
                return c.stripes[0] + logical - c.logical
        raise FilesystemError(f"btrfs address {logical} is in no chunk: the chunk tree is damaged.")

    def node(self, logical: int) -> bytes:
        phys = self.physical(logical)
        if phys + self.s.nodesize > self.size:
            raise FilesystemError("btrfs tree block lies past the end of the partition.")
        raw = read_at(self.f, phys, self.s.nodesize, "btrfs")
        (bytenr,) = struct.unpack_from("<Q", raw, 0x30)
        if raw[0x20:0x30] != self.s.fsid or bytenr != logical:
            raise FilesystemError(f"btrfs tree block at {logical} is damaged (wrong header).")
        return raw

    def leaves(self, logical: int, depth: int = 0) -> list[bytes]:
        """Every leaf of the tree rooted at ``logical``."""
        if depth > 8:
            raise FilesystemError("btrfs tree is deeper than possible: it is damaged.")
        raw = self.node(logical)
        (nritems,) = struct.unpack_from("<I", raw, 0x60)
        level = raw[0x64]
        if level == 0:
            return [raw]
        out = []
        for i in range(nritems):
            (ptr,) = struct.unpack_from("<Q", raw, HEADER_SIZE + 33 * i + 17)
            out.extend(self.leaves(ptr, depth + 1))
        return out


def _items(leaf: bytes) -> list[tuple[int, int, int, bytes]]:
    """(objectid, type, offset, data) of every item in a leaf."""
    (nritems,) = struct.unpack_from("<I", leaf, 0x60)
    out = []
    for i in range(nritems):
        obj, ktype, off, doff, dsize = struct.unpack_from("<QBQII", leaf, HEADER_SIZE + 25 * i)
        start = HEADER_SIZE + doff
        out.append((obj, ktype, off, leaf[start : start + dsize]))
    return out


def read_allocation(f: BinaryIO, size: int) -> Allocation:
    """The used blocks (node-size units) of the single-device btrfs in ``f``."""
    s = read_super(f)
    if s.num_devices != 1:
        raise FilesystemError("This btrfs spans several devices: imaging its partitions raw.")
    if s.total_bytes > size:
        raise FilesystemError(
            f"The btrfs filesystem claims {s.total_bytes} bytes but its partition has {size}: "
            "the partition is truncated or the superblock is wrong."
        )
    if s.log_root:
        raise FilesystemError("This btrfs has a log that was never replayed (unclean shutdown).")
    r = _Reader(f, s, size)
    for leaf in r.leaves(s.chunk_root):  # the full chunk map
        for _obj, ktype, logical, data in _items(leaf):
            if ktype == CHUNK_ITEM:
                chunk, _ = _parse_chunk(data, 0, logical, s.devid)
                if all(c.logical != logical for c in r.chunks):
                    r.chunks.append(chunk)
    extent_root = None
    for leaf in r.leaves(s.root):
        for obj, ktype, _off, data in _items(leaf):
            if ktype == ROOT_ITEM and obj == EXTENT_TREE:
                (extent_root,) = struct.unpack_from("<Q", data, 176)
    if extent_root is None:
        raise FilesystemError("btrfs root tree has no extent tree.")
    bs = s.nodesize
    total = s.total_bytes // bs
    bm = bytearray((total + 7) // 8)

    def mark(phys: int, length: int) -> None:
        first = phys // bs
        last = min(-(-(phys + length) // bs), total)
        set_run(bm, first, last - first)

    mark(0, SUPER_OFFSET + 4096)  # boot area and the primary superblock
    for mirror in SUPER_MIRRORS[1:]:
        if mirror + 4096 <= s.total_bytes:
            mark(mirror, 4096)
    for leaf in r.leaves(extent_root):
        for obj, ktype, off, _data in _items(leaf):
            if ktype not in (EXTENT_ITEM, METADATA_ITEM):
                continue
            length = off if ktype == EXTENT_ITEM else bs
            for c in r.chunks:
                if c.logical <= obj < c.logical + c.length:
                    for stripe in c.stripes:
                        mark(stripe + obj - c.logical, length)
                    break
            else:
                raise FilesystemError(f"btrfs extent at {obj} is in no chunk: the trees disagree.")
    used = count_bits(bytes(bm), total)
    h = s.fsid.hex()
    return Allocation(
        fstype="btrfs",
        partclone_fs="BTRFS",
        block_size=bs,
        total_blocks=total,
        device_size=s.total_bytes,
        bitmap=bytes(bm),
        used_blocks=used,
        fs_used_blocks=-(-s.bytes_used // bs),
        label=s.label,
        uuid=f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}",
    )


class Btrfs(Filesystem):
    """btrfs (single device): btrfs-progs, resized online through a private mount."""

    names = ("btrfs",)
    mount_types = ("btrfs",)
    human_name = "btrfs"
    partclone_name = "BTRFS"
    kernel = KernelMount("btrfs", read_only="ro,rescue=nologreplay")
    linux_root = True
    tools: ClassVar[Tools] = {
        Op.CHECK: ("btrfs",),
        Op.GROW: ("btrfs",),
        Op.SHRINK: ("btrfs",),
        Op.MINIMUM: ("btrfs",),
        Op.NEW_ID: ("btrfstune",),
    }
    unsupported: ClassVar[Reasons] = {
        Op.REPAIR: "btrfs is not mended by rescue; btrfs check --repair is for experts only.",
        Op.REBUILD: "btrfs shrinks in place: it is never rebuilt.",
        Op.DAMAGE: "rescue has no block-to-file map for btrfs: the damage report lists byte "
        "ranges only.",
        Op.SET_START: "btrfs does not record where its partition starts: a move needs nothing.",
        Op.CREATE: "btrfs is imaged, not created anew on restore.",
    }

    def read_allocation(self, f: BinaryIO, size: int) -> Allocation:
        return read_allocation(f, size)

    def check(self, dev: str) -> CheckResult:
        return run_checker(["btrfs", "check", "--readonly", dev])

    def grow(self, dev: str, size: int) -> str | None:
        with self.mounted(dev, writable=True) as mnt:
            run(["btrfs", "filesystem", "resize", "max", str(mnt)])
        return None

    def shrink(self, dev: str, size: int) -> None:
        with self.mounted(dev, writable=True) as mnt:
            run(["btrfs", "filesystem", "resize", str(size), str(mnt)])

    def minimum_size(self, dev: str) -> int:
        with self.mounted(dev) as mnt:
            text = output(["btrfs", "inspect-internal", "min-dev-size", str(mnt)])
        m = re.match(r"\s*(\d+)", text)
        if m is None:
            raise ExternalToolError(f"btrfs gave no minimum size for {dev}: {text.strip()}")
        return int(m.group(1))

    def new_id(self, dev: str) -> str | None:
        new = str(uuid.uuid4())
        run(["btrfstune", "-f", "-U", new, dev])
        return new


BTRFS = Btrfs()
