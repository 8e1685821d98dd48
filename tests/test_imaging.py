"""Capture → verify → restore round trips through the CLI, on real loop disks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from capabilities import need
from conftest import DiskFactory
from diskbench import LoopDisk, PartSpec, fill_tree, run, tree_digest

from rescue.cli import main
from rescue.errors import EXIT_REFUSED

pytestmark = need("root", "loop", "partclone")

RAW_DATA = b"not a filesystem, keep me " * 4000


def sfdisk_dump(dev: str) -> list[str]:
    """The table with device names and the GPT's last usable LBA left out."""
    out = run("sfdisk", "-d", dev)
    name = Path(dev).name
    return [
        line.replace(dev, "DEV").replace(name, "DEV")
        for line in out.splitlines()
        if not line.startswith(("last-lba", "device"))
    ]


def digest_of(disk: LoopDisk, index: int, mnt: Path) -> dict[str, str]:
    disk.mount(index, mnt, "ro")
    try:
        return tree_digest(mnt)
    finally:
        disk.umount(mnt)


def populate(disk: LoopDisk, index: int, mnt: Path, seed: int, mib: int) -> None:
    """Files, then garbage that is deleted again (free blocks that hold old data)."""
    disk.mount(index, mnt)
    try:
        (mnt / "garbage.bin").write_bytes(os.urandom(mib << 19))
        os.sync()
        (mnt / "garbage.bin").unlink()
        fill_tree(mnt, seed, mib)
    finally:
        disk.umount(mnt)


@pytest.fixture
def gpt_source(loop_disk_factory: DiskFactory, tmp_path: Path) -> LoopDisk:
    disk = loop_disk_factory(
        300,
        "gpt",
        [
            PartSpec(120, "ext4", "root"),
            PartSpec(60, "ext2", "boot"),
            PartSpec(32, "swap", "swp"),
            PartSpec(16, None),
            PartSpec(None, "ext4", "data"),
        ],
    )
    populate(disk, 0, tmp_path / "m0", seed=1, mib=12)
    populate(disk, 1, tmp_path / "m1", seed=2, mib=4)
    with open(disk.parts[3], "r+b") as f:
        f.write(RAW_DATA)
    return disk


def capture(source: str, image: Path, *extra: str) -> None:
    assert main(["capture", source, str(image), *extra]) == 0


def test_gpt_disk_round_trip(
    gpt_source: LoopDisk, loop_disk_factory: DiskFactory, tmp_path: Path
) -> None:
    src = gpt_source
    image = tmp_path / "image"
    capture(src.path, image)
    assert main(["verify", str(image)]) == 0
    manifest = json.loads((image / "rescue.json").read_text())
    parts = {p["name"]: p for p in manifest["partitions"]}
    names = [Path(p).name for p in src.parts]
    assert [parts[n]["stored_as"] for n in names] == [
        "partclone",
        "partclone",
        "swap",
        "dd",
        "partclone",
    ]
    # only used blocks are stored: the image is smaller than the used data
    stored = sum(f["size"] for p in manifest["partitions"] for f in p["files"])
    assert stored < sum(p["used_bytes"] for p in manifest["partitions"])
    assert not (image / "rescue.incomplete").exists()

    for size in (300, 400):  # same size and a larger disk
        target = loop_disk_factory(size, None, [])
        assert main(["restore", str(image), target.path, "--yes", "--layout", "keep"]) == 0
        target.rescan()
        assert sfdisk_dump(target.path) == sfdisk_dump(src.path)
        run("sgdisk", "-v", str(target.backing))  # on the file: sgdisk opens disks read-write
        for i in (0, 1, 4):
            run("e2fsck", "-fn", target.parts[i])
            assert digest_of(target, i, tmp_path / "t") == digest_of(src, i, tmp_path / "s")
        for key in ("UUID", "LABEL", "TYPE"):
            args = ("blkid", "-p", "-o", "value", "-s", key)
            assert run(*args, target.parts[2]) == run(*args, src.parts[2])
            assert run(*args, target.parts[0]) == run(*args, src.parts[0])
        with open(target.parts[3], "rb") as f:
            assert f.read(len(RAW_DATA)) == RAW_DATA
        with open(target.path, "rb") as t, open(src.path, "rb") as s:
            assert t.read(446) == s.read(446)


