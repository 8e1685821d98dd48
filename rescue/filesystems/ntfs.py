"""NTFS: its registry entry (:data:`NTFS`), its used clusters (from the boot sector,
the MFT and the $Bitmap file) and what ntfs-3g's programs do for it.

The volume's cluster bitmap is the data of MFT record 6 ($Bitmap): one bit a
cluster, least significant bit first, the same layout as partclone's bitmap.
The map covers the clusters of the volume; the partition may hold a few more
sectors after the last whole cluster (the backup boot sector lives in the last
one), which partclone's format cannot carry: ``tail_bytes`` says how many.

Everything else goes through ntfs-3g's programs: ntfsresize grows and shrinks
it and tells its minimum, ntfsfix checks it, ntfslabel gives it a new serial,
ntfscluster names the files holding a cluster range. Browsing and destination
drives use ntfs-3g itself where the kernel has no NTFS driver (browsing always).
"""

from __future__ import annotations

import os
import re
import secrets
import struct
from dataclasses import dataclass
from typing import BinaryIO, ClassVar

from rescue.blockio import pwrite_all
from rescue.errors import ExternalToolError, FilesystemError
from rescue.filesystems.base import Allocation, count_bits, read_at
from rescue.filesystems.interface import (
    CheckResult,
    Filesystem,
    FuseDriver,
    KernelMount,
    Op,
    Reasons,
    Tools,
    run_checker,
)
from rescue.system import run

MiB = 1 << 20

MFT_RECORD_BITMAP = 6
MFT_RECORD_VOLUME = 3
ATTR_VOLUME_NAME = 0x60
ATTR_DATA = 0x80
ATTR_END = 0xFFFFFFFF


@dataclass(frozen=True)
class Boot:
    sector_size: int
    cluster_size: int
    total_sectors: int
    mft_lcn: int
    record_size: int
    serial: int

    @property
    def clusters(self) -> int:
        return self.total_sectors * self.sector_size // self.cluster_size


def read_boot(f: BinaryIO) -> Boot:
    b = read_at(f, 0, 512, "ntfs")
    if b[3:11] != b"NTFS    ":
        raise FilesystemError("No NTFS boot sector (bad signature).")
    (bps,) = struct.unpack_from("<H", b, 0x0B)
    if bps not in (256, 512, 1024, 2048, 4096):
        raise FilesystemError(f"NTFS boot sector has an impossible sector size {bps}.")
    raw_spc = b[0x0D]
    spc = raw_spc if raw_spc <= 0x80 else 1 << (256 - raw_spc)
    if spc == 0 or spc & (spc - 1):
        raise FilesystemError(f"NTFS boot sector has an impossible cluster size ({raw_spc}).")
    cluster = bps * spc
    (total_sectors, mft_lcn, _mirr) = struct.unpack_from("<QQQ", b, 0x28)
    (cpr,) = struct.unpack_from("<b", b, 0x40)
    record = cpr * cluster if cpr > 0 else 1 << -cpr
    if record < 256 or record > 65536 or record % bps:
        raise FilesystemError(f"NTFS boot sector has an impossible MFT record size {record}.")
    (serial,) = struct.unpack_from("<Q", b, 0x48)
    boot = Boot(bps, cluster, total_sectors, mft_lcn, record, serial)
    if not 0 < mft_lcn < boot.clusters:
        raise FilesystemError(f"NTFS boot sector places the MFT outside the volume ({mft_lcn}).")
    return boot


def _mft_record(f: BinaryIO, boot: Boot, number: int) -> bytes:
    """MFT record ``number`` with its update sequence (fixups) applied and checked."""
    raw = bytearray(
        read_at(
            f,
            boot.mft_lcn * boot.cluster_size + number * boot.record_size,
            boot.record_size,
            "ntfs",
        )
    )
    if raw[:4] != b"FILE":
        raise FilesystemError(f"NTFS MFT record {number} is damaged (no FILE signature).")
    usa_off, usa_count = struct.unpack_from("<HH", raw, 4)
    stride = boot.sector_size
    if usa_count != boot.record_size // stride + 1 or usa_off + 2 * usa_count > len(raw):
        raise FilesystemError(f"NTFS MFT record {number} has a damaged update sequence.")
    usn = raw[usa_off : usa_off + 2]
    for i in range(1, usa_count):
        end = i * stride
        if raw[end - 2 : end] != usn:
            raise FilesystemError(
                f"NTFS MFT record {number} is torn (update sequence mismatch in sector {i - 1})."
            )
        raw[end - 2 : end] = raw[usa_off + 2 * i : usa_off + 2 * i + 2]
    return bytes(raw)


