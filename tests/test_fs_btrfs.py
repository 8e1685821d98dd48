"""btrfs: extents mapped to the device through the chunk tree; a volume round-trips.

partclone 0.3.23's btrfs map is not a reference here: on a fresh mkfs.btrfs it
marks the data chunk's blocks both at their logical and at their physical
address, and leaves the second (DUP) copy of the metadata out. Ours marks, on
the device, every copy of every extent the extent tree records, and the proof
is a restore onto a disk full of garbage that `btrfs check --check-data-csum`
accepts with every file identical.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from capabilities import need
from conftest import DiskFactory
from diskbench import PartSpec, fill_tree, run, tree_digest

from rescue.cli import main
from rescue.errors import FilesystemError
from rescue.filesystems.btrfs import crc32c, read_allocation
from rescue.filesystems.detect import allocation_for

pytestmark = need("root", "loop", "partclone")


def test_crc32c_known_value() -> None:
    assert crc32c(b"123456789") == 0xE3069283


@pytest.fixture
def btrfs_disk(loop_disk_factory: DiskFactory, tmp_path: Path):  # type: ignore[no-untyped-def]
    disk = loop_disk_factory(400, "gpt", [PartSpec(None, "btrfs", "pool")])
    mnt = disk.mount(0, tmp_path / "m")
    fill_tree(mnt, 12, 16)
    (mnt / "gone.bin").write_bytes(os.urandom(8 << 20))
    os.sync()
    (mnt / "gone.bin").unlink()
    disk.umount(mnt)
    return disk


def test_map_covers_every_extent_copy(btrfs_disk) -> None:  # type: ignore[no-untyped-def]
    part = btrfs_disk.parts[0]
    size = int(run("blockdev", "--getsize64", part))
    with open(part, "rb") as f:
        alloc = read_allocation(f, size)
    assert alloc.block_size == 16384
    assert alloc.label == "pool"
    assert alloc.uuid == run("blkid", "-p", "-o", "value", "-s", "UUID", part).strip()
    # at least the data the filesystem says it holds, and far less than the whole device
    assert alloc.used_bytes >= alloc.fs_used_blocks * alloc.block_size * 0.9
    assert alloc.used_bytes < size // 2


def test_round_trip_onto_garbage(
    btrfs_disk, loop_disk_factory: DiskFactory, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    image = tmp_path / "image"
    assert main(["capture", btrfs_disk.path, str(image)]) == 0
    assert list(image.glob("*.btrfs-ptcl-img.zst"))
    target = loop_disk_factory(400, None, [])
    with open(target.path, "r+b") as f:
        f.write(os.urandom(400 << 20))
    target.rescan()
    assert main(["restore", str(image), target.path, "--yes"]) == 0
    target.rescan()
    run("btrfs", "check", "--readonly", "--check-data-csum", target.parts[0])
    a = btrfs_disk.mount(0, tmp_path / "a", "ro")
    digest = tree_digest(a)
    btrfs_disk.umount(a)  # same fsid: mount one at a time
    b = target.mount(0, tmp_path / "b", "ro")
    assert tree_digest(b) == digest


def test_damage_falls_back_to_raw(tmp_path: Path) -> None:
    img = tmp_path / "b.img"
    with img.open("wb") as f:
        f.truncate(200 << 20)
    run("mkfs.btrfs", "-q", "-f", str(img))
    with img.open("rb") as f, pytest.raises(FilesystemError, match="truncated"):
        read_allocation(f, 100 << 20)
    with img.open("r+b") as f:
        f.seek(0x10000 + 0x100)
        f.write(b"\xff\xff")
    with img.open("rb") as f:
        with pytest.raises(FilesystemError, match="checksum"):
            read_allocation(f, 200 << 20)
        assert allocation_for(f, 200 << 20).fstype == "dd"


def test_unreplayed_log_is_refused(tmp_path: Path) -> None:
    img = tmp_path / "b.img"
    with img.open("wb") as f:
        f.truncate(200 << 20)
    run("mkfs.btrfs", "-q", "-f", str(img))
    with img.open("r+b") as f:
        f.seek(0x10000)
        sb = bytearray(f.read(4096))
        struct.pack_into("<Q", sb, 0x60, 0x1234000)  # a log root
        struct.pack_into("<I", sb, 0, crc32c(bytes(sb[0x20:])))
        f.seek(0x10000)
        f.write(sb)
    with img.open("rb") as f, pytest.raises(FilesystemError, match="log"):
        read_allocation(f, 200 << 20)