def test_mbr_disk_keeps_boot_code_and_gap(loop_disk_factory: DiskFactory, tmp_path: Path) -> None:
    src = loop_disk_factory(128, "dos", [PartSpec(80, "ext4"), PartSpec(None, "swap")])
    boot = bytes(range(256)) + bytes(range(190))
    gap = b"GRUB core image " * 4096
    with open(src.path, "r+b") as f:
        f.write(boot)
        f.seek(512)
        f.write(gap)
    src.rescan()
    populate(src, 0, tmp_path / "m", seed=5, mib=6)
    image = tmp_path / "image"
    capture(src.path, image)
    assert (image / f"{Path(src.path).name}-hidden-data-after-mbr").stat().st_size == (
        1 << 20
    ) - 512
    target = loop_disk_factory(128, None, [])
    assert main(["restore", str(image), target.path, "--yes"]) == 0
    target.rescan()
    assert sfdisk_dump(target.path) == sfdisk_dump(src.path)
    with open(target.path, "rb") as t:
        head = t.read(512 + len(gap))
    assert head[:446] == boot
    assert head[512:] == gap
    run("e2fsck", "-fn", target.parts[0])
    assert digest_of(target, 0, tmp_path / "t") == digest_of(src, 0, tmp_path / "s")


def test_partition_image_and_split_volumes(
    gpt_source: LoopDisk, loop_disk_factory: DiskFactory, tmp_path: Path
) -> None:
    image = tmp_path / "p1"
    capture(gpt_source.parts[0], image, "--split", "1M", "--level", "1")
    volumes = sorted(p.name for p in image.glob("*-ptcl-img.zst.*"))
    assert len(volumes) > 3
    assert volumes[0].endswith(".aa")
    assert all(p.stat().st_size == 1 << 20 for p in sorted(image.glob("*.zst.*"))[:-1])
    assert main(["verify", str(image)]) == 0
    target = loop_disk_factory(130, "gpt", [PartSpec(None, None)])
    # a used disk: what partclone-style restores leave alone (free blocks, never-used
    # inode-table tails) holds garbage, and the filesystem must not care
    with open(target.parts[0], "r+b") as f:
        f.write(os.urandom(128 << 20))
    assert main(["restore", str(image), target.parts[0], "--yes"]) == 0
    run("e2fsck", "-fn", target.parts[0])
    assert digest_of(target, 0, tmp_path / "t") == digest_of(gpt_source, 0, tmp_path / "s")


def test_capture_from_a_disk_file(
    gpt_source: LoopDisk, loop_disk_factory: DiskFactory, tmp_path: Path
) -> None:
    gpt_source.detach()
    image = tmp_path / "from-file"
    capture(str(gpt_source.backing), image)
    target = loop_disk_factory(300, None, [])
    assert main(["restore", str(image), target.path, "--yes"]) == 0
    target.rescan()
    run("e2fsck", "-fn", target.parts[0])
    assert (image / "disk").read_text().strip() == "disk0"


