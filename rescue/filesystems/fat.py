"""FAT12/16/32 used sectors: reserved area, FATs and root directory, then every cluster in use.

partclone maps FAT in 512-byte sectors (its block size is the sector size), so
this map does too: a cluster in use marks its sectors.
"""

from __future__ import annotations

import array
import struct
import sys
from dataclasses import dataclass
from typing import BinaryIO

from rescue.errors import FilesystemError
from rescue.filesystems.base import Allocation, count_bits, read_at, set_run

FAT12_MAX_CLUSTERS = 4085
FAT16_MAX_CLUSTERS = 65525


def _used_clusters(fat: bytes, kind: str, clusters: int) -> list[int]:
    """Cluster numbers (from 2) whose FAT entry is not free."""
    last = clusters + 2
    if kind == "FAT12":
        used = []
        for c in range(2, last):
            off = c + (c >> 1)
            pair = fat[off] | fat[off + 1] << 8
            entry = pair >> 4 if c & 1 else pair & 0xFFF
            if entry:
                used.append(c)
        return used
    code = "H" if kind == "FAT16" else "I"
    entries = array.array(code)
    entries.frombytes(fat[: len(fat) - len(fat) % entries.itemsize])
    if sys.byteorder != "little":
        entries.byteswap()
    mask = 0xFFFF if kind == "FAT16" else 0x0FFFFFFF
    return [c for c in range(2, min(last, len(entries))) if entries[c] & mask]


@dataclass(frozen=True)
class Geometry:
    """Where things are in a FAT filesystem, from its boot sector (sizes in sectors)."""

    bps: int
    spc: int
    reserved: int
    nfats: int
    root_sectors: int
    total: int
    fatsz: int
    media: int
    kind: str
    """FAT12, FAT16 or FAT32."""

    @property
    def first_data(self) -> int:
        return self.reserved + self.nfats * self.fatsz + self.root_sectors

    @property
    def clusters(self) -> int:
        return (self.total - self.first_data) // self.spc


def fat_kind(clusters: int) -> str:
    if clusters < FAT12_MAX_CLUSTERS:
        return "FAT12"
    return "FAT16" if clusters < FAT16_MAX_CLUSTERS else "FAT32"


def geometry(b: bytes, size: int) -> Geometry:
    """The layout boot sector ``b`` describes; raise when it is impossible for ``size`` bytes."""
    if b[510:512] != b"\x55\xaa":
        raise FilesystemError("No FAT boot sector (no 55AA signature).")
    bps, spc, reserved, nfats, root_entries, total16, media, fatsz16 = struct.unpack_from(
        "<HBHBHHBH", b, 0x0B
    )
    total32, fatsz32 = struct.unpack_from("<II", b, 0x20)
    if bps not in (512, 1024, 2048, 4096) or spc == 0 or spc & (spc - 1):
        raise FilesystemError("FAT boot sector has an impossible sector or cluster size.")
    if reserved == 0 or nfats not in (1, 2):
        raise FilesystemError("FAT boot sector has an impossible layout.")
    total = total16 or total32
    fatsz = fatsz16 or fatsz32
    root_sectors = (root_entries * 32 + bps - 1) // bps
    first_data = reserved + nfats * fatsz + root_sectors
    if total * bps > size:
        raise FilesystemError(
            f"The FAT filesystem claims {total * bps} bytes but its partition has {size}: "
            "the partition is truncated or the boot sector is wrong."
        )
    if fatsz == 0 or first_data >= total:
        raise FilesystemError("FAT boot sector has impossible FAT sizes.")
    kind = fat_kind((total - first_data) // spc)
    return Geometry(bps, spc, reserved, nfats, root_sectors, total, fatsz, media, kind)


def used_clusters(fat: bytes, g: Geometry) -> list[int]:
    return _used_clusters(fat, g.kind, g.clusters)


def read_allocation(f: BinaryIO, size: int) -> Allocation:
    """The used sectors of the FAT filesystem in ``f`` (a partition of ``size`` bytes)."""
    b = read_at(f, 0, 512, "fat")
    g = geometry(b, size)
    bps, spc, reserved, media, fatsz, total = g.bps, g.spc, g.reserved, g.media, g.fatsz, g.total
    first_data, clusters, kind = g.first_data, g.clusters, g.kind
    need = {"FAT12": (clusters + 2) * 3 // 2 + 1, "FAT16": (clusters + 2) * 2}.get(
        kind, (clusters + 2) * 4
    )
    if fatsz * bps < need:
        raise FilesystemError(f"The {kind} table is too small for {clusters} clusters.")
    fat = read_at(f, reserved * bps, fatsz * bps, "fat")
    if fat[0] != media:
        raise FilesystemError(f"The first FAT does not start with the media byte: {kind} damaged.")
    # partclone's unit is the 512-byte sector whatever the logical sector size
    unit = 512
    ratio = bps // unit
    total_units = total * ratio
    bm = bytearray((total_units + 7) // 8)
    set_run(bm, 0, first_data * ratio)
    # sectors after the last whole cluster belong to no cluster: kept, as partclone keeps them
    data_end = (first_data + clusters * spc) * ratio
    set_run(bm, data_end, total_units - data_end)
    run_start = prev = -2
    for c in [*_used_clusters(fat, kind, clusters), -1]:  # -1 closes the last run
        if c != prev + 1:
            if run_start >= 2:
                start = (first_data + (run_start - 2) * spc) * ratio
                set_run(bm, start, (prev - run_start + 1) * spc * ratio)
            run_start = c
        prev = c
    if kind == "FAT32":
        label = b[0x47:0x52]
        (serial,) = struct.unpack_from("<I", b, 0x43)
    else:
        label = b[0x2B:0x36]
        (serial,) = struct.unpack_from("<I", b, 0x27)
    name = label.decode("ascii", errors="replace").strip()
    used = count_bits(bytes(bm), total_units)
    return Allocation(
        fstype="vfat",
        partclone_fs=kind,
        block_size=unit,
        total_blocks=total_units,
        device_size=total_units * unit,
        bitmap=bytes(bm),
        used_blocks=used,
        fs_used_blocks=used,
        label=None if name in ("", "NO NAME") else name,
        uuid=f"{serial >> 16:04X}-{serial & 0xFFFF:04X}",
    )
