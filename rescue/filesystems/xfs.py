"""XFS: its registry entry (:data:`XFS`), its used blocks (every block of every
allocation group except its free extents), and xfsprogs' programs for it.

Free space is read from each AG's by-block-number free-space B+tree (bnobt),
whose root the AG's free-space header (AGF) names. The internal log and all
metadata are allocated, so they are kept. Structures are big-endian.

XFS grows online (xfs_growfs through a private mount) but cannot shrink. A
restore into a smaller partition gets a fresh XFS with the same UUID, label and
on-disk features (:meth:`Xfs.rebuild`), and the files are copied into it with
``cp`` keeping owners, modes, times (to the nanosecond), extended attributes,
ACLs and hard links; XFS-only inode flags (chattr) and project quota ids are
not carried over. Its minimum is the used space plus room for a new log and
metadata, and never below the 300 MiB mkfs.xfs needs.
"""

from __future__ import annotations

import math
import os
import re
import struct
import threading
import uuid
from dataclasses import dataclass
from typing import BinaryIO, ClassVar

from rescue import kernel
from rescue.errors import ExternalToolError, FilesystemError
from rescue.filesystems.base import Allocation, clear_run, count_bits, read_at
from rescue.filesystems.interface import (
    CheckResult,
    Filesystem,
    KernelMount,
    Op,
    Reasons,
    Tools,
    run_checker,
)
from rescue.progress import ProgressReporter, check_cancel
from rescue.system import output, run

MiB = 1 << 20
XFS_SMALLEST = 301 * MiB
"""mkfs.xfs refuses filesystems of 300 MiB or less."""

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


# --- a fresh filesystem and a file copy (XFS cannot shrink) -------------------------------

_XFS_FEATURES = {
    "crc": "-m",
    "finobt": "-m",
    "rmapbt": "-m",
    "reflink": "-m",
    "bigtime": "-m",
    "inobtcount": "-m",
    "sparse": "-i",
    "ftype": "-n",
}


def xfs_format_options(info: str) -> list[str]:
    """mkfs.xfs options that give a new XFS the on-disk features of the one ``info`` describes.

    ``info`` is what ``xfs_db -c info`` (the xfs_info layout) prints. A restored
    system's kernel must understand the new filesystem, so it gets the same
    features, not this system's defaults.
    """
    found = dict(re.findall(r"\b(\w+)=(\d+)", info))
    groups: dict[str, list[str]] = {}
    crc = found.get("crc", "1")
    for name, flag in _XFS_FEATURES.items():
        if name not in found:
            continue
        if crc == "0" and name not in ("crc", "ftype"):
            continue  # v4 filesystems take none of the v5 features
        groups.setdefault(flag, []).append(f"{name}={found[name]}")
    args = [a for flag, values in groups.items() for a in (flag, ",".join(values))]
    m = re.search(r"^data\s*=\s*bsize=(\d+)", info, re.M)
    if m:
        args += ["-b", f"size={m.group(1)}"]
    return args


def smallest_for(used: int) -> int:
    """The smallest XFS that holds ``used`` bytes of a mounted one's data."""
    # a new log (up to 64 MiB), allocation group headers and free-space slack
    return max(XFS_SMALLEST, math.ceil(used * 1.15) + 96 * MiB)


class Xfs(Filesystem):
    """XFS: xfsprogs; grown online through a private mount, rebuilt instead of shrunk."""

    names = ("xfs",)
    mount_types = ("xfs",)
    human_name = "XFS"
    partclone_name = "XFS"
    kernel = KernelMount("xfs", read_only="ro,norecovery,nouuid")
    linux_root = True
    tools: ClassVar[Tools] = {
        Op.CHECK: ("xfs_repair",),
        Op.GROW: ("xfs_growfs",),
        Op.REBUILD: ("xfs_db", "mkfs.xfs", "cp"),
        Op.NEW_ID: ("xfs_admin",),
    }
    unsupported: ClassVar[Reasons] = {
        Op.REPAIR: "XFS is not mended by rescue; run xfs_repair by hand if it is damaged.",
        Op.SHRINK: "XFS cannot be shrunk; rescue makes a new, smaller XFS with the same UUID, "
        "label and features and copies the files into it instead.",
        Op.DAMAGE: "rescue has no block-to-file map for XFS: the damage report lists byte "
        "ranges only.",
        Op.SET_START: "XFS does not record where its partition starts: a move needs nothing.",
        Op.CREATE: "XFS is imaged, not created anew on restore.",
    }

    def read_allocation(self, f: BinaryIO, size: int) -> Allocation:
        return read_allocation(f, size)

    def check(self, dev: str) -> CheckResult:
        return run_checker(["xfs_repair", "-n", dev])

    def grow(self, dev: str, size: int) -> str | None:
        with self.mounted(dev, writable=True) as mnt:
            run(["xfs_growfs", str(mnt)])
        return None

    def minimum_size(self, dev: str) -> int:
        with self.mounted(dev) as mnt:
            st = os.statvfs(mnt)
        return smallest_for((st.f_blocks - st.f_bfree) * st.f_frsize)

    def new_id(self, dev: str) -> str | None:
        new = str(uuid.uuid4())
        run(["xfs_admin", "-U", new, dev])
        return new

    def rebuild(
        self, src: str, dst: str, progress: ProgressReporter, cancel: threading.Event | None
    ) -> None:
        """A new XFS on ``dst`` like the one on ``src`` (UUID, label, features); copy files."""
        check_cancel(cancel)
        options = xfs_format_options(output(["xfs_db", "-r", "-c", "info", src]))
        ident = kernel.blkid(src)
        if ident.get("UUID"):
            if "-m" in options:
                options[options.index("-m") + 1] += f",uuid={ident['UUID']}"
            else:
                options += ["-m", f"uuid={ident['UUID']}"]
        if ident.get("LABEL"):
            options += ["-L", ident["LABEL"]]
        run(["mkfs.xfs", "-f", "-q", *options, dst])
        progress.note(
            "XFS cannot shrink: a new XFS was made with the same UUID, label and features; "
            "copying the files into it."
        )
        # the copy has the source's UUID: both are mounted at once only with nouuid
        with self.mounted(src) as src_mnt, kernel.private_mount(dst, "xfs", "rw,nouuid") as dst_mnt:
            res = run(
                [
                    "cp",
                    "--no-dereference",
                    "--recursive",
                    "--preserve=mode,ownership,timestamps,links,xattr",
                    "--sparse=always",
                    "--no-target-directory",
                    f"{src_mnt}/.",
                    str(dst_mnt),
                ],
                check=False,
            )
            if res.returncode != 0:
                detail = res.stderr.decode(errors="replace").strip().splitlines()[-3:]
                raise ExternalToolError(
                    f"Copying the files of the XFS partition failed: {' / '.join(detail)}"
                )
            run(["sync", "-f", str(dst_mnt)], check=False)


XFS = Xfs()
