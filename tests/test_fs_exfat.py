"""exFAT: the sector map equals partclone's; a volume round-trips through an image."""

from __future__ import annotations

import json
import os
import struct
import subprocess
from pathlib import Path

import pytest
from capabilities import need
from conftest import DiskFactory
from diskbench import PartSpec, fill_tree, run, tree_digest

from rescue.cli import main
from rescue.errors import FilesystemError
from rescue.filesystems.detect import allocation_for
from rescue.filesystems.exfat import read_allocation

pytestmark = [need("root", "loop", "fuse", "partclone")]


def partclone_map(img: str) -> tuple[bytes, int, int]:
    out = subprocess.run(
        ["partclone.exfat", "-c", "-s", img, "-o", "-", "-L", "/dev/null"],
        check=True,
        capture_output=True,
    ).stdout
    (total,) = struct.unpack_from("<Q", out, 60)
    (bs,) = struct.unpack_from("<I", out, 84)
    return out[110 : 110 + (total + 7) // 8], total, bs


@pytest.fixture
def exfat_disk(loop_disk_factory: DiskFactory, tmp_path: Path):  # type: ignore[no-untyped-def]
    disk = loop_disk_factory(260, "gpt", [PartSpec(None, "exfat", "STICK")])
    mnt = disk.mount(0, tmp_path / "m")
    fill_tree(mnt, 6, 10)
    (mnt / "gone.bin").write_bytes(os.urandom(4 << 20))
    os.sync()
    (mnt / "gone.bin").unlink()
    disk.umount(mnt)
    return disk


def test_map_equals_partclone(exfat_disk) -> None:  # type: ignore[no-untyped-def]
    part = exfat_disk.parts[0]
    size = int(run("blockdev", "--getsize64", part))
    with open(part, "rb") as f:
        alloc = read_allocation(f, size)
    bitmap, total, bs = partclone_map(part)
    assert (alloc.total_blocks, alloc.block_size) == (total, bs)
    assert alloc.bitmap == bitmap
    assert alloc.label == "STICK"
    assert alloc.uuid == run("blkid", "-p", "-o", "value", "-s", "UUID", part).strip()


def test_damaged_exfat_falls_back_to_raw(tmp_path: Path) -> None:
    img = tmp_path / "e.img"
    with img.open("wb") as f:
        f.truncate(64 << 20)
    run("mkfs.exfat", str(img))
    with img.open("rb") as f, pytest.raises(FilesystemError, match="truncated"):
        read_allocation(f, 32 << 20)
    heap = struct.unpack_from("<I", img.read_bytes(), 0x58)[0]
    root = struct.unpack_from("<I", img.read_bytes(), 0x60)[0]
    spc = 1 << img.read_bytes()[0x6D]
    with img.open("r+b") as f:
        f.seek((heap + (root - 2) * spc) * 512)
        f.write(b"\0" * 512)  # the root directory, with the bitmap's entry
    with img.open("rb") as f:
        with pytest.raises(FilesystemError, match="bitmap"):
            read_allocation(f, 64 << 20)
        assert allocation_for(f, 64 << 20).fstype == "dd"


def test_exfat_round_trip(exfat_disk, loop_disk_factory: DiskFactory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    image = tmp_path / "image"
    assert main(["capture", exfat_disk.path, str(image)]) == 0
    streams = list(image.glob("*.exfat-ptcl-img.zst"))
    assert streams
    used = json.loads((image / "rescue.json").read_text())["partitions"][0]["used_bytes"]
    assert streams[0].stat().st_size < used
    target = loop_disk_factory(260, None, [])
    assert main(["restore", str(image), target.path, "--yes"]) == 0
    target.rescan()
    run("fsck.exfat", "-n", target.parts[0])
    a = exfat_disk.mount(0, tmp_path / "a", "ro")
    b = target.mount(0, tmp_path / "b", "ro")
    assert tree_digest(a) == tree_digest(b)
