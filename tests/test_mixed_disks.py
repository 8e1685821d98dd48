"""Whole disks as technicians meet them: a Windows-style and a Linux-style disk round-trip."""

from __future__ import annotations

import json
import os
from pathlib import Path

from capabilities import need
from conftest import DiskFactory
from diskbench import LoopDisk, PartSpec, fill_tree, run, tree_digest

from rescue.cli import main

pytestmark = need("root", "loop", "fuse", "partclone")

ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
MSR = "E3C9E316-0B5C-4DB8-817D-F92DF00215AE"
BASIC_DATA = "EBD0A0A2-B9E5-4433-87C7-68B9A0D0F9AC"


def round_trip(
    src: LoopDisk, loop_disk_factory: DiskFactory, tmp_path: Path, size: int
) -> LoopDisk:
    image = tmp_path / "image"
    assert main(["capture", src.path, str(image)]) == 0
    assert main(["verify", str(image)]) == 0
    manifest = json.loads((image / "rescue.json").read_text())
    for part in manifest["partitions"]:
        if part["stored_as"] == "partclone":  # only used blocks, compressed
            stored = sum(f["size"] for f in part["files"])
            assert stored < part["used_bytes"], part["name"]
    target = loop_disk_factory(size, None, [])
    with open(target.path, "r+b") as f:
        f.write(b"\xc3" * (size << 20))  # a disk that was in use before
    target.rescan()
    assert main(["restore", str(image), target.path, "--yes"]) == 0
    target.rescan()
    same_size = run("sfdisk", "-d", src.path).replace(src.path, "DISK")
    assert run("sfdisk", "-d", target.path).replace(target.path, "DISK") == same_size
    return target


def test_windows_disk(loop_disk_factory: DiskFactory, tmp_path: Path) -> None:
    src = loop_disk_factory(
        400,
        "gpt",
        [
            PartSpec(100, "vfat", "ESP", type=ESP),
            PartSpec(16, None, type=MSR),
            PartSpec(None, "ntfs", "Windows", type=BASIC_DATA),
        ],
    )
    run("mkfs.vfat", "-F", "32", "-n", "ESP", src.parts[0])
    boot = tmp_path / "bootx64.efi"
    boot.write_bytes(os.urandom(700_000))
    run("mmd", "-i", src.parts[0], "::/EFI", "::/EFI/BOOT")
    run("mcopy", "-i", src.parts[0], str(boot), "::/EFI/BOOT/BOOTX64.EFI")
    mnt = src.mount(2, tmp_path / "win")
    fill_tree(mnt, 21, 20)
    src.umount(mnt)
    target = round_trip(src, loop_disk_factory, tmp_path, 400)
    image_json = json.loads((tmp_path / "image" / "rescue.json").read_text())
    stored = [p["stored_as"] for p in image_json["partitions"]]
    assert stored == ["partclone", "dd", "partclone"]
    run("fsck.fat", "-n", target.parts[0])
    out = tmp_path / "efi.out"
    run("mcopy", "-i", target.parts[0], "::/EFI/BOOT/BOOTX64.EFI", str(out))
    assert out.read_bytes() == boot.read_bytes()
    run("ntfsfix", "-n", target.parts[2])
    a = src.mount(2, tmp_path / "a", "ro")
    b = target.mount(2, tmp_path / "b", "ro")
    assert tree_digest(a) == tree_digest(b)


def test_linux_disk(loop_disk_factory: DiskFactory, tmp_path: Path) -> None:
    src = loop_disk_factory(
        1000,
        "gpt",
        [
            PartSpec(200, "ext4", "root"),
            PartSpec(320, "xfs", "srv"),
            PartSpec(300, "btrfs", "home"),
            PartSpec(None, "swap", "swap"),
        ],
    )
    digests = {}
    for i in range(3):
        mnt = src.mount(i, tmp_path / f"m{i}")
        fill_tree(mnt, 30 + i, 10)
        digests[i] = tree_digest(mnt)
        src.umount(mnt)
    target = round_trip(src, loop_disk_factory, tmp_path, 1000)
    manifest = json.loads((tmp_path / "image" / "rescue.json").read_text())
    assert [p["fstype"] for p in manifest["partitions"]] == ["ext4", "xfs", "btrfs", "swap"]
    assert [p["stored_as"] for p in manifest["partitions"]] == ["partclone"] * 3 + ["swap"]
    run("e2fsck", "-fn", target.parts[0])
    run("xfs_repair", "-n", target.parts[1])
    run("btrfs", "check", "--readonly", target.parts[2])
    assert run("blkid", "-p", "-o", "value", "-s", "UUID", target.parts[3]) == run(
        "blkid", "-p", "-o", "value", "-s", "UUID", src.parts[3]
    )
    src.detach()  # XFS and btrfs refuse a second mount of the same UUID
    for i, opts in ((0, "ro"), (1, "ro"), (2, "ro")):
        mnt = target.mount(i, tmp_path / f"t{i}", opts)
        assert tree_digest(mnt) == digests[i]
        target.umount(mnt)