def test_streams_pass_partclone_and_restore_with_it(gpt_source: LoopDisk, tmp_path: Path) -> None:
    image = tmp_path / "image"
    capture(gpt_source.path, image)
    stream = next(image.glob("*p1.ext4-ptcl-img.zst"))
    check = subprocess.run(
        f"zstd -dc {stream} | partclone.chkimg -s - -L /dev/null",
        shell=True,
        capture_output=True,
        check=False,
    )
    assert check.returncode == 0, check.stderr
    out = tmp_path / "restored.img"
    with out.open("wb") as f:
        f.truncate(120 << 20)
    res = subprocess.run(
        f"zstd -dc {stream} | partclone.restore -s - -O {out} -L /dev/null",
        shell=True,
        capture_output=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    run("e2fsck", "-fn", str(out))
    with out.open("rb") as a, open(gpt_source.parts[0], "rb") as b:
        # every block the filesystem uses is identical (free blocks are not restored)
        assert run("dumpe2fs", "-h", str(out)) == run("dumpe2fs", "-h", gpt_source.parts[0])
        assert a.read(1 << 20) == b.read(1 << 20)


def test_clonezilla_made_image_restores(
    gpt_source: LoopDisk, loop_disk_factory: DiskFactory, tmp_path: Path
) -> None:
    """An image laid out by Clonezilla: partclone -c | zstd (one plain frame), no rescue.json."""
    ours = tmp_path / "ours"
    capture(gpt_source.path, ours)
    cz = tmp_path / "clonezilla"
    cz.mkdir()
    for f in ours.iterdir():
        if "ptcl-img" not in f.name and f.name != "rescue.json":
            (cz / f.name).write_bytes(f.read_bytes())
    (cz / "clonezilla-img").write_text("Starting /usr/sbin/ocs-sr at 2026-11-24\n")
    for i, fs, comp in ((0, "ext4", "zstd -q -T0 -3"), (1, "ext2", "gzip -1"), (4, "ext4", "zstd")):
        name = Path(gpt_source.parts[i]).name
        suffix = "gz" if comp.startswith("gzip") else "zst"
        subprocess.run(
            f"partclone.{fs} -c -s {gpt_source.parts[i]} -o - -L /dev/null | {comp} -c "
            f"> {cz}/{name}.{fs}-ptcl-img.{suffix}",
            shell=True,
            check=True,
        )
    raw = Path(gpt_source.parts[3]).name
    subprocess.run(
        f"zstd -q -c < {gpt_source.parts[3]} > {cz}/{raw}.dd-ptcl-img.zst", shell=True, check=True
    )
    assert main(["info", str(cz), "--json"]) == 0
    assert main(["verify", str(cz)]) == 0
    target = loop_disk_factory(300, None, [])
    assert main(["restore", str(cz), target.path, "--yes"]) == 0
    target.rescan()
    for i in (0, 1, 4):
        run("e2fsck", "-fn", target.parts[i])
    for i in (0, 1):
        assert digest_of(target, i, tmp_path / "t") == digest_of(gpt_source, i, tmp_path / "s")
    with open(target.parts[3], "rb") as f:
        assert f.read(len(RAW_DATA)) == RAW_DATA


def test_info_json_lists_partitions(
    gpt_source: LoopDisk, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "image"
    capture(gpt_source.path, image, "--json")
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert lines[-1]["done"] == lines[-1]["total"] > 0
    assert main(["info", str(image), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert len(info["partitions"]) == 5
    assert info["source"]["partition_table"] == "gpt"
    assert main(["info", str(image)]) == 0
    assert "partclone" in capsys.readouterr().out


# -- refusals ----------------------------------------------------------------------


def test_capture_refuses_a_non_empty_folder(
    gpt_source: LoopDisk, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    assert main(["capture", gpt_source.path, str(tmp_path / "busy")]) == EXIT_REFUSED
    assert "not empty" in capsys.readouterr().err


def test_capture_refuses_a_folder_on_the_source(
    gpt_source: LoopDisk, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mnt = gpt_source.mount(4, tmp_path / "data")
    assert main(["capture", gpt_source.path, str(mnt / "img")]) == EXIT_REFUSED
    assert "itself" in capsys.readouterr().err
    assert not (mnt / "img").exists()


def test_restore_refusals(
    gpt_source: LoopDisk,
    loop_disk_factory: DiskFactory,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    image = tmp_path / "image"
    capture(gpt_source.path, image)
    capsys.readouterr()
    small = loop_disk_factory(200, None, [])
    # (the default layout would shrink the partitions into it: tests/test_shrink.py)
    assert main(["restore", str(image), small.path, "--yes", "--layout", "keep"]) == EXIT_REFUSED
    err = capsys.readouterr().err
    assert str(200 << 20) in err and "too small" in err and "--layout fit" in err
    # mounted target
    busy = loop_disk_factory(320, "gpt", [PartSpec(None, "ext4")])
    busy.mount(0, tmp_path / "busy")
    assert main(["restore", str(image), busy.path, "--yes"]) == EXIT_REFUSED
    assert "mounted" in capsys.readouterr().err
    # a whole-disk image onto a partition
    assert main(["restore", str(image), busy.parts[0], "--yes"]) == EXIT_REFUSED
    # no terminal and no --yes
    free = loop_disk_factory(320, None, [])
    res = subprocess.run(
        [str(Path(os.sys.executable).parent / "rescue"), "restore", str(image), free.path],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert res.returncode == EXIT_REFUSED
    assert "--yes" in res.stderr
    assert "Traceback" not in res.stderr
    with open(free.path, "rb") as f:
        assert f.read(1 << 20) == b"\0" * (1 << 20), "a refused restore wrote to the disk"


@need("fuse")
def test_fat_destination_splits_automatically(tmp_path: Path) -> None:
    """FAT holds files up to 4 GiB - 1: captures onto it are split without being asked."""
    if shutil.which("fusefat") is None:
        pytest.skip("fusefat is not installed")
    fat = tmp_path / "fat.img"
    with fat.open("wb") as f:
        f.truncate(64 << 20)
    run("mkfs.vfat", str(fat))
    mnt = tmp_path / "usb"
    mnt.mkdir()
    run("fusefat", "-o", "rw+", str(fat), str(mnt))
    try:
        src = tmp_path / "part.img"
        with src.open("wb") as f:
            f.truncate(8 << 20)
        run("mkfs.ext4", "-q", str(src))
        capture(str(src), mnt / "img")
        manifest = json.loads((mnt / "img" / "rescue.json").read_text())
        assert manifest["compression"]["split"] == 4 * 1024**3 - 1
        assert manifest["partitions"][0]["files"][0]["name"].endswith(".zst.aa")
    finally:
        run("fusermount3", "-u", str(mnt), check=False)


def test_capture_refuses_a_source_mounted_read_write(
    gpt_source: LoopDisk, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mnt = gpt_source.mount(0, tmp_path / "live")
    for source in (gpt_source.path, gpt_source.parts[0]):
        assert main(["capture", source, str(tmp_path / "img")]) == EXIT_REFUSED
        err = capsys.readouterr().err
        assert "read-write" in err and str(mnt) in err
        assert not (tmp_path / "img").exists()
    run("mount", "-o", "remount,ro", str(mnt))  # read-only: consistent, allowed
    capture(gpt_source.parts[0], tmp_path / "img")
