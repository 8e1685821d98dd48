"""exFAT: its registry entry (:data:`EXFAT`) and its used sectors: the boot region and
FAT, then every cluster the allocation bitmap marks.

partclone maps exFAT in sectors, so this map does too. The allocation bitmap,
the up-case table and the root directory live in the cluster heap and are
marked in the bitmap like any file.

No resizer for exFAT exists: it keeps its size when its partition grows, and
cannot be restored into a smaller one. exfatprogs' tune.exfat gives it a new
serial; without a kernel driver, exfat-fuse mounts it.
"""

from __future__ import annotations

import secrets
import struct
from typing import BinaryIO, ClassVar

from rescue.errors import FilesystemError
from rescue.filesystems.base import Allocation, count_bits, read_at, set_run
from rescue.filesystems.interface import Filesystem, FuseDriver, KernelMount, Op, Reasons, Tools
from rescue.system import run

ENTRY_END = 0x00
ENTRY_BITMAP = 0x81
ENTRY_LABEL = 0x83
FAT_LAST = 0xFFFFFFF7  # at or above: bad cluster or end of chain


def read_allocation(f: BinaryIO, size: int) -> Allocation:
    """The used sectors of the exFAT filesystem in ``f`` (a partition of ``size`` bytes)."""
    b = read_at(f, 0, 512, "exfat")
    if b[3:11] != b"EXFAT   " or b[510:512] != b"\x55\xaa":
        raise FilesystemError("No exFAT boot sector (bad signature).")
    (volume_sectors,) = struct.unpack_from("<Q", b, 0x48)
    fat_off, fat_len, heap, clusters, root, serial = struct.unpack_from("<IIIIII", b, 0x50)
    bps_shift, spc_shift = b[0x6C], b[0x6D]
    if not 9 <= bps_shift <= 12 or spc_shift > 25 - bps_shift:
        raise FilesystemError("exFAT boot sector has an impossible sector or cluster size.")
    bps = 1 << bps_shift
    spc = 1 << spc_shift
    cluster = bps * spc
    if volume_sectors * bps > size:
        raise FilesystemError(
            f"The exFAT volume claims {volume_sectors * bps} bytes but its partition has {size}: "
            "the partition is truncated or the boot sector is wrong."
        )
    if not fat_off < heap <= volume_sectors or heap + clusters * spc > volume_sectors:
        raise FilesystemError("exFAT boot sector has an impossible layout.")
    if fat_len * bps < (clusters + 2) * 4 or not 2 <= root < clusters + 2:
        raise FilesystemError("exFAT boot sector has an impossible FAT or root directory.")
    fat = read_at(f, fat_off * bps, (clusters + 2) * 4, "exfat")

    def offset(c: int) -> int:
        return int((heap + (c - 2) * spc) * bps)

    def chain(first: int) -> list[int]:
        out: list[int] = []
        c = first
        while 2 <= c < clusters + 2:
            if len(out) > clusters:
                raise FilesystemError("exFAT cluster chain loops: the FAT is damaged.")
            out.append(c)
            (c,) = struct.unpack_from("<I", fat, c * 4)
        if c < FAT_LAST and c not in (0, 1):
            raise FilesystemError("exFAT cluster chain leaves the volume: the FAT is damaged.")
        return out

    bitmap_entry = None
    label = None
    for c in chain(root):
        data = read_at(f, offset(c), cluster, "exfat")
        for pos in range(0, cluster, 32):
            etype = data[pos]
            if etype == ENTRY_END:
                break
            if etype == ENTRY_BITMAP and bitmap_entry is None:
                bitmap_entry = struct.unpack_from("<IQ", data, pos + 20)
            elif etype == ENTRY_LABEL:
                n = min(data[pos + 1], 11)
                label = data[pos + 2 : pos + 2 + 2 * n].decode("utf-16-le", errors="replace")
        else:
            continue
        break
    if bitmap_entry is None:
        raise FilesystemError("exFAT root directory has no allocation bitmap entry.")
    first, length = bitmap_entry
    need = (clusters + 7) // 8
    if length < need or not 2 <= first < clusters + 2:
        raise FilesystemError("exFAT allocation bitmap entry is damaged.")
    span = -(-need // cluster)
    if first + span > clusters + 2:
        raise FilesystemError("exFAT allocation bitmap lies outside the volume.")
    heap_bits = read_at(f, offset(first), need, "exfat")
    if not heap_bits[(first - 2) >> 3] >> ((first - 2) & 7) & 1:
        raise FilesystemError("exFAT allocation bitmap marks itself free: it is damaged.")

    bm = bytearray((volume_sectors + 7) // 8)
    set_run(bm, 0, heap)  # boot region, FATs and everything up to the cluster heap
    heap_end = heap + clusters * spc
    set_run(bm, heap_end, volume_sectors - heap_end)  # sectors after the last cluster
    cluster_bits = int.from_bytes(heap_bits, "little") & ((1 << clusters) - 1)
    index = 0
    # walk runs of set bits in the cluster bitmap
    while cluster_bits:
        low = (cluster_bits & -cluster_bits).bit_length() - 1
        cluster_bits >>= low
        index += low
        ones = (~cluster_bits & (cluster_bits + 1)).bit_length() - 1
        set_run(bm, heap + index * spc, ones * spc)
        cluster_bits >>= ones
        index += ones
    used = count_bits(bytes(bm), volume_sectors)
    return Allocation(
        fstype="exfat",
        partclone_fs="EXFAT",
        block_size=bps,
        total_blocks=volume_sectors,
        device_size=volume_sectors * bps,
        bitmap=bytes(bm),
        used_blocks=used,
        fs_used_blocks=used,
        label=label or None,
        uuid=f"{serial >> 16:04X}-{serial & 0xFFFF:04X}",
    )


class ExFat(Filesystem):
    """exFAT: imaged, browsed and given a new serial; no resizer exists for it."""

    names = ("exfat",)
    mount_types = ("exfat",)
    human_name = "exFAT"
    partclone_name = "EXFAT"
    kernel = KernelMount("exfat", read_only="ro")
    fuse = FuseDriver("mount.exfat-fuse", "exfat-fuse", writes=True)
    tools: ClassVar[Tools] = {Op.NEW_ID: ("tune.exfat",)}
    unsupported: ClassVar[Reasons] = {
        Op.CHECK: "exFAT is not checked after a restore here (fsck.exfat can check it by hand).",
        Op.REPAIR: "exFAT is not mended by rescue; run fsck.exfat by hand if it is damaged.",
        Op.GROW: "exFAT cannot be grown (no resizer for it exists): it keeps its size in a "
        "larger partition.",
        Op.SHRINK: "exFAT cannot be shrunk (no resizer for it exists); restore onto a "
        "partition at least as large as the source instead.",
        Op.REBUILD: "exFAT is never rebuilt smaller by rescue; restore onto a partition at "
        "least as large as the source instead.",
        Op.MINIMUM: "exFAT cannot be shrunk, so it has no smaller size: it keeps its partition's.",
        Op.DAMAGE: "rescue has no block-to-file map for exFAT: the damage report lists byte "
        "ranges only.",
        Op.SET_START: "exFAT's start sector is not updated when its partition moves "
        "(only Windows' NTFS boot needs that).",
        Op.CREATE: "exFAT is imaged, not created anew on restore.",
    }

    def read_allocation(self, f: BinaryIO, size: int) -> Allocation:
        return read_allocation(f, size)

    def new_id(self, dev: str) -> str | None:
        serial = secrets.token_hex(4).upper()
        run(["tune.exfat", "-I", f"0x{serial}", dev])
        return f"{serial[:4]}-{serial[4:]}"


EXFAT = ExFat()