def _attributes(record: bytes) -> list[tuple[int, int, bytes]]:
    """(type, name length, attribute bytes) of every attribute in an MFT record."""
    (pos,) = struct.unpack_from("<H", record, 0x14)
    out: list[tuple[int, int, bytes]] = []
    while pos + 8 <= len(record):
        atype, alen = struct.unpack_from("<II", record, pos)
        if atype == ATTR_END:
            return out
        if alen < 16 or pos + alen > len(record):
            raise FilesystemError("NTFS MFT record has a damaged attribute list.")
        out.append((atype, record[pos + 9], record[pos : pos + alen]))
        pos += alen
    raise FilesystemError("NTFS MFT record has no end-of-attributes marker.")


def decode_runs(attr: bytes) -> list[tuple[int | None, int]]:
    """The runlist of a non-resident attribute: (first cluster or None if sparse, clusters)."""
    (off,) = struct.unpack_from("<H", attr, 0x20)
    runs: list[tuple[int | None, int]] = []
    lcn = 0
    pos = off
    while pos < len(attr) and attr[pos] != 0:
        header = attr[pos]
        len_size, off_size = header & 0x0F, header >> 4
        if (
            len_size == 0
            or len_size > 8
            or off_size > 8
            or pos + 1 + len_size + off_size > len(attr)
        ):
            raise FilesystemError("NTFS runlist is damaged.")
        length = int.from_bytes(attr[pos + 1 : pos + 1 + len_size], "little")
        if off_size:
            delta = int.from_bytes(
                attr[pos + 1 + len_size : pos + 1 + len_size + off_size], "little", signed=True
            )
            lcn += delta
            runs.append((lcn, length))
        else:
            runs.append((None, length))
        pos += 1 + len_size + off_size
    return runs


def _read_nonresident(f: BinaryIO, boot: Boot, attr: bytes, want: int) -> bytes:
    if not attr[8]:
        raise FilesystemError("NTFS $Bitmap is resident, which a real volume never has.")
    out = []
    got = 0
    for lcn, length in decode_runs(attr):
        n = min(length * boot.cluster_size, want - got)
        if n <= 0:
            break
        if lcn is None:
            out.append(bytes(n))
        else:
            if lcn < 0 or lcn + length > boot.clusters:
                raise FilesystemError("NTFS $Bitmap's data lies outside the volume.")
            out.append(read_at(f, lcn * boot.cluster_size, n, "ntfs"))
        got += n
    if got < want:
        raise FilesystemError(f"NTFS $Bitmap holds {got} bytes; the volume needs {want}.")
    return b"".join(out)


def _label(f: BinaryIO, boot: Boot) -> str | None:
    try:
        record = _mft_record(f, boot, MFT_RECORD_VOLUME)
        for atype, _n, attr in _attributes(record):
            if atype == ATTR_VOLUME_NAME and not attr[8]:
                vlen, voff = struct.unpack_from("<IH", attr, 0x10)
                return attr[voff : voff + vlen].decode("utf-16-le", errors="replace") or None
    except FilesystemError:
        return None
    return None


def read_allocation(f: BinaryIO, size: int) -> Allocation:
    """The used clusters of the NTFS volume in ``f`` (a partition of ``size`` bytes)."""
    boot = read_boot(f)
    fs_bytes = boot.total_sectors * boot.sector_size
    if fs_bytes > size:
        raise FilesystemError(
            f"The NTFS volume claims {fs_bytes} bytes but its partition has {size}: "
            "the partition is truncated or the boot sector is wrong."
        )
    total = boot.clusters
    record = _mft_record(f, boot, MFT_RECORD_BITMAP)
    data = [a for t, name_len, a in _attributes(record) if t == ATTR_DATA and name_len == 0]
    if not data:
        raise FilesystemError("NTFS $Bitmap has no data attribute.")
    need = (total + 7) // 8
    (data_size,) = struct.unpack_from("<Q", data[0], 0x30)
    if data_size < need:
        raise FilesystemError(f"NTFS $Bitmap has {data_size} bytes for {total} clusters.")
    bitmap = bytearray(_read_nonresident(f, boot, data[0], need))
    if total % 8:
        bitmap[-1] &= (1 << (total % 8)) - 1
    mft_first = boot.mft_lcn
    if not bitmap[0] & 1 or not bitmap[mft_first >> 3] >> (mft_first & 7) & 1:
        raise FilesystemError("NTFS $Bitmap marks the boot sector or the MFT free: it is damaged.")
    used = count_bits(bytes(bitmap), total)
    return Allocation(
        fstype="ntfs",
        partclone_fs="NTFS",
        block_size=boot.cluster_size,
        total_blocks=total,
        device_size=size,
        bitmap=bytes(bitmap),
        used_blocks=used,
        fs_used_blocks=used,
        label=_label(f, boot),
        uuid=f"{boot.serial:016X}",
    )


