"""NTFS: the cluster map equals partclone's; a volume round-trips with its backup boot sector."""

from __future__ import annotations

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
from rescue.filesystems.ntfs import read_allocation

pytestmark = need("partclone")


def partclone_map(img: Path) -> tuple[bytes, int, int, int, int]:
    out = subprocess.run(
        ["partclone.ntfs", "-c", "-s", str(img), "-o", "-", "-L", "/dev/null"],
        check=True,
        capture_output=True,
    ).stdout
    dev, total, _sb, used = struct.unpack_from("<QQQQ", out, 52)
    (bs,) = struct.unpack_from("<I", out, 84)
    return out[110 : 110 + (total + 7) // 8], dev, total, used, bs


def make_ntfs(path: Path, size_mib: int, *opts: str) -> Path:
    with path.open("wb") as f:
        f.truncate(size_mib << 20)
    run("mkntfs", "-q", "-F", "-Q", *opts, str(path))
    return path


@need("root", "fuse")
@pytest.mark.parametrize("cluster", ["512", "4096", "65536"])
def test_map_equals_partclone_with_files_and_garbage(tmp_path: Path, cluster: str) -> None:
    img = make_ntfs(tmp_path / "n.img", 300, "-c", cluster, "-L", "Data")
    mnt = tmp_path / "m"
    mnt.mkdir()
    run("ntfs-3g", str(img), str(mnt))
    try:
        fill_tree(mnt, 4, 12)
        (mnt / "gone.bin").write_bytes(os.urandom(6 << 20))
        os.sync()
        (mnt / "gone.bin").unlink()
    finally:
        run("umount", str(mnt))
    with img.open("rb") as f:
        alloc = read_allocation(f, 300 << 20)
    bitmap, dev, total, used, bs = partclone_map(img)
    assert alloc.bitmap == bitmap
    assert (alloc.device_size, alloc.total_blocks, alloc.used_blocks, alloc.block_size) == (
        dev, total, used, bs,
    )  # fmt: skip
    assert alloc.label == "Data"
    blkid = run("blkid", "-p", "-o", "value", "-s", "UUID", str(img)).strip()
    assert alloc.uuid == blkid


def test_damaged_volumes_fall_back_to_raw(tmp_path: Path) -> None:
    img = make_ntfs(tmp_path / "n.img", 100)
    with img.open("rb") as f:
        with pytest.raises(FilesystemError, match="truncated"):
            read_allocation(f, 50 << 20)
        assert allocation_for(f, 50 << 20, "ntfs").fstype == "dd"
    boot = img.read_bytes()[:512]
    (mft_lcn,) = struct.unpack_from("<Q", boot, 0x30)
    cluster = struct.unpack_from("<H", boot, 0x0B)[0] * boot[0x0D]
    with img.open("r+b") as f:
        f.seek(mft_lcn * cluster + 6 * 1024)  # $Bitmap's MFT record
        f.write(b"JUNK")
    with img.open("rb") as f:
        with pytest.raises(FilesystemError, match="record 6"):
            read_allocation(f, 100 << 20)
        alloc = allocation_for(f, 100 << 20)
    assert alloc.fstype == "dd"
    assert "damaged" in alloc.warnings[0]


@need("root", "loop", "fuse")
def test_ntfs_partition_round_trip(loop_disk_factory: DiskFactory, tmp_path: Path) -> None:
    src = loop_disk_factory(200, "gpt", [PartSpec(None, "ntfs", "WinData")])
    mnt = src.mount(0, tmp_path / "s")
    fill_tree(mnt, 8, 10)
    src.umount(mnt)
    image = tmp_path / "image"
    assert main(["capture", src.path, str(image)]) == 0
    manifest = (image / "rescue.json").read_text()
    assert '"stored_as": "partclone"' in manifest
    assert '"tail": "' in manifest  # the backup boot sector past the last cluster
    target = loop_disk_factory(200, None, [])
    with open(target.path, "r+b") as f:
        f.write(b"\xaa" * (200 << 20))  # a used disk, not a blank one
    target.rescan()
    assert main(["restore", str(image), target.path, "--yes"]) == 0
    target.rescan()
    run("ntfsfix", "-n", target.parts[0])
    size = int(run("blockdev", "--getsize64", target.parts[0]))
    with open(target.parts[0], "rb") as t, open(src.parts[0], "rb") as s:
        t.seek(size - 512)
        s.seek(size - 512)
        assert t.read(512) == s.read(512), "backup boot sector not restored"
    a = src.mount(0, tmp_path / "a", "ro")
    b = target.mount(0, tmp_path / "b", "ro")
    assert tree_digest(a) == tree_digest(b)


@need("root", "fuse")
def test_ntfs_far_smaller_than_its_partition(
    loop_disk_factory: DiskFactory, tmp_path: Path
) -> None:
    """An NTFS of 20 MiB in a 60 MiB partition: only its backup boot sector is kept past
    it (not the 40 MiB of free room), the image reads back and restores clean."""
    src = loop_disk_factory(80, "gpt", [PartSpec(60, None)])
    run("mkntfs", "-q", "-F", "-Q", "-L", "small", src.parts[0], str((20 << 20) // 512))
    image = tmp_path / "image"
    assert main(["capture", src.path, str(image)]) == 0
    assert main(["verify", str(image)]) == 0
    assert (image / "rescue.json").stat().st_size < 64 * 1024
    target = loop_disk_factory(80, None, [])
    assert main(["restore", str(image), target.path, "--yes"]) == 0
    target.rescan()
    run("ntfsfix", "-n", target.parts[0])
    with open(target.parts[0], "rb") as t, open(src.parts[0], "rb") as s:
        t.seek((20 << 20) - 512)
        s.seek((20 << 20) - 512)
        backup = s.read(1024)
        assert b"NTFS" in backup, "the test volume has no backup boot sector where expected"
        assert t.read(1024) == backup, "backup boot sector not restored"
