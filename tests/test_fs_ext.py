"""The ext2/3/4 map equals partclone's bitmap, on every shape mke2fs makes."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest
from capabilities import need
from diskbench import fill_tree

from rescue.errors import FilesystemError
from rescue.filesystems.base import clear_run
from rescue.filesystems.detect import allocation_for
from rescue.filesystems.ext import (
    _descriptors,
    read_allocation,
    read_super,
    unused_inode_table_runs,
)

pytestmark = need("partclone")


def partclone_bitmap(img: Path) -> tuple[int, int, int, bytes]:
    """(total blocks, block size, device size, bitmap) from partclone's own image header."""
    out = subprocess.run(
        ["partclone.extfs", "-c", "-s", str(img), "-o", "-", "-L", "/dev/null"],
        check=True,
        capture_output=True,
    ).stdout
    (total,) = struct.unpack_from("<Q", out, 60)
    (bs,) = struct.unpack_from("<I", out, 84)
    (dev,) = struct.unpack_from("<Q", out, 52)
    return total, bs, dev, out[110 : 110 + (total + 7) // 8]


def expected_bitmap(img: Path, partclone: bytes) -> bytes:
    """partclone's bitmap less the never-used inode-table tails (see unused_inode_table_runs)."""
    bm = bytearray(partclone)
    with img.open("rb") as f:
        s = read_super(f)
        for first, count in unused_inode_table_runs(f, s, _descriptors(f, s)):
            clear_run(bm, first, count)
    return bytes(bm)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    fill_tree(root, seed=3, approx_mib=6)
    return root


def _mkfs(img: Path, size_mib: int, cmd: list[str], tree: Path) -> None:
    with img.open("wb") as f:
        f.truncate(size_mib << 20)
    subprocess.run([*cmd, "-q", "-F", "-d", str(tree), str(img)], check=True, capture_output=True)


SHAPES = {
    "ext4 4k": (600, ["mkfs.ext4", "-b", "4096"]),
    "ext4 1k": (200, ["mkfs.ext4", "-b", "1024"]),
    "ext4 2k odd size": (333, ["mkfs.ext4", "-b", "2048"]),
    "no flex_bg": (600, ["mkfs.ext4", "-b", "4096", "-O", "^flex_bg"]),
    "meta_bg": (600, ["mkfs.ext4", "-b", "4096", "-O", "meta_bg,^resize_inode"]),
    "meta_bg 1k": (300, ["mkfs.ext4", "-b", "1024", "-O", "meta_bg,^resize_inode"]),
    "64bit": (600, ["mkfs.ext4", "-b", "4096", "-O", "64bit"]),
    "no 64bit": (600, ["mkfs.ext4", "-b", "4096", "-O", "^64bit"]),
    "sparse_super2": (600, ["mkfs.ext4", "-b", "4096", "-O", "sparse_super2"]),
    "no sparse_super": (300, ["mkfs.ext4", "-b", "4096", "-O", "^sparse_super,^resize_inode"]),
    "ext3": (300, ["mkfs.ext3"]),
    "ext2": (150, ["mkfs.ext2"]),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_map_equals_partclone(tmp_path: Path, tree: Path, shape: str) -> None:
    size, cmd = SHAPES[shape]
    img = tmp_path / "fs.img"
    _mkfs(img, size, cmd, tree)
    with img.open("rb") as f:
        alloc = read_allocation(f, size << 20)
    total, bs, dev, bitmap = partclone_bitmap(img)
    assert (alloc.total_blocks, alloc.block_size, alloc.device_size) == (total, bs, dev)
    assert alloc.bitmap == expected_bitmap(img, bitmap)
    if shape in ("ext2", "ext3"):  # no checksummed descriptors: exactly partclone's map
        assert alloc.bitmap == bitmap
    assert alloc.fstype == cmd[0].split(".")[1]


@need("root", "loop")
def test_deleted_files_are_free_and_match_partclone(tmp_path: Path, tree: Path) -> None:
    img = tmp_path / "fs.img"
    _mkfs(img, 300, ["mkfs.ext4", "-b", "4096"], tree)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], check=True)
    try:
        (mnt / "garbage").write_bytes(b"\xaa" * (20 << 20))
        subprocess.run(["sync"], check=True)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    with img.open("rb") as f:
        before = read_allocation(f, 300 << 20)
    subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], check=True)
    try:
        (mnt / "garbage").unlink()
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    with img.open("rb") as f:
        after = read_allocation(f, 300 << 20)
    assert before.used_blocks - after.used_blocks >= (20 << 20) // 4096
    assert after.bitmap == expected_bitmap(img, partclone_bitmap(img)[3])