# --- ntfs-3g's programs ---------------------------------------------------------------


def minimum_size(dev: str) -> int:
    """What ``ntfsresize --info`` says it can shrink to, and room for the backup boot sector."""
    res = run(["ntfsresize", "--info", "--force", "--no-action", dev], check=False)
    text = res.stdout.decode(errors="replace")
    m = re.search(r"You might resize at (\d+) bytes", text)
    if m is None:
        raise ExternalToolError(
            f"ntfsresize cannot tell how small {dev} can be: "
            f"{(text + res.stderr.decode(errors='replace')).strip().splitlines()[-1:]}"
        )
    return int(m.group(1)) + MiB  # room for the backup boot sector and rounding


def files_at(dev: str, ranges: list[tuple[int, int]], cluster: int) -> list[str]:
    """ntfscluster lists the files holding each cluster range."""
    found: set[str] = set()
    for off, n in ranges:
        lo, hi = off // cluster, (off + n - 1) // cluster
        text = run(["ntfscluster", "-c", f"{lo}-{hi}", dev], check=False, timeout=300)
        for line in text.stdout.decode(errors="replace").splitlines():
            m = re.match(r"Inode (\d+) (/.*)$", line.strip())
            if not m:
                continue
            inode, path = int(m.group(1)), m.group(2)
            path = re.sub(r"/\$[A-Z_]+(\(.*\))?$", "", path) or "/"
            found.add("(filesystem metadata)" if inode < 16 or "/$" in path else path)
    return sorted(found)


def set_hidden_sectors(fd: int, base: int, size: int, start_sector: int) -> None:
    """Record a moved partition's new start in both NTFS boot sectors (Windows boots by it).

    The backup boot sector is the last sector of the partition (``size`` bytes at ``base``).
    """
    value = start_sector.to_bytes(4, "little") if start_sector < 1 << 32 else bytes(4)
    for offset in (base, base + size - 512):
        if os.pread(fd, 11, offset)[3:11] == b"NTFS    ":
            pwrite_all(fd, value, offset + 0x1C, "the NTFS partition")
    os.fsync(fd)


class Ntfs(Filesystem):
    """NTFS (Windows): ntfs-3g's programs; read through ntfs-3g, never the kernel's driver."""

    names = ("ntfs",)
    aliases = ("ntfs3",)
    mount_types = ("ntfs", "ntfs3")
    human_name = "NTFS"
    partclone_name = "NTFS"
    kernel = KernelMount("ntfs", read_only=None)
    fuse = FuseDriver("ntfs-3g", "ntfs-3g", writes=True)
    tools: ClassVar[Tools] = {
        Op.CHECK: ("ntfsfix",),
        Op.GROW: ("ntfsresize",),
        Op.SHRINK: ("ntfsresize",),
        Op.MINIMUM: ("ntfsresize",),
        Op.NEW_ID: ("ntfslabel",),
        Op.DAMAGE: ("ntfscluster",),
    }
    unsupported: ClassVar[Reasons] = {
        Op.REPAIR: "NTFS is mended by Windows (chkdsk /f), not by rescue.",
        Op.REBUILD: "NTFS shrinks in place with ntfsresize: it is never rebuilt.",
        Op.CREATE: "NTFS is imaged, not created anew on restore.",
    }

    def read_allocation(self, f: BinaryIO, size: int) -> Allocation:
        return read_allocation(f, size)

    def check(self, dev: str) -> CheckResult:
        return run_checker(["ntfsfix", "--no-action", dev])

    def grow(self, dev: str, size: int) -> str | None:
        run(["ntfsresize", "--force", dev], input=b"y\n")
        return None

    def shrink(self, dev: str, size: int) -> None:
        run(["ntfsresize", "--force", "--size", str(size), dev], input=b"y\n")

    def minimum_size(self, dev: str) -> int:
        return minimum_size(dev)

    def new_id(self, dev: str) -> str | None:
        serial = secrets.token_hex(8).upper()
        run(["ntfslabel", f"--new-serial={serial}", dev])
        return serial

    def files_at(self, dev: str, ranges: list[tuple[int, int]], block_size: int) -> list[str]:
        return files_at(dev, ranges, block_size)

    def record_start(self, fd: int, base: int, size: int, start_sector: int) -> None:
        set_hidden_sectors(fd, base, size, start_sector)


NTFS = Ntfs()
