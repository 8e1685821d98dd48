"""FAT12/16/32: the sector map (partclone's unit), checked against partclone and fsck.fat."""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import pytest
from capabilities import need
from conftest import DiskFactory
from diskbench import PartSpec, run

from rescue.cli import main
from rescue.errors import FilesystemError
from rescue.filesystems.detect import allocation_for
from rescue.filesystems.fat import read_allocation

pytestmark = need("partclone")


def make_fat(path: Path, size_mib: int, bits: int) -> dict[str, bytes]:
    """A FAT filesystem filled with mtools (this kernel has no vfat), with deleted files."""
    with path.open("wb") as f:
        f.truncate(size_mib << 20)
    run("mkfs.vfat", "-F", str(bits), "-n", f"FAT{bits}", str(path))
    files = {f"f{i}.bin": os.urandom(1000 + i * 37_000) for i in range(12)}
    src = path.parent / f"src{bits}"
    src.mkdir()
    for name, data in files.items():
        (src / name).write_bytes(data)
    run("mmd", "-i", str(path), "::/sub")
    run("mcopy", "-i", str(path), *[str(src / n) for n in files], "::/sub/")
    run("mcopy", "-i", str(path), str(src / "f3.bin"), "::/gone.bin")
    run("mdel", "-i", str(path), "::/gone.bin")
    return files


def partclone_map(img: Path) -> tuple[bytes, int, int, bytes]:
    out = subprocess.run(
        ["partclone.fat", "-c", "-s", str(img), "-o", "-", "-L", "/dev/null"],
        check=True,
        capture_output=True,
    ).stdout
    (total,) = struct.unpack_from("<Q", out, 60)
    (bs,) = struct.unpack_from("<I", out, 84)
    return out[110 : 110 + (total + 7) // 8], total, bs, out[36:41]


@pytest.mark.parametrize(("bits", "size"), [(16, 64), (32, 300)])
def test_map_equals_partclone(tmp_path: Path, bits: int, size: int) -> None:
    img = tmp_path / "fat.img"
    make_fat(img, size, bits)
    with img.open("rb") as f:
        alloc = read_allocation(f, size << 20)
    bitmap, total, bs, name = partclone_map(img)
    assert (alloc.total_blocks, alloc.block_size) == (total, bs)
    assert alloc.partclone_fs.encode() == name
    assert alloc.bitmap == bitmap
    assert alloc.label == f"FAT{bits}"
    assert alloc.uuid == run("blkid", "-p", "-o", "value", "-s", "UUID", str(img)).strip()


def test_fat12_map_follows_fsck_not_partclone(tmp_path: Path) -> None:
    """partclone 0.3.23 maps FAT12 wrongly (it leaves the first data cluster out and marks
    free ones), so a FAT12 image made from its map would lose files. Ours marks exactly the
    clusters fsck.fat counts as used, plus the system area."""
    img = tmp_path / "fat.img"
    make_fat(img, 8, 12)
    with img.open("rb") as f:
        alloc = read_allocation(f, 8 << 20)
    assert alloc.partclone_fs == "FAT12"
    report = run("fsck.fat", "-n", str(img))
    used_clusters = int(report.split("files, ")[1].split("/")[0])
    boot = img.read_bytes()[:64]
    bps, spc, reserved, nfats, root_entries = struct.unpack_from("<HBHBH", boot, 0x0B)
    (fatsz,) = struct.unpack_from("<H", boot, 0x16)
    system = reserved + nfats * fatsz + root_entries * 32 // bps
    (total,) = struct.unpack_from("<H", boot, 0x13)
    tail = (total - system) % spc
    assert alloc.used_blocks == system + used_clusters * spc + tail
    assert alloc.bitmap != partclone_map(img)[0]


def test_damaged_fat_falls_back_to_raw(tmp_path: Path) -> None:
    img = tmp_path / "fat.img"
    make_fat(img, 64, 16)
    with img.open("rb") as f, pytest.raises(FilesystemError, match="truncated"):
        read_allocation(f, 10 << 20)
    with img.open("r+b") as f:
        f.seek(512 * struct.unpack_from("<H", img.read_bytes(), 0x0E)[0])
        f.write(b"\x00")  # the media byte at the start of the first FAT
    with img.open("rb") as f:
        with pytest.raises(FilesystemError, match="media byte"):
            read_allocation(f, 64 << 20)
        assert allocation_for(f, 64 << 20).fstype == "dd"


@need("root", "loop")
@pytest.mark.parametrize("bits", [12, 16, 32])
def test_fat_round_trip(loop_disk_factory: DiskFactory, tmp_path: Path, bits: int) -> None:
    size = {12: 8, 16: 64, 32: 300}[bits]
    part = tmp_path / "p.img"
    files = make_fat(part, size, bits)
    src = loop_disk_factory(size + 2, "dos", [PartSpec(None, None, type="c")])
    with open(src.parts[0], "r+b") as f:
        f.write(part.read_bytes())
    image = tmp_path / "image"
    assert main(["capture", src.path, str(image)]) == 0
    assert (image / f"{Path(src.parts[0]).name}.vfat-ptcl-img.zst").exists()
    target = loop_disk_factory(size + 2, None, [])
    with open(target.path, "r+b") as f:
        f.write(b"\x5a" * ((size + 2) << 20))
    target.rescan()
    assert main(["restore", str(image), target.path, "--yes"]) == 0
    target.rescan()
    run("fsck.fat", "-n", target.parts[0])
    out = tmp_path / "out"
    out.mkdir()
    run("mcopy", "-i", target.parts[0], "-s", "::/sub", str(out))
    for name, data in files.items():
        assert (out / "sub" / name).read_bytes() == data
