"""Recognise a filesystem from its superblock magic, without udev or blkid.

Used when udev has no ``ID_FS_TYPE`` for a device and to double-check what
the image engine is about to read. Names follow blkid's (ext4, ntfs, vfat, ...).
"""

from __future__ import annotations

import struct
from typing import BinaryIO

# ext2/3/4 feature bits that decide the name blkid gives
_EXT_COMPAT_HAS_JOURNAL = 0x0004
_EXT_INCOMPAT_JOURNAL_DEV = 0x0008
_EXT4_INCOMPAT = 0x0040 | 0x0080 | 0x0200 | 0x0400 | 0x10000  # extents, 64bit, flex_bg, mmp, inline
_EXT4_RO_COMPAT = 0x0008 | 0x0010 | 0x0020 | 0x0040 | 0x0400  # huge_file, gdt_csum, dir_nlink, ...

_PROBE_BYTES = 0x10100  # up to and including btrfs's primary superblock


def _read_at(f: BinaryIO, offset: int, size: int) -> bytes:
    f.seek(offset)
    return f.read(size)


def probe_fstype(f: BinaryIO) -> str | None:
    """The filesystem type of the partition open in ``f``, or None if unknown."""
    try:
        head = _read_at(f, 0, _PROBE_BYTES)
    except OSError:
        return None
    if len(head) < 1024:
        return None
    if len(head) >= 0x440 and head[0x438:0x43A] == b"\x53\xef":
        return _ext_name(head[0x400:0x800])
    if head[0:4] == b"XFSB":
        return "xfs"
    if len(head) >= 0x10048 and head[0x10040:0x10048] == b"_BHRfS_M":
        return "btrfs"
    if head[3:11] == b"NTFS    ":
        return "ntfs"
    if head[3:11] == b"EXFAT   ":
        return "exfat"
    for page in (4096, 8192, 16384, 65536):
        if len(head) >= page and head[page - 10 : page] in (b"SWAPSPACE2", b"SWAP-SPACE"):
            return "swap"
    if head[510:512] == b"\x55\xaa" and (head[0x36:0x39] == b"FAT" or head[0x52:0x57] == b"FAT32"):
        return "vfat"
    return None


def _ext_name(sb: bytes) -> str | None:
    compat, incompat, ro_compat = struct.unpack_from("<III", sb, 0x5C)
    if incompat & _EXT_INCOMPAT_JOURNAL_DEV:
        return "jbd"
    if incompat & _EXT4_INCOMPAT or ro_compat & _EXT4_RO_COMPAT:
        return "ext4"
    if compat & _EXT_COMPAT_HAS_JOURNAL:
        return "ext3"
    return "ext2"
