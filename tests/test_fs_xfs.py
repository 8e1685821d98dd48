"""XFS: the block map equals partclone's; damage falls back to raw; a volume round-trips."""

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
from rescue.filesystems.xfs import read_allocation

pytestmark = need("root", "loop", "partclone")


def partclone_map(img: Path) -> tuple[bytes, int, int]:
    out = subprocess.run(
        ["partclone.xfs", "-c", "-s", str(img), "-o", "-", "-L", "/dev/null"],
        check=True,
        capture_output=True,
    ).stdout
    (total,) = struct.unpack_from("<Q", out, 60)
    (bs,) = struct.unpack_from("<I", out, 84)
    return out[110 : 110 + (total + 7) // 8], total, bs


def make_xfs(tmp_path: Path, size_mib: int, *opts: str) -> Path:
    img = tmp_path / "x.img"
    with img.open("wb") as f:
        f.truncate(size_mib << 20)
    run("mkfs.xfs", "-q", "-f", *opts, str(img))
    if "crc=0" in opts:
        return img  # this kernel does not mount deprecated v4 XFS: compared empty
    mnt = tmp_path / "m"
    mnt.mkdir(exist_ok=True)
    run("mount", "-o", "loop", str(img), str(mnt))
    try:
        fill_tree(mnt, 11, 16)
        for i in range(30):
            (mnt / f"gone{i}").write_bytes(os.urandom(100_000 + i * 7000))
        os.sync()
        for i in range(0, 30, 2):
            (mnt / f"gone{i}").unlink()
    finally:
        run("umount", str(mnt))
    return img


@pytest.mark.parametrize(
    "opts",
    [(), ("-m", "crc=0"), ("-b", "size=1024"), ("-d", "agcount=5")],
    ids=["v5", "v4", "1k-blocks", "5-ags"],
)
def test_map_equals_partclone(tmp_path: Path, opts: tuple[str, ...]) -> None:
    img = make_xfs(tmp_path, 400, "-L", "srv", *opts)
    with img.open("rb") as f:
        alloc = read_allocation(f, 400 << 20)
    bitmap, total, bs = partclone_map(img)
    assert (alloc.total_blocks, alloc.block_size) == (total, bs)
    assert alloc.bitmap == bitmap
    assert alloc.label == "srv"
    assert alloc.uuid == run("blkid", "-p", "-o", "value", "-s", "UUID", str(img)).strip()


def test_damage_falls_back_to_raw(tmp_path: Path) -> None:
    img = make_xfs(tmp_path, 400)
    with img.open("rb") as f, pytest.raises(FilesystemError, match="truncated"):
        read_allocation(f, 200 << 20)
    sb = img.read_bytes()[:512]
    (bs,) = struct.unpack_from(">I", sb, 4)
    (agblocks,) = struct.unpack_from(">I", sb, 84)
    (sect,) = struct.unpack_from(">H", sb, 102)
    with img.open("r+b") as f:
        f.seek(agblocks * bs + sect)  # AG 1's free-space header
        f.write(b"JUNK")
    with img.open("rb") as f:
        with pytest.raises(FilesystemError, match="AGF"):
            read_allocation(f, 400 << 20)
        alloc = allocation_for(f, 400 << 20)
    assert alloc.fstype == "dd"
    assert "damaged" in alloc.warnings[0]


def test_xfs_round_trip(loop_disk_factory: DiskFactory, tmp_path: Path) -> None:
    src = loop_disk_factory(340, "gpt", [PartSpec(None, "xfs", "data")])
    mnt = src.mount(0, tmp_path / "s")
    fill_tree(mnt, 2, 12)
    src.umount(mnt)
    image = tmp_path / "image"
    assert main(["capture", src.path, str(image)]) == 0
    assert list(image.glob("*.xfs-ptcl-img.zst"))
    target = loop_disk_factory(340, None, [])
    with open(target.path, "r+b") as f:
        f.write(b"\x77" * (340 << 20))
    target.rescan()
    assert main(["restore", str(image), target.path, "--yes"]) == 0
    target.rescan()
    run("xfs_repair", "-n", target.parts[0])
    a = src.mount(0, tmp_path / "a", "ro")
    b = target.mount(0, tmp_path / "b", "ro,nouuid")
    assert tree_digest(a) == tree_digest(b)