def test_unused_inode_tables_are_skipped_and_counted_exactly(tmp_path: Path, tree: Path) -> None:
    img = tmp_path / "fs.img"
    _mkfs(img, 2048, ["mkfs.ext4", "-b", "4096"], tree)
    with img.open("rb") as f:
        alloc = read_allocation(f, 2048 << 20)
        s = read_super(f)
        runs = unused_inode_table_runs(f, s, _descriptors(f, s))
    theirs = partclone_bitmap(img)[3]
    skipped = sum(n for _, n in runs)
    assert skipped > 0
    theirs_used = int.from_bytes(theirs, "little").bit_count()
    assert alloc.used_blocks == theirs_used - skipped
    # every skipped block is one partclone calls used, and every one is an inode-table block
    for first, count in runs:
        for n in (first, first + count - 1):
            assert theirs[n >> 3] >> (n & 7) & 1
            assert not alloc.is_used(n)


def test_truncated_partition_is_refused_and_imaged_raw(tmp_path: Path, tree: Path) -> None:
    img = tmp_path / "fs.img"
    _mkfs(img, 200, ["mkfs.ext4", "-b", "4096"], tree)
    short = 150 << 20
    with img.open("rb") as f:
        with pytest.raises(FilesystemError, match="truncated"):
            read_allocation(f, short)
        alloc = allocation_for(f, short, "ext4")
    assert alloc.fstype == "dd"
    assert alloc.device_size == short
    assert "damaged" in alloc.warnings[0]


GDT_OFFSET = 4096
"""Group 0's descriptor with 4 KiB blocks: block 1."""


def test_corrupt_bitmap_is_refused(tmp_path: Path, tree: Path) -> None:
    img = tmp_path / "fs.img"
    _mkfs(img, 200, ["mkfs.ext4", "-b", "4096", "-O", "^flex_bg"], tree)
    with img.open("r+b") as f:
        f.seek(GDT_OFFSET)
        (bb,) = struct.unpack("<I", f.read(4))
        f.seek(bb * 4096)
        f.write(b"\0" * 4096)  # a bitmap that calls the group's own metadata free
    with img.open("rb") as f:
        with pytest.raises(FilesystemError, match="bitmap"):
            read_allocation(f, 200 << 20)
        assert allocation_for(f, 200 << 20).fstype == "dd"


def test_zeroed_descriptors_are_refused(tmp_path: Path, tree: Path) -> None:
    img = tmp_path / "fs.img"
    _mkfs(img, 200, ["mkfs.ext4", "-b", "4096"], tree)
    with img.open("r+b") as f:
        f.seek(4096)
        f.write(b"\0" * 4096)
    with img.open("rb") as f, pytest.raises(FilesystemError):
        read_allocation(f, 200 << 20)


def test_unreplayed_journal_is_refused(tmp_path: Path, tree: Path) -> None:
    """A filesystem that needs journal recovery has stale bitmaps: image it whole."""
    img = tmp_path / "fs.img"
    _mkfs(img, 200, ["mkfs.ext4", "-b", "4096"], tree)
    with img.open("r+b") as f:
        f.seek(1024 + 0x60)
        (incompat,) = struct.unpack("<I", f.read(4))
        f.seek(1024 + 0x60)
        f.write(struct.pack("<I", incompat | 0x4))
    with img.open("rb") as f:
        with pytest.raises(FilesystemError, match="journal"):
            read_allocation(f, 200 << 20)
        assert allocation_for(f, 200 << 20, "ext4").fstype == "dd"


def test_bigalloc_falls_back_to_raw(tmp_path: Path) -> None:
    img = tmp_path / "fs.img"
    with img.open("wb") as f:
        f.truncate(300 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-O", "bigalloc", "-C", "16384", str(img)],
                   check=True, capture_output=True)  # fmt: skip
    with img.open("rb") as f:
        alloc = allocation_for(f, 300 << 20, "ext4")
    assert alloc.fstype == "dd"
    assert "bigalloc" in alloc.warnings[0]


def test_unknown_data_is_raw(tmp_path: Path) -> None:
    img = tmp_path / "junk.img"
    img.write_bytes(b"\x5a" * (1 << 20) + b"\0" * 10)
    with img.open("rb") as f:
        alloc = allocation_for(f, (1 << 20) + 10)
    assert alloc.fstype == "dd"
    assert alloc.device_size == (1 << 20) + 10
    assert alloc.total_blocks == 257
