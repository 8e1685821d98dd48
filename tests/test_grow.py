"""Bare-metal restore onto a larger disk: the last partition and its filesystem grow."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from capabilities import need
from conftest import DiskFactory
from diskbench import LoopDisk, PartSpec, fill_tree, run, tree_digest

from rescue.cli import main

pytestmark = need("root", "loop", "udev")


def filled(disk: LoopDisk, index: int, mnt: Path, seed: int) -> dict[str, str]:
    disk.mount(index, mnt)
    fill_tree(mnt, seed=seed, approx_mib=4)
    digest = tree_digest(mnt)
    disk.umount(mnt)
    return digest


def part_size(dev: str) -> int:
    return int(run("blockdev", "--getsize64", dev).strip())


@pytest.mark.parametrize("last_fs", ["ext4", "ntfs", "xfs", "btrfs"])
def test_restore_onto_a_disk_twice_as_large_grows_the_last_partition(
    loop_disk_factory: DiskFactory, tmp_path: Path, last_fs: str
) -> None:
    parts = [PartSpec(32, "vfat", label="ESP"), PartSpec(64, "ext4"), PartSpec(None, last_fs)]
    src = loop_disk_factory(400, "gpt", parts)
    first = filled(src, 1, tmp_path / "m1", seed=1)
    last = filled(src, 2, tmp_path / "m2", seed=2)
    image = tmp_path / "image"
    assert main(["capture", src.path, str(image)]) == 0
    old_size = part_size(src.parts[2])

    target = loop_disk_factory(800, None, [])
    assert main(["restore", str(image), target.path, "--yes"]) == 0  # auto: grow
    target.rescan()
    assert len(target.parts) == 3
    new_size = part_size(target.parts[2])
    assert new_size > 1.9 * old_size  # the last partition took the new room
    verify = subprocess.run(
        ["sgdisk", "-v", str(target.backing)], check=False, capture_output=True, text=True
    )
    assert "No problems found" in verify.stdout, verify.stdout
    # the filesystem fills the grown partition, checks clean, and holds every file
    if last_fs == "ext4":
        run("e2fsck", "-fn", target.parts[2])
        blocks = run("dumpe2fs", "-h", target.parts[2])
        count = int(
            next(ln for ln in blocks.splitlines() if ln.startswith("Block count:")).split()[-1]
        )
        assert count * 4096 > 0.98 * new_size
    elif last_fs == "ntfs":
        info = run("ntfsresize", "--info", "--force", target.parts[2])
        assert "Current volume size" in info
        vol = int(next(ln for ln in info.splitlines() if "Current volume size" in ln).split()[3])
        assert vol > 0.98 * new_size
    mnt = tmp_path / "t"
    target.mount(2, mnt, "ro")
    try:
        assert tree_digest(mnt) == last
        st = os.statvfs(mnt)
        assert st.f_blocks * st.f_frsize > 0.9 * new_size
    finally:
        target.umount(mnt)
    run("e2fsck", "-fn", target.parts[1])
    assert tree_digest(target.mount(1, tmp_path / "t1", "ro")) == first


def test_keep_layout_leaves_the_partitions_as_they_were(
    loop_disk_factory: DiskFactory, tmp_path: Path
) -> None:
    src = loop_disk_factory(128, "gpt", [PartSpec(None, "ext4")])
    image = tmp_path / "image"
    assert main(["capture", src.path, str(image)]) == 0
    target = loop_disk_factory(256, None, [])
    assert main(["restore", str(image), target.path, "--yes", "--layout", "keep"]) == 0
    target.rescan()
    assert part_size(target.parts[0]) == part_size(src.parts[0])
    run("e2fsck", "-fn", target.parts[0])


@pytest.mark.parametrize("fat", ["32", "16"])
def test_fat_as_last_partition_grows_in_place(
    loop_disk_factory: DiskFactory, tmp_path: Path, fat: str
) -> None:
    src = loop_disk_factory(200, "gpt", [PartSpec(16, "ext4"), PartSpec(None, None)])
    run("mkfs.vfat", "-F", fat, "-n", "GROWME", src.parts[1])
    tree = tmp_path / "tree"
    fill_tree(tree, seed=5, approx_mib=6)
    for p in tree.rglob("*"):  # FAT keeps plain files and folders only
        if p.is_symlink() or p.name in ("hardlink0", "sparse.img"):
            p.unlink()
    run("mcopy", "-s", "-i", src.parts[1], *map(str, tree.iterdir()), "::/")
    run("mdel", "-i", src.parts[1], "::/docs/note0001.txt")  # a hole among the used clusters
    (tree / "docs" / "note0001.txt").unlink()
    image = tmp_path / "image"
    assert main(["capture", src.path, str(image)]) == 0

    target = loop_disk_factory(400, None, [])
    assert main(["restore", str(image), target.path, "--yes"]) == 0
    target.rescan()
    new_size = part_size(target.parts[1])
    run("fsck.vfat", "-n", target.parts[1])
    with open(target.parts[1], "rb") as f:
        boot = f.read(512)
    total = int.from_bytes(boot[0x13:0x15], "little") or int.from_bytes(boot[0x20:0x24], "little")
    if fat == "32":
        assert total * 512 > 0.98 * new_size  # fills the grown partition
    else:
        assert total * 512 > 120 << 20  # FAT16 grows up to its 65524-cluster limit
    out = tmp_path / "out"
    out.mkdir()
    run("mcopy", "-s", "-n", "-i", target.parts[1], "::/*", str(out))
    for p in tree.rglob("*"):
        if p.is_file():
            assert (out / p.relative_to(tree)).read_bytes() == p.read_bytes(), p
    assert {p.relative_to(out) for p in out.rglob("*")} == {
        p.relative_to(tree) for p in tree.rglob("*")
    }
    label = run("blkid", "-p", "-s", "LABEL", "-o", "value", target.parts[1]).strip()
    assert label == "GROWME"


def test_a_chosen_partition_grows_and_the_ones_after_it_move(
    loop_disk_factory: DiskFactory, tmp_path: Path
) -> None:
    parts = [PartSpec(32, "vfat", label="ESP"), PartSpec(100, "ext4"), PartSpec(None, "ntfs")]
    src = loop_disk_factory(300, "gpt", parts)
    root = filled(src, 1, tmp_path / "m1", seed=7)
    data = filled(src, 2, tmp_path / "m2", seed=8)
    image = tmp_path / "image"
    assert main(["capture", src.path, str(image)]) == 0
    target = loop_disk_factory(600, None, [])
    assert main(["restore", str(image), target.path, "--yes", "--grow", "2"]) == 0
    target.rescan()
    assert part_size(target.parts[1]) > 390 << 20  # took the 300 MiB of new room
    assert part_size(target.parts[2]) == part_size(src.parts[2])  # moved, same size
    verify = subprocess.run(
        ["sgdisk", "-v", str(target.backing)], check=False, capture_output=True, text=True
    )
    assert "No problems found" in verify.stdout, verify.stdout
    start = int(Path(f"/sys/class/block/{Path(target.parts[2]).name}/start").read_text())
    with open(target.parts[2], "rb") as f:
        assert int.from_bytes(f.read(512)[0x1C:0x20], "little") == start
    run("e2fsck", "-fn", target.parts[1])
    run("ntfsfix", "--no-action", target.parts[2])
    assert tree_digest(target.mount(1, tmp_path / "t1", "ro")) == root
    assert tree_digest(target.mount(2, tmp_path / "t2", "ro")) == data
    assert main(["restore", str(image), target.path, "--yes", "--grow", "9"]) == 2


def test_a_logical_partition_grows_with_its_extended_partition(tmp_path: Path) -> None:
    # an MBR disk file: primary 1, extended 2 holding logical 5 (the last partition)
    src = tmp_path / "src.img"
    with src.open("wb") as f:
        f.truncate(300 << 20)
    run("sfdisk", "-q", str(src), input=(
        "label: dos\n"
        f"{src}1 : start=2048, size=122880, type=83\n"
        f"{src}2 : start=124928, size=409600, type=5\n"
        f"{src}5 : start=126976, size=163840, type=83\n"
    ))  # fmt: skip
    loop = run("losetup", "-f", "--show", "--offset", str(126976 * 512),
               "--sizelimit", str(163840 * 512), str(src)).strip()  # fmt: skip
    try:
        run("mkfs.ext4", "-q", loop)
        run("debugfs", "-w", "-R", "mkdir kept", loop)
    finally:
        run("losetup", "-d", loop)
    image = tmp_path / "image"
    assert main(["capture", str(src), str(image)]) == 0
    target = tmp_path / "target.img"
    with target.open("wb") as f:
        f.truncate(600 << 20)
    assert main(["restore", str(image), str(target), "--yes"]) == 0
    table = {
        p["node"][-1]: p
        for p in json.loads(run("sfdisk", "-J", str(target)))["partitiontable"]["partitions"]
    }
    logical, extended = table["5"], table["2"]
    assert logical["start"] + logical["size"] == extended["start"] + extended["size"]
    assert logical["size"] * 512 > 500 << 20  # took the new room, inside its extended partition
    loop = run("losetup", "-f", "--show", "--offset", str(logical["start"] * 512),
               "--sizelimit", str(logical["size"] * 512), str(target)).strip()  # fmt: skip
    try:
        run("e2fsck", "-fn", loop)
        head = dict(
            ln.split(":", 1) for ln in run("dumpe2fs", "-h", loop).splitlines() if ":" in ln
        )
        assert int(head["Block count"]) * int(head["Block size"]) > 0.98 * logical["size"] * 512
        assert "kept" in run("debugfs", "-R", "ls /", loop)
    finally:
        run("losetup", "-d", loop)
