"""Grow a FAT16/FAT32 filesystem in place to fill its (grown) partition.

No resizer for FAT is both packaged and dependable (fatresize aborts on a plain
grow), and the job is small: a larger filesystem needs larger FATs, so the
root folder (FAT16) and the data area move up by the growth of the FATs, the
FATs are extended with free entries, and the boot sector records the new size.
Cluster numbers stay the same (they count from the start of the data area),
so no directory entry or FAT chain changes. Only the clusters in use are moved,
last first, so that nothing is overwritten before it was copied.

FAT16 cannot hold 65525 clusters or more: it grows up to that and stays FAT16.
FAT12 keeps its size.
"""

from __future__ import annotations

import os
import struct

from rescue.errors import FilesystemError
from rescue.filesystems.fat import FAT16_MAX_CLUSTERS, Geometry, geometry, used_clusters

_MOVE_CHUNK = 4 << 20


def _fat_sectors(clusters: int, kind: str, bps: int) -> int:
    entry = 4 if kind == "FAT32" else 2
    return -(-(clusters + 2) * entry // bps)


def new_geometry(g: Geometry, size: int) -> Geometry | None:
    """The geometry filling ``size`` bytes with the same cluster size; None if it cannot grow."""
    if g.kind == "FAT12":
        return None
    total = size // g.bps
    fatsz = g.fatsz
    while True:
        clusters = (total - g.reserved - g.nfats * fatsz - g.root_sectors) // g.spc
        if g.kind == "FAT16" and clusters >= FAT16_MAX_CLUSTERS:
            clusters = FAT16_MAX_CLUSTERS - 1
        need = _fat_sectors(clusters, g.kind, g.bps)
        if need <= fatsz:
            break
        fatsz = need
    total = min(total, g.reserved + g.nfats * fatsz + g.root_sectors + clusters * g.spc)
    if clusters <= g.clusters:
        return None
    return Geometry(g.bps, g.spc, g.reserved, g.nfats, g.root_sectors, total, fatsz, g.media,
                    g.kind)  # fmt: skip


def _move_up(fd: int, ranges: list[tuple[int, int]], shift: int) -> None:
    """Copy each (offset, length) byte range ``shift`` bytes further, the highest first."""
    for offset, length in sorted(ranges, reverse=True):
        end = offset + length
        while end > offset:
            n = min(_MOVE_CHUNK, end - offset)
            data = os.pread(fd, n, end - n)
            if len(data) != n:
                raise FilesystemError(f"Short read at byte {end - n} while growing FAT.")
            os.pwrite(fd, data, end - n + shift)
            end -= n


def _cluster_runs(used: list[int], g: Geometry) -> list[tuple[int, int]]:
    """Byte ranges of the used clusters, contiguous ones merged."""
    runs: list[tuple[int, int]] = []
    size = g.spc * g.bps
    for c in used:
        offset = (g.first_data + (c - 2) * g.spc) * g.bps
        if runs and runs[-1][0] + runs[-1][1] == offset:
            runs[-1] = (runs[-1][0], runs[-1][1] + size)
        else:
            runs.append((offset, size))
    return runs


def _patched_boot(b: bytes, new: Geometry) -> bytes:
    out = bytearray(b)
    if new.kind == "FAT32":
        struct.pack_into("<H", out, 0x13, 0)
        struct.pack_into("<II", out, 0x20, new.total, new.fatsz)
    else:
        small = new.total < 0x10000 and struct.unpack_from("<H", b, 0x13)[0] != 0
        struct.pack_into("<H", out, 0x13, new.total if small else 0)
        struct.pack_into("<I", out, 0x20, 0 if small else new.total)
        struct.pack_into("<H", out, 0x16, new.fatsz)
    return bytes(out)


def grow_fat(dev: str, size: int) -> str:
    """Grow the FAT filesystem on ``dev`` to fill ``size`` bytes; says what was done."""
    fd = os.open(dev, os.O_RDWR | os.O_CLOEXEC)
    try:
        boot = os.pread(fd, 512, 0)
        old = geometry(boot, size)
        new = new_geometry(old, size)
        if new is None:
            return f"the {old.kind} filesystem keeps its size (it cannot grow further)"
        fat = os.pread(fd, old.fatsz * old.bps, old.reserved * old.bps)
        used = used_clusters(fat, old)
        shift = (new.fatsz - old.fatsz) * old.nfats * old.bps
        moving = _cluster_runs(used, old)
        if old.root_sectors:
            root = (old.reserved + old.nfats * old.fatsz) * old.bps
            moving.append((root, old.root_sectors * old.bps))
        _move_up(fd, moving, shift)
        grown_fat = fat + bytes((new.fatsz - old.fatsz) * old.bps)
        for i in range(old.nfats):
            os.pwrite(fd, grown_fat, (new.reserved + i * new.fatsz) * new.bps)
        free = new.clusters - len(used)
        os.pwrite(fd, _patched_boot(boot, new), 0)
        if new.kind == "FAT32":
            info_sector, backup = struct.unpack_from("<HH", boot, 0x30)
            if 0 < backup < new.reserved:
                os.pwrite(fd, _patched_boot(boot, new), backup * new.bps)
            for base in {info_sector, backup + info_sector if backup else 0} - {0}:
                if base >= new.reserved:
                    continue
                info = os.pread(fd, 512, base * new.bps)
                if info[:4] == b"RRaA" and info[484:488] == b"rrAa":
                    os.pwrite(fd, struct.pack("<I", free), base * new.bps + 488)
        os.fsync(fd)
    finally:
        os.close(fd)
    return (
        f"{old.kind} grown from {old.clusters} to {new.clusters} clusters "
        f"({new.total * new.bps} bytes)"
    )
