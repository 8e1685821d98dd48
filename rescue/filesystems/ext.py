"""ext2/3/4: its registry entry (:data:`EXT`) and its used blocks, read from the
superblock, group descriptors and block bitmaps.

The rules for groups whose bitmap was never initialised (BLOCK_UNINIT) and for
where backup superblocks and descriptor blocks live (sparse_super, sparse_super2,
meta_bg) follow the on-disk format as e2fsprogs defines it, so the map equals
the one partclone.extfs builds through libext2fs. What e2fsprogs' programs do
for it (check, grow, shrink, new UUID, damaged files) is in
:mod:`rescue.filesystems.ext_tools`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO, ClassVar

from rescue.errors import FilesystemError
from rescue.filesystems import ext_tools
from rescue.filesystems.base import Allocation, clear_run, count_bits, read_at, set_run
from rescue.filesystems.interface import CheckResult, Filesystem, KernelMount, Op, Reasons, Tools
from rescue.filesystems.probe import _ext_name

EXT_MAGIC = 0xEF53

# feature bits
COMPAT_SPARSE_SUPER2 = 0x0200
INCOMPAT_RECOVER = 0x0004
INCOMPAT_META_BG = 0x0010
INCOMPAT_64BIT = 0x0080
INCOMPAT_KNOWN = (
    0x0001  # compression (never used)
    | 0x0002  # filetype
    | INCOMPAT_RECOVER
    | 0x0008  # journal_dev
    | INCOMPAT_META_BG
    | 0x0040  # extents
    | INCOMPAT_64BIT
    | 0x0100  # mmp
    | 0x0200  # flex_bg
    | 0x0400  # ea_inode
    | 0x1000  # dirdata
    | 0x2000  # csum_seed
    | 0x4000  # largedir
    | 0x8000  # inline_data
    | 0x10000  # encrypt
    | 0x20000  # casefold
)
RO_COMPAT_SPARSE_SUPER = 0x0001
RO_COMPAT_BIGALLOC = 0x0200

RO_COMPAT_GDT_CSUM = 0x0010
RO_COMPAT_METADATA_CSUM = 0x0400

BG_INODE_UNINIT = 0x0001
BG_BLOCK_UNINIT = 0x0002


@dataclass(frozen=True)
class _Super:
    block_size: int
    blocks_count: int
    free_blocks: int
    first_data_block: int
    blocks_per_group: int
    inodes_per_group: int
    inode_size: int
    compat: int
    incompat: int
    ro_compat: int
    reserved_gdt: int
    desc_size: int
    first_meta_bg: int
    backup_bgs: tuple[int, int]
    uuid: str
    label: str | None

    @property
    def groups(self) -> int:
        return -(-(self.blocks_count - self.first_data_block) // self.blocks_per_group)

    @property
    def desc_per_block(self) -> int:
        return self.block_size // self.desc_size

    @property
    def desc_blocks(self) -> int:
        return -(-self.groups // self.desc_per_block)

    @property
    def inode_table_blocks(self) -> int:
        return -(-(self.inodes_per_group * self.inode_size) // self.block_size)

    def group_first_block(self, g: int) -> int:
        return self.first_data_block + g * self.blocks_per_group

    def group_blocks(self, g: int) -> int:
        if g == self.groups - 1:
            return self.blocks_count - self.group_first_block(g)
        return self.blocks_per_group

    def has_super(self, g: int) -> bool:
        if g == 0:
            return True
        if self.compat & COMPAT_SPARSE_SUPER2:
            return g in self.backup_bgs
        if g <= 1 or not self.ro_compat & RO_COMPAT_SPARSE_SUPER:
            return True
        if not g & 1:
            return False
        return any(_is_power(g, base) for base in (3, 5, 7))

    def old_desc_blocks(self) -> int:
        if self.incompat & INCOMPAT_META_BG:
            return self.first_meta_bg
        return self.desc_blocks + self.reserved_gdt

    def descriptor_block(self, i: int) -> int:
        """Block holding descriptor block ``i`` (meta_bg places them per meta group)."""
        if not self.incompat & INCOMPAT_META_BG or i < self.first_meta_bg:
            return self.first_data_block + 1 + i
        g = i * self.desc_per_block
        return self.group_first_block(g) + (1 if self.has_super(g) else 0)

    def super_and_desc_blocks(self, g: int) -> list[tuple[int, int]]:
        """(first, count) runs of superblock backup and descriptor blocks in group ``g``."""
        start = self.group_first_block(g)
        if start == 0 and self.block_size == 1024:
            start = 1
        runs = []
        has = self.has_super(g)
        if has:
            runs.append((start, 1))
        dpb = self.desc_per_block
        meta_bg = g // dpb
        if not self.incompat & INCOMPAT_META_BG or meta_bg < self.first_meta_bg:
            if has:
                n = self.old_desc_blocks()
                n = min(n, self.blocks_count - (start + 1))
                if n > 0:
                    runs.append((start + 1, n))
        elif g % dpb in (0, 1, dpb - 1):
            runs.append((start + (1 if has else 0), 1))
        return runs


def _is_power(n: int, base: int) -> bool:
    while n > 1 and n % base == 0:
        n //= base
    return n == 1


def read_super(f: BinaryIO) -> _Super:
    sb = read_at(f, 1024, 1024, "ext")
    (magic,) = struct.unpack_from("<H", sb, 0x38)
    if magic != EXT_MAGIC:
        raise FilesystemError("No ext2/3/4 superblock (bad magic).")
    log_bs, log_cs = struct.unpack_from("<II", sb, 0x18)
    if log_bs > 6:
        raise FilesystemError(f"ext superblock has an impossible block size (log {log_bs}).")
    block_size = 1024 << log_bs
    blocks_lo, _r, free_lo, _fi, first_data = struct.unpack_from("<IIIII", sb, 0x04)
    bpg, _cpg, ipg = struct.unpack_from("<III", sb, 0x20)
    compat, incompat, ro_compat = struct.unpack_from("<III", sb, 0x5C)
    (inode_size,) = struct.unpack_from("<H", sb, 0x58)
    (rev,) = struct.unpack_from("<I", sb, 0x4C)
    if rev == 0:
        inode_size = 128
    (reserved_gdt,) = struct.unpack_from("<H", sb, 0xCE)
    (desc_size,) = struct.unpack_from("<H", sb, 0xFE)
    (first_meta_bg,) = struct.unpack_from("<I", sb, 0x104)
    blocks_hi = free_hi = 0
    if incompat & INCOMPAT_64BIT:
        (blocks_hi,) = struct.unpack_from("<I", sb, 0x150)
        (free_hi,) = struct.unpack_from("<I", sb, 0x158)
    else:
        desc_size = 32
    if desc_size < 32 or desc_size & (desc_size - 1) or desc_size > block_size:
        raise FilesystemError(f"ext superblock has an impossible descriptor size {desc_size}.")
    backup = struct.unpack_from("<II", sb, 0x24C)
    uuid_raw = sb[0x68:0x78]
    h = uuid_raw.hex()
    label = sb[0x78:0x88].split(b"\0", 1)[0].decode(errors="replace") or None
    if ro_compat & RO_COMPAT_BIGALLOC or log_cs != log_bs:
        raise FilesystemError("ext4 with bigalloc (clusters) is not supported block by block.")
    if incompat & ~INCOMPAT_KNOWN:
        raise FilesystemError(f"ext filesystem with unknown features ({incompat:#x}).")
    if bpg != block_size * 8 or ipg == 0:
        raise FilesystemError(f"ext superblock has an impossible group size ({bpg} blocks).")
    if first_data != (1 if block_size == 1024 else 0):
        raise FilesystemError(f"ext superblock has an impossible first data block {first_data}.")
    return _Super(
        block_size=block_size,
        blocks_count=blocks_lo | blocks_hi << 32,
        free_blocks=free_lo | free_hi << 32,
        first_data_block=first_data,
        blocks_per_group=bpg,
        inodes_per_group=ipg,
        inode_size=inode_size,
        compat=compat,
        incompat=incompat,
        ro_compat=ro_compat,
        reserved_gdt=reserved_gdt,
        desc_size=desc_size,
        first_meta_bg=first_meta_bg,
        backup_bgs=(backup[0], backup[1]),
        uuid=f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}",
        label=label,
    )


@dataclass(frozen=True)
class _Group:
    block_bitmap: int
    inode_bitmap: int
    inode_table: int
    flags: int
    itable_unused: int


def _descriptors(f: BinaryIO, s: _Super) -> list[_Group]:
    """The group descriptors, in group order."""
    out: list[_Group] = []
    wide = s.desc_size >= 64
    for i in range(s.desc_blocks):
        blk = s.descriptor_block(i)
        if blk >= s.blocks_count:
            raise FilesystemError(f"ext descriptor block {blk} lies outside the filesystem.")
        raw = read_at(f, blk * s.block_size, s.block_size, "ext")
        for j in range(s.desc_per_block):
            if len(out) == s.groups:
                break
            d = raw[j * s.desc_size : (j + 1) * s.desc_size]
            bb, ib, it = struct.unpack_from("<III", d, 0)
            (flags,) = struct.unpack_from("<H", d, 0x12)
            (unused,) = struct.unpack_from("<H", d, 0x1C)
            if wide:
                bbh, ibh, ith = struct.unpack_from("<III", d, 0x20)
                bb |= bbh << 32
                ib |= ibh << 32
                it |= ith << 32
                (unused_hi,) = struct.unpack_from("<H", d, 0x32)
                unused |= unused_hi << 16
            out.append(_Group(bb, ib, it, flags, unused))
    return out


def read_allocation(f: BinaryIO, size: int) -> Allocation:
    """The used blocks of the ext2/3/4 filesystem in ``f`` (``size`` bytes)."""
    s = read_super(f)
    fs_bytes = s.blocks_count * s.block_size
    if fs_bytes > size:
        raise FilesystemError(
            f"The ext filesystem claims {fs_bytes} bytes but its partition has {size}: "
            "the partition is truncated or the superblock is wrong."
        )
    if s.incompat & INCOMPAT_RECOVER:
        raise FilesystemError(
            "The ext filesystem's journal was not replayed (it was not cleanly unmounted): "
            "its block bitmaps may be out of date."
        )
    descs = _descriptors(f, s)
    bm = bytearray((s.blocks_count + 7) // 8)
    # blocks before the first group (the 1 KiB boot block) are kept, as partclone keeps them
    set_run(bm, 0, s.first_data_block)
    bpg = s.blocks_per_group
    group_bytes = bpg // 8
    for g, grp in enumerate(descs):
        bb, ib, it, flags = grp.block_bitmap, grp.inode_bitmap, grp.inode_table, grp.flags
        for what, loc, n in (
            ("block bitmap", bb, 1),
            ("inode bitmap", ib, 1),
            ("inode table", it, s.inode_table_blocks),
        ):
            if loc < s.first_data_block or loc + n > s.blocks_count:
                raise FilesystemError(
                    f"ext group {g}: its {what} at block {loc} lies outside the filesystem "
                    "(damaged group descriptors)."
                )
        first = s.group_first_block(g)
        nblocks = s.group_blocks(g)
        if flags & BG_BLOCK_UNINIT:
            for a, n in s.super_and_desc_blocks(g):
                set_run(bm, a, n)
            set_run(bm, it, s.inode_table_blocks)
            set_run(bm, bb, 1)
            set_run(bm, ib, 1)
            continue
        raw = read_at(f, bb * s.block_size, group_bytes, "ext")
        _place(bm, raw, first, nblocks)
    _check_metadata_marked(bm, s, descs)
    for first, count in unused_inode_table_runs(f, s, descs):
        clear_run(bm, first, count)
    used = count_bits(bytes(bm), s.blocks_count)
    return Allocation(
        fstype=_ext_name(read_at(f, 1024, 1024, "ext")) or "ext4",
        partclone_fs="EXTFS",
        block_size=s.block_size,
        total_blocks=s.blocks_count,
        device_size=fs_bytes,
        bitmap=bytes(bm),
        used_blocks=used,
        fs_used_blocks=s.blocks_count - s.free_blocks,
        label=s.label,
        uuid=s.uuid,
    )


def _place(bm: bytearray, raw: bytes, first: int, nblocks: int) -> None:
    """Copy a group's bitmap (``nblocks`` bits) into ``bm`` starting at block ``first``."""
    if first % 8 == 0:
        whole = nblocks // 8
        lo = first // 8
        bm[lo : lo + whole] = raw[:whole]
        rest = nblocks % 8
        if rest:
            mask = (1 << rest) - 1
            bm[lo + whole] |= raw[whole] & mask
        return
    # 1 KiB blocks: groups start at block 1 + k*8192, one bit off byte alignment
    value = int.from_bytes(raw[: (nblocks + 7) // 8], "little") & ((1 << nblocks) - 1)
    shift = first % 8
    lo = first // 8
    shifted = value << shift
    nbytes = (nblocks + shift + 7) // 8
    chunk = shifted.to_bytes(nbytes, "little")
    for i, byte in enumerate(chunk):
        bm[lo + i] |= byte


def unused_inode_table_runs(f: BinaryIO, s: _Super, descs: list[_Group]) -> list[tuple[int, int]]:
    """Inode-table blocks that hold only inodes never in use: not worth copying.

    This is where our map deliberately differs from partclone's. With checksummed
    group descriptors (uninit_bg / metadata_csum), ext4 keeps, per group, the
    count of inodes at the end of the table that were never used
    (``bg_itable_unused``); the kernel never reads them as inodes (a new inode is
    built in memory) and e2fsck skips them. mke2fs allocates full inode tables,
    so an empty 1 TiB filesystem "uses" 16 GiB for them: copying only the part
    that ever held inodes makes imaging time follow the data. To be safe against
    a wrong counter we keep every block up to the highest inode the inode bitmap
    marks used, whichever is further.
    """
    if not s.ro_compat & (RO_COMPAT_GDT_CSUM | RO_COMPAT_METADATA_CSUM):
        return []
    runs = []
    per_block = s.block_size // s.inode_size
    ipg = s.inodes_per_group
    for grp in descs:
        used = ipg - min(grp.itable_unused, ipg)
        if grp.flags & BG_INODE_UNINIT:
            used = 0
        else:
            raw = read_at(f, grp.inode_bitmap * s.block_size, (ipg + 7) // 8, "ext")
            highest = int.from_bytes(raw, "little").bit_length()
            used = max(used, highest)
        keep = -(-used // per_block)
        if keep < s.inode_table_blocks:
            runs.append((grp.inode_table + keep, s.inode_table_blocks - keep))
    return runs


def _check_metadata_marked(bm: bytearray, s: _Super, descs: list[_Group]) -> None:
    """A bitmap that calls a group's own metadata free is damaged: refuse to trust it."""

    def used(n: int) -> bool:
        return bool(bm[n >> 3] >> (n & 7) & 1)

    for g, grp in enumerate(descs):
        for what, loc in (
            ("block bitmap", grp.block_bitmap),
            ("inode bitmap", grp.inode_bitmap),
            ("inode table", grp.inode_table),
        ):
            if not used(loc):
                raise FilesystemError(
                    f"ext group {g}: the block bitmap marks the group's own {what} "
                    f"(block {loc}) free: the bitmaps are damaged."
                )
        for a, _n in s.super_and_desc_blocks(g):
            if not used(a):
                raise FilesystemError(
                    f"ext group {g}: the block bitmap marks the superblock/descriptors "
                    f"(block {a}) free: the bitmaps are damaged."
                )


class Ext(Filesystem):
    """ext2, ext3 and ext4: e2fsprogs for everything but the allocation map."""

    names = ("ext2", "ext3", "ext4")
    mount_types = ("ext2", "ext3", "ext4")
    human_name = "ext2/3/4"
    partclone_name = "EXTFS"
    kernel = KernelMount("ext4", read_only="ro,noload")
    linux_root = True
    tools: ClassVar[Tools] = {
        Op.CHECK: ("e2fsck",),
        Op.REPAIR: ("e2fsck",),
        Op.GROW: ("e2fsck", "resize2fs"),
        Op.SHRINK: ("e2fsck", "resize2fs", "debugfs"),
        Op.MINIMUM: ("resize2fs", "dumpe2fs"),
        Op.NEW_ID: ("e2fsck", "tune2fs"),
        Op.DAMAGE: ("debugfs",),
    }
    unsupported: ClassVar[Reasons] = {
        Op.REBUILD: "ext2/3/4 shrinks in place with resize2fs: it is never rebuilt.",
        Op.SET_START: "ext2/3/4 does not record where its partition starts: a move needs nothing.",
        Op.CREATE: "ext2/3/4 is imaged, not created anew on restore.",
    }

    def read_allocation(self, f: BinaryIO, size: int) -> Allocation:
        return read_allocation(f, size)

    def check(self, dev: str) -> CheckResult:
        return ext_tools.check(dev)

    def repair(self, dev: str) -> CheckResult:
        return ext_tools.repair(dev)

    def grow(self, dev: str, size: int) -> str | None:
        ext_tools.grow(dev)
        return None

    def shrink(self, dev: str, size: int) -> None:
        ext_tools.shrink(dev, size, self.mounted)

    def minimum_size(self, dev: str) -> int:
        return ext_tools.minimum_size(dev)

    def new_id(self, dev: str) -> str | None:
        return ext_tools.new_uuid(dev)

    def files_at(self, dev: str, ranges: list[tuple[int, int]], block_size: int) -> list[str]:
        return ext_tools.files_at(dev, ranges, block_size)


EXT = Ext()
