"""XFS used blocks: every block of every allocation group except its free extents.

Free space is read from each AG's by-block-number free-space B+tree (bnobt),
whose root the AG's free-space header (AGF) names. The internal log and all
metadata are allocated, so they are kept. Structures are big-endian.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

from rescue.errors import FilesystemError
from rescue.filesystems.base import Allocation, clear_run, count_bits, read_at

XFS_MAGIC = b"XFSB"
AGF_MAGIC = b"XAGF"
BNOBT_MAGICS = {b"ABTB": 16, b"AB3B": 56}  # v4 / v5 (CRC) short-form header sizes
AGFL_MAGIC = b"XAFL"


@dataclass(frozen=True)
class _Super:
    block_size: int
    dblocks: int
    agblocks: int
    agcount: int
    sector_size: int
    fdblocks: int
    uuid: str
    label: str | None
    crc: bool


def read_super(f: BinaryIO) -> _Super:
    sb = read_at(f, 0, 512, "xfs")
    if sb[:4] != XFS_MAGIC:
        raise FilesystemError("No XFS superblock (bad magic).")
    (bs,) = struct.unpack_from(">I", sb, 4)
    (dblocks,) = struct.unpack_from(">Q", sb, 8)
    agblocks, agcount = struct.unpack_from(">II", sb, 84)
    (version,) = struct.unpack_from(">H", sb, 100)
    (sectsize,) = struct.unpack_from(">H", sb, 102)
    (fdblocks,) = struct.unpack_from(">Q", sb, 144)
    if bs < 512 or bs > 65536 or bs & (bs - 1) or sectsize < 512 or sectsize > bs:
        raise FilesystemError("XFS superblock has an impossible block or sector size.")
    if agcount == 0 or agblocks == 0 or (agcount - 1) * agblocks >= dblocks:
        raise FilesystemError("XFS superblock has impossible allocation group sizes.")
    h = sb[32:48].hex()
    name = sb[108:120].split(b"\0", 1)[0].decode(errors="replace")
    return _Super(
        block_size=bs,
        dblocks=dblocks,
        agblocks=agblocks,
        agcount=agcount,
        sector_size=sectsize,
        fdblocks=fdblocks,
        uuid=f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}",
        label=name or None,
        crc=(version & 0xF) == 5,
    )


def _free_extents(f: BinaryIO, s: _Super, agno: int) -> list[tuple[int, int]]:
    """(AG block, count) of every free extent in allocation group ``agno``."""
    bs = s.block_size
    agf = read_at(f, agno * s.agblocks * bs + s.sector_size, s.sector_size, "xfs")
    if agf[:4] != AGF_MAGIC:
        raise FilesystemError(f"XFS allocation group {agno}: damaged free-space header (AGF).")
    seqno, length, bno_root = struct.unpack_from(">III", agf, 8)
    (bno_level,) = struct.unpack_from(">I", agf, 28)
    (freeblks,) = struct.unpack_from(">I", agf, 52)
    if seqno != agno or length > s.agblocks or not 0 < bno_root < length or bno_level > 8:
        raise FilesystemError(f"XFS allocation group {agno}: the AGF contradicts the superblock.")
    out: list[tuple[int, int]] = []

    def walk(block: int, level: int) -> None:
        raw = read_at(f, (agno * s.agblocks + block) * bs, bs, "xfs")
        hdr = BNOBT_MAGICS.get(raw[:4])
        if hdr is None:
            raise FilesystemError(f"XFS allocation group {agno}: damaged free-space tree block.")
        blevel, numrecs = struct.unpack_from(">HH", raw, 4)
        if blevel != level or numrecs > (bs - hdr) // 8:
            raise FilesystemError(f"XFS allocation group {agno}: inconsistent free-space tree.")
        if level == 0:
            for i in range(numrecs):
                start, count = struct.unpack_from(">II", raw, hdr + 8 * i)
                if start + count > length:
                    raise FilesystemError(f"XFS allocation group {agno}: free extent past its end.")
                out.append((start, count))
            return
        maxrecs = (bs - hdr) // 12
        for ptr in struct.unpack_from(f">{numrecs}I", raw, hdr + 8 * maxrecs):
            if not 0 < ptr < length:
                raise FilesystemError(
                    f"XFS allocation group {agno}: free-space tree points outside."
                )
            walk(ptr, level - 1)

    walk(bno_root, bno_level - 1)
    if sum(n for _, n in out) != freeblks:
        raise FilesystemError(
            f"XFS allocation group {agno}: the free-space tree holds "
            f"{sum(n for _, n in out)} blocks, the AGF says {freeblks}."
        )
    out.extend((b, 1) for b in _free_list(f, s, agno, agf, length))
    return out


def _free_list(f: BinaryIO, s: _Super, agno: int, agf: bytes, length: int) -> list[int]:
    """Blocks on the AG free list (AGFL): spare blocks for tree growth, free like the rest."""
    first, last, count = struct.unpack_from(">III", agf, 40)
    if count == 0:
        return []
    raw = read_at(f, agno * s.agblocks * s.block_size + 3 * s.sector_size, s.sector_size, "xfs")
    hdr = 36 if s.crc else 0
    if s.crc and raw[:4] != AGFL_MAGIC:
        raise FilesystemError(f"XFS allocation group {agno}: damaged free list (AGFL).")
    size = (s.sector_size - hdr) // 4
    if first >= size or last >= size or count > size:
        raise FilesystemError(f"XFS allocation group {agno}: the AGF's free list is impossible.")
    entries = struct.unpack_from(f">{size}I", raw, hdr)
    blocks = [entries[(first + i) % size] for i in range(count)]
    if (first + count - 1) % size != last or any(not 0 < b < length for b in blocks):
        raise FilesystemError(f"XFS allocation group {agno}: the free list is damaged.")
    return blocks


def read_allocation(f: BinaryIO, size: int) -> Allocation:
    """The used blocks of the XFS filesystem in ``f`` (a partition of ``size`` bytes)."""
    s = read_super(f)
    fs_bytes = s.dblocks * s.block_size
    if fs_bytes > size:
        raise FilesystemError(
            f"The XFS filesystem claims {fs_bytes} bytes but its partition has {size}: "
            "the partition is truncated or the superblock is wrong."
        )
    bm = bytearray(b"\xff" * (s.dblocks // 8))
    if s.dblocks % 8:
        bm.append((1 << (s.dblocks % 8)) - 1)
    for agno in range(s.agcount):
        base = agno * s.agblocks
        for start, count in _free_extents(f, s, agno):
            clear_run(bm, base + start, count)
    used = count_bits(bytes(bm), s.dblocks)
    return Allocation(
        fstype="xfs",
        partclone_fs="XFS",
        block_size=s.block_size,
        total_blocks=s.dblocks,
        device_size=fs_bytes,
        bitmap=bytes(bm),
        used_blocks=used,
        fs_used_blocks=s.dblocks - s.fdblocks,
        label=s.label,
        uuid=s.uuid,
    )
