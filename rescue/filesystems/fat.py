"""FAT12/16/32: its registry entry (:data:`FAT`), its used sectors, and its in-place grow.

Used sectors: the reserved area, the FATs and the root directory, then every
cluster in use. partclone maps FAT in 512-byte sectors (its block size is the
sector size), so this map does too: a cluster in use marks its sectors.

Growing in place (:func:`grow_fat`): no resizer for FAT is both packaged and
dependable (fatresize aborts on a plain grow), and the job is small: a larger
filesystem needs larger FATs, so the root folder (FAT16) and the data area
move up by the growth of the FATs, the FATs are extended with free entries,
and the boot sector records the new size. Cluster numbers stay the same (they
count from the start of the data area), so no directory entry or FAT chain
changes. Only the clusters in use are moved, last first, so that nothing is
overwritten before it was copied. FAT16 cannot hold 65525 clusters or more: it
grows up to that and stays FAT16. FAT12 keeps its size.
"""

from __future__ import annotations

import array
import os
import secrets
import struct
import sys
from dataclasses import dataclass
from typing import BinaryIO, ClassVar

from rescue.blockio import pwrite_all
from rescue.errors import FilesystemError
from rescue.filesystems.base import Allocation, count_bits, read_at, set_run
from rescue.filesystems.interface import Filesystem, FuseDriver, KernelMount, Op, Reasons, Tools
from rescue.system import run, which

FAT12_MAX_CLUSTERS = 4085
FAT16_MAX_CLUSTERS = 65525
MAX_FILE_SIZE = 4 * 1024**3 - 1
"""The largest file a FAT filesystem holds."""
_MOVE_CHUNK = 4 << 20


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


# --- growing in place ---------------------------------------------------------------


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


def _move_up(fd: int, dev: str, ranges: list[tuple[int, int]], shift: int) -> None:
    """Copy each (offset, length) byte range ``shift`` bytes further, the highest first."""
    for offset, length in sorted(ranges, reverse=True):
        end = offset + length
        while end > offset:
            n = min(_MOVE_CHUNK, end - offset)
            data = os.pread(fd, n, end - n)
            if len(data) != n:
                raise FilesystemError(f"Short read at byte {end - n} while growing FAT.")
            pwrite_all(fd, data, end - n + shift, dev)
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
        _move_up(fd, dev, moving, shift)
        grown_fat = fat + bytes((new.fatsz - old.fatsz) * old.bps)
        for i in range(old.nfats):
            pwrite_all(fd, grown_fat, (new.reserved + i * new.fatsz) * new.bps, dev)
        free = new.clusters - len(used)
        pwrite_all(fd, _patched_boot(boot, new), 0, dev)
        if new.kind == "FAT32":
            info_sector, backup = struct.unpack_from("<HH", boot, 0x30)
            if 0 < backup < new.reserved:
                pwrite_all(fd, _patched_boot(boot, new), backup * new.bps, dev)
            for base in {info_sector, backup + info_sector if backup else 0} - {0}:
                if base >= new.reserved:
                    continue
                info = os.pread(fd, 512, base * new.bps)
                if info[:4] == b"RRaA" and info[484:488] == b"rrAa":
                    pwrite_all(fd, struct.pack("<I", free), base * new.bps + 488, dev)
        os.fsync(fd)
    finally:
        os.close(fd)
    return (
        f"{old.kind} grown from {old.clusters} to {new.clusters} clusters "
        f"({new.total * new.bps} bytes)"
    )


class Fat(Filesystem):
    """FAT12, FAT16 and FAT32 (blkid's vfat): grown by our own code, never shrunk."""

    names = ("vfat",)
    aliases = ("fat12", "fat16", "fat32", "fat", "msdos")
    mount_types = ("vfat", "msdos", "fat", "fuse.fusefat")
    human_name = "FAT"
    partclone_name = "FAT"  # the header says FAT12, FAT16 or FAT32
    kernel = KernelMount("vfat", read_only="ro")
    fuse = FuseDriver("fusefat", "fusefat", writes=False)
    esp = True
    max_file_size = MAX_FILE_SIZE
    tools: ClassVar[Tools] = {Op.NEW_ID: ("mlabel",)}
    unsupported: ClassVar[Reasons] = {
        Op.CHECK: "FAT is not checked after a restore here (fsck.fat can check it by hand).",
        Op.REPAIR: "FAT is not mended by rescue; run fsck.fat by hand if it is damaged.",
        Op.SHRINK: "FAT cannot be shrunk by rescue; restore onto a partition at least as "
        "large as the source instead.",
        Op.REBUILD: "FAT is never rebuilt smaller by rescue; restore onto a partition at "
        "least as large as the source instead.",
        Op.MINIMUM: "FAT cannot be shrunk by rescue, so it has no smaller size: it keeps "
        "its partition's.",
        Op.DAMAGE: "rescue has no block-to-file map for FAT: the damage report lists byte "
        "ranges only.",
        Op.SET_START: "FAT's start sector is not updated when its partition moves "
        "(only Windows' NTFS boot needs that).",
        Op.CREATE: "FAT is imaged, not created anew on restore.",
    }

    def read_allocation(self, f: BinaryIO, size: int) -> Allocation:
        return read_allocation(f, size)

    def grow(self, dev: str, size: int) -> str | None:
        return grow_fat(dev, size)

    def new_id(self, dev: str) -> str | None:
        """A new serial with mtools' mlabel; unchanged (None) when mtools is not installed."""
        if not which("mlabel"):
            return None
        serial = secrets.token_hex(4).upper()
        run(["mlabel", "-i", dev, "-N", serial, "::"], check=False)
        return f"{serial[:4]}-{serial[4:]}"


FAT = Fat()
