"""Incremental images: `capture --base` stores what changed; every command reads the chain.

A real GPT loop disk (NTFS and ext4) is captured full, then changed and captured
against the previous image several times. Each image of the chain is verified,
restored onto a new disk and mounted, with every file compared with the source
as it was at that capture; the consolidated image is compared with a full
capture of the same state (byte for byte, stream and all) and restored by stock
partclone.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from capabilities import need
from conftest import DiskFactory
from diskbench import LoopDisk, PartSpec, attach, fill_tree, tree_digest
from test_resume import checkpoint_of, rescue

from rescue.browse import mounts
from rescue.cli import main
from rescue.devices import find_device
from rescue.image.layout import read_image_layout
from rescue.image.regions import regions_name
from rescue.image.streams import open_stream_chunks
from rescue.operations.incremental import find_base

pytestmark = [need("root", "loop", "partclone"), pytest.mark.usefixtures("private_run_dir")]


def filled(disk: LoopDisk, index: int, where: Path, seed: int, mib: int) -> None:
    """Partition ``index`` of ``disk`` filled with a tree of about ``mib`` MiB of files."""
    mnt = disk.mount(index, where)
    fill_tree(mnt, seed, mib)
    disk.umount(mnt)


def change(disk: LoopDisk, where: Path, step: int) -> dict[int, dict[str, str]]:
    """Change a few files of both filesystems (rewrite, append, delete, add); their trees."""
    rng = random.Random(step)
    trees = {}
    for index in (0, 1):
        mnt = disk.mount(index, where / f"m{index}")
        files = sorted(p for p in mnt.rglob("*") if p.is_file())
        with open(files[rng.randrange(len(files))], "r+b") as f:
            f.write(rng.randbytes(3000))
        with open(files[rng.randrange(len(files))], "ab") as f:
            f.write(b"log line %d\n" % step * 200)
        files[rng.randrange(len(files))].unlink()
        (mnt / f"new-{step}.bin").write_bytes(rng.randbytes(rng.randint(10_000, 200_000)))
        trees[index] = tree_digest(mnt)
        disk.umount(mnt)
    return trees


def trees_of(disk: LoopDisk, where: Path) -> dict[int, dict[str, str]]:
    out = {}
    for index in (0, 1):
        mnt = disk.mount(index, where / f"r{index}", "ro")
        out[index] = tree_digest(mnt)
        disk.umount(mnt)
    return out


def stored_bytes(image: Path) -> int:
    return sum(p.stat().st_size for p in image.iterdir() if p.is_file())


def decoded(path: Path) -> bytes:
    return b"".join(open_stream_chunks(path, "zst"))


def test_a_chain_of_increments_restores_mounts_and_consolidates(
    loop_disk_factory: DiskFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    disk = loop_disk_factory(160, "gpt", [PartSpec(48, "ntfs", label="win"),
                                          PartSpec(None, "ext4", label="data")])  # fmt: skip
    for index, seed in ((0, 1), (1, 2)):
        filled(disk, index, tmp_path / "fill", seed, 12 if index else 6)
    images = tmp_path / "images"
    images.mkdir()
    assert main(["capture", disk.path, str(images / "full")]) == 0
    states = [trees_of(disk, tmp_path)]
    names = ["full"]
    for step in (1, 2, 3):
        states.append(change(disk, tmp_path, step))
        name = f"inc{step}"
        assert main(["capture", disk.path, str(images / name), "--base", names[-1]]) == 0
        names.append(name)
    full_size = stored_bytes(images / "full")
    for name in names[1:]:
        image = images / name
        doc = json.loads((image / "rescue.json").read_text())
        assert doc["format_version"] == 3 and doc["base"]["name"] == names[names.index(name) - 1]
        assert all(p["delta"]["regions_stored"] < p["delta"]["regions"] for p in doc["partitions"])
        # small, and invisible to Clonezilla: no disk/parts lists, no *-ptcl-img.* stream
        assert stored_bytes(image) < full_size // 5, (stored_bytes(image), full_size)
        assert not (image / "parts").exists() and not (image / "disk").exists()
        assert not list(image.glob("*-ptcl-img*"))
    # every image of the chain: verified (with its bases), restored, mounted
    capsys.readouterr()
    for k, name in enumerate(names):
        image = images / name
        assert main(["verify", str(image)]) == 0
        if k:
            assert f"builds on ({', '.join(reversed(names[:k]))})" in capsys.readouterr().out
        target = loop_disk_factory(160, None, [])
        assert main(["restore", str(image), target.path, "--yes"]) == 0
        if k:  # the confirmation says it reads the chain
            chain = ", ".join(reversed(names[:k]))
            said = capsys.readouterr()
            assert f"incremental: read with the images it builds on ({chain})" in said.err
        target.rescan()
        assert trees_of(target, tmp_path / f"t{k}") == states[k]
        target.detach()
    newest = images / names[-1]
    mnt = tmp_path / "browse"
    assert main(["mount", str(newest), str(mnt), "--partition", "2"]) == 0
    try:
        assert tree_digest(mnt) == states[-1][1]
    finally:
        assert main(["unmount", str(mnt)]) == 0
    out = tmp_path / "extracted"
    assert main(["extract", str(newest), "new-3.bin", "--partition", "1", "--to", str(out)]) == 0
    assert (out / "new-3.bin").stat().st_size > 10_000
    capsys.readouterr()
    assert main(["info", str(newest)]) == 0
    shown = capsys.readouterr().out
    assert "incremental" in shown and all(n in shown for n in names)
    # consolidated: what a full capture of the disk now writes, stream for stream
    assert main(["consolidate", str(newest), str(tmp_path / "synthetic")]) == 0
    assert main(["capture", disk.path, str(tmp_path / "direct")]) == 0
    synthetic = json.loads((tmp_path / "synthetic" / "rescue.json").read_text())
    direct = json.loads((tmp_path / "direct" / "rescue.json").read_text())
    assert synthetic["format_version"] == 1 and synthetic["base"] is None
    for a, b in zip(synthetic["partitions"], direct["partitions"], strict=True):
        assert (a["stream"], a["used_blocks"], a["stream_bytes"]) == (
            b["stream"], b["used_blocks"], b["stream_bytes"])  # fmt: skip
        assert decoded(tmp_path / "synthetic" / a["stream"]) == decoded(
            tmp_path / "direct" / b["stream"]
        )
        assert (tmp_path / "synthetic" / regions_name(a["name"])).read_bytes() == (
            tmp_path / "direct" / regions_name(b["name"])
        ).read_bytes()
    assert (tmp_path / "synthetic" / "parts").read_text().split() == [
        p["name"] for p in direct["partitions"]
    ]
    assert main(["verify", str(tmp_path / "synthetic")]) == 0
    # what Clonezilla reads of it (its own files: disk, parts, the table, the streams by name)
    layout = read_image_layout(tmp_path / "synthetic")
    assert layout.disk == direct["source"]["name"] and layout.table is not None
    assert list(layout.parts) == [p["name"] for p in direct["partitions"]]
    assert sorted(ref.base.name for ref in layout.streams.values()) == sorted(
        p["stream"] for p in direct["partitions"]
    )
    # and it stands alone: stock partclone checks every stream and restores them
    for name in names:
        shutil.rmtree(images / name)
    target = loop_disk_factory(160, None, [])
    assert main(["restore", str(tmp_path / "synthetic"), target.path, "--yes"]) == 0
    target.rescan()
    for index, p in enumerate(synthetic["partitions"]):
        stream = tmp_path / "synthetic" / p["stream"]
        check = subprocess.run(f"zstd -dc {stream} | partclone.chkimg -s - -L /dev/null",
                               shell=True, capture_output=True, text=True, check=False)  # fmt: skip
        assert check.returncode == 0, check.stdout + check.stderr
        # zeros first: what is there after is what partclone wrote (dd stops at the end)
        dd = ["dd", "if=/dev/zero", f"of={target.parts[index]}", "bs=1M", "status=none"]
        subprocess.run(dd, check=False, capture_output=True)
        restored = subprocess.run(
            f"zstd -dc {stream} | partclone.restore -s - -o {target.parts[index]} -L /dev/null",
            shell=True, capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert restored.returncode == 0, restored.stdout + restored.stderr
    assert trees_of(target, tmp_path / "stock") == states[-1]


def test_a_missing_or_changed_base_is_named(
    loop_disk_factory: DiskFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    disk = loop_disk_factory(64, "gpt", [PartSpec(None, "ext4", label="data")])
    filled(disk, 0, tmp_path / "fill", 3, 4)
    images = tmp_path / "images"
    assert main(["capture", disk.path, str(images / "a")]) == 0
    mnt = disk.mount(0, tmp_path / "fill")
    (mnt / "more").write_bytes(b"x" * 100_000)
    disk.umount(mnt)
    # a base elsewhere, or not an image, is refused before anything is written
    assert main(["capture", disk.path, str(tmp_path / "b"), "--base", str(images / "a")]) == 2
    assert not (tmp_path / "b").exists()
    assert main(["capture", disk.path, str(images / "b"), "--base", "nothing"]) != 0
    assert not (images / "b").exists()
    assert main(["capture", disk.path, str(images / "b"), "--base", "a"]) == 0
    capsys.readouterr()
    # a base whose manifest changed is not the one recorded: verify, restore and mount
    # refuse, naming it, and the target is not touched
    doc = json.loads((images / "a" / "rescue.json").read_text())
    doc["created"] = "2020-01-01T00:00:00Z"
    (images / "a" / "rescue.json").write_text(json.dumps(doc, indent=2))
    target = loop_disk_factory(64, None, [])
    with open(target.path, "r+b") as f:
        f.write(b"untouched" * 1000)
    before = target.backing.read_bytes()
    commands = (["verify", str(images / "b")],
                ["restore", str(images / "b"), target.path, "--yes"],
                ["mount", str(images / "b"), str(tmp_path / "browse")])  # fmt: skip

    def each_fails_saying(*words: str) -> None:
        for argv in commands:
            assert main(argv) == 1, argv
            err = capsys.readouterr().err
            assert all(w in err for w in words), err
        assert target.backing.read_bytes() == before
        assert not mounts.records()

    each_fails_saying("is not the base b was captured against", "/a")
    # a base that is gone: named, with where it should be
    shutil.rmtree(images / "a")
    each_fails_saying("incremental image of a", "not beside it")


def test_the_disk_under_another_name_is_compared_by_partition_number(
    loop_disk_factory: DiskFactory, tmp_path: Path
) -> None:
    """Plugged into another port, the disk gets other kernel names; its partitions are still
    the base's (and the chain finds each base partition by the name the delta records)."""
    disk = loop_disk_factory(96, "gpt", [PartSpec(24, "ext4", label="one"),
                                         PartSpec(None, "ext4", label="two")])  # fmt: skip
    filled(disk, 1, tmp_path / "fill", 4, 6)
    images = tmp_path / "images"
    assert main(["capture", disk.path, str(images / "a")]) == 0
    mnt = disk.mount(1, tmp_path / "fill")
    (mnt / "added.bin").write_bytes(random.Random(1).randbytes(500_000))
    want = tree_digest(mnt)
    disk.umount(mnt)
    again = attach(disk.backing, read_only=True)
    try:
        assert again.path != disk.path
        assert main(["capture", again.path, str(images / "b"), "--base", "a"]) == 0
    finally:
        again.detach()
    doc = json.loads((images / "b" / "rescue.json").read_text())
    deltas = [p["delta"] for p in doc["partitions"]]
    old = [p["name"] for p in json.loads((images / "a" / "rescue.json").read_text())["partitions"]]
    assert [d["base"] for d in deltas] == old
    assert [p["name"] for p in doc["partitions"]] != old
    assert deltas[0]["regions_stored"] == 0 < deltas[1]["regions_stored"]
    target = loop_disk_factory(96, None, [])
    assert main(["restore", str(images / "b"), target.path, "--yes"]) == 0
    target.rescan()
    mnt = target.mount(1, tmp_path / "check", "ro")
    assert tree_digest(mnt) == want
    target.umount(mnt)


def test_a_changed_layout_stores_partitions_whole(
    loop_disk_factory: DiskFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    disk = loop_disk_factory(96, "gpt", [PartSpec(24, "ext4", label="one"),
                                         PartSpec(None, "ext4", label="two")])  # fmt: skip
    images = tmp_path / "images"
    assert main(["capture", disk.path, str(images / "a")]) == 0
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "again", disk.parts[1]], check=True)
    capsys.readouterr()
    assert main(["capture", disk.path, str(images / "b"), "--base", "a"]) == 0
    err = capsys.readouterr().err
    assert "stored whole, it holds another filesystem than in the base" in err, err
    doc = json.loads((images / "b" / "rescue.json").read_text())
    first, second = doc["partitions"]
    assert first["delta"] is not None and first["delta"]["regions_stored"] == 0
    assert second["delta"] is None and second["stream"].endswith("-ptcl-img.zst")
    target = loop_disk_factory(96, None, [])
    assert main(["restore", str(images / "b"), target.path, "--yes"]) == 0
    target.rescan()
    for index, label in ((0, "one"), (1, "again")):
        got = subprocess.run(["blkid", "-s", "LABEL", "-o", "value", target.parts[index]],
                             capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
        assert got == label


def stored(folder: Path) -> dict[str, bytes]:
    """The bytes of an image's rescue files (delta streams, region lists), by name."""
    return {p.name: p.read_bytes() for p in folder.iterdir() if "rescue-" in p.name}


def test_a_killed_incremental_capture_resumes_to_the_same_image(
    loop_disk_factory: DiskFactory, tmp_path: Path
) -> None:
    disk = loop_disk_factory(320, "gpt", [PartSpec(None, "ext4", label="data")])
    rng = random.Random(9)
    mnt = disk.mount(0, tmp_path / "fill")
    for i in range(6):
        (mnt / f"data{i}.bin").write_bytes(rng.randbytes(30 << 20))
    disk.umount(mnt)
    images = tmp_path / "images"
    assert main(["capture", disk.path, str(images / "full")]) == 0
    mnt = disk.mount(0, tmp_path / "fill")
    for i in (0, 1, 2, 4, 5):  # enough changed that storing it takes a while
        (mnt / f"data{i}.bin").write_bytes(rng.randbytes(30 << 20))
    disk.umount(mnt)
    options = ["--base", "full", "--split", "23M", "--json"]
    assert main(["capture", disk.path, str(images / "clean"), *options]) == 0
    image = images / "resumed"
    kills, seen = 0, (-1, -1)
    proc = rescue("capture", disk.path, str(image), *options)
    while True:
        deadline = time.monotonic() + 60
        while proc.poll() is None and checkpoint_of(image) <= seen:
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.01)
        assert proc.poll() in (None, 0), "a capture or resume failed by itself"
        time.sleep(rng.uniform(0, 0.15))
        seen = checkpoint_of(image)
        proc.kill()
        if proc.wait() == 0 or (image / "rescue.json").exists():
            break
        kills += 1
        assert (image / "rescue.incomplete").exists()
        proc = rescue("capture", "--resume", str(image), "--json")
    assert kills >= 2, kills
    assert stored(image) == stored(images / "clean") and len(stored(image)) >= 3
    doc, clean = (json.loads((f / "rescue.json").read_text()) for f in (image, images / "clean"))
    assert doc["partitions"] == clean["partitions"] and doc["base"] == clean["base"]
    assert main(["verify", str(image)]) == 0


def test_an_incremental_capture_killed_before_its_first_checkpoint_resumes(
    loop_disk_factory: DiskFactory, tmp_path: Path
) -> None:
    """Killed once its delta stream has a file but no checkpoint: the resume starts that
    stream again (the leftover volume is dropped, not in the way) and ends as a capture
    never killed would."""
    disk = loop_disk_factory(200, "gpt", [PartSpec(None, "ext4", label="data")])
    filled(disk, 0, tmp_path / "fill", 31, 24)
    images = tmp_path / "images"
    assert main(["capture", disk.path, str(images / "full")]) == 0
    mnt = disk.mount(0, tmp_path / "fill")
    (mnt / "new.bin").write_bytes(random.Random(32).randbytes(40 << 20))  # a delta of 40 MiB
    disk.umount(mnt)
    options = ["--base", "full", "--json"]
    assert main(["capture", disk.path, str(images / "clean"), *options]) == 0
    image = images / "killed"
    env = {**os.environ, "RESCUE_CHECKPOINT_SECONDS": "3600"}  # no checkpoint before the kill
    proc = subprocess.Popen(
        [sys.executable, "-m", "rescue", "capture", disk.path, str(image), *options],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not list(image.glob("*-rescue-delta.zst*")):
        assert proc.poll() is None and time.monotonic() < deadline, "no delta stream begun"
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    assert checkpoint_of(image)[1] == 0 and not (image / "rescue.json").exists()
    assert main(["capture", "--resume", str(image), "--json"]) == 0
    assert stored(image) == stored(images / "clean")
    assert main(["verify", str(image)]) == 0


def test_an_increment_restores_onto_a_smaller_disk(
    loop_disk_factory: DiskFactory, tmp_path: Path
) -> None:
    """The fit restore shrinks filesystems served from the image: served through the chain."""
    disk = loop_disk_factory(400, "gpt", [PartSpec(200, "ext4"), PartSpec(None, "ntfs")])
    for index, seed in ((0, 21), (1, 22)):
        filled(disk, index, tmp_path / "fill", seed, 16)
    images = tmp_path / "images"
    assert main(["capture", disk.path, str(images / "full")]) == 0
    states = change(disk, tmp_path, 7)
    assert main(["capture", disk.path, str(images / "inc"), "--base", "full"]) == 0
    target = loop_disk_factory(160, None, [])
    assert main(["restore", str(images / "inc"), target.path, "--yes"]) == 0
    target.rescan()
    assert trees_of(target, tmp_path / "t") == states


@pytest.mark.parametrize("fs", ["btrfs", "xfs", "exfat"])
def test_increments_of_other_filesystems(
    loop_disk_factory: DiskFactory, tmp_path: Path, fs: str
) -> None:
    """Blocks larger or smaller than 4 KiB (btrfs nodes of 16 KiB, exFAT sectors of 512
    bytes) and another allocator: the regions still say what changed."""
    disk = loop_disk_factory(400, "gpt", [PartSpec(None, fs, label="data")])
    filled(disk, 0, tmp_path / "fill", 8, 12)
    images = tmp_path / "images"
    assert main(["capture", disk.path, str(images / "a")]) == 0
    mnt = disk.mount(0, tmp_path / "fill")
    rng = random.Random(5)
    files = sorted(p for p in mnt.rglob("*") if p.is_file())
    with open(files[len(files) // 2], "r+b") as f:
        f.write(rng.randbytes(5000))
    files[0].unlink()
    (mnt / "added.bin").write_bytes(rng.randbytes(400_000))
    want = tree_digest(mnt)
    disk.umount(mnt)
    assert main(["capture", disk.path, str(images / "b"), "--base", "a"]) == 0
    (part,) = json.loads((images / "b" / "rescue.json").read_text())["partitions"]
    assert 0 < part["delta"]["regions_stored"] < part["delta"]["regions"] // 2, part["delta"]
    assert main(["verify", str(images / "b")]) == 0
    target = loop_disk_factory(400, None, [])
    assert main(["restore", str(images / "b"), target.path, "--yes"]) == 0
    target.rescan()
    mnt = target.mount(0, tmp_path / "check", "ro")
    assert tree_digest(mnt) == want
    target.umount(mnt)


def test_the_newest_of_two_images_begun_in_the_same_second_is_offered_as_base(
    loop_disk_factory: DiskFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``created`` counts whole seconds: of two captures begun within one, the base offered
    (the capture screen's "incremental since ...") is the one written last."""
    disk = loop_disk_factory(48, "gpt", [PartSpec(None, "ext4")])
    filled(disk, 0, tmp_path / "fill", 7, 4)
    images = tmp_path / "images"
    same_second = time.gmtime()
    monkeypatch.setattr(time, "gmtime", lambda *_: same_second)
    for name in ("first", "second", "third"):
        assert main(["capture", disk.path, str(images / name)]) == 0
    created = {json.loads((images / n / "rescue.json").read_text())["created"]
               for n in ("first", "second", "third")}  # fmt: skip
    assert len(created) == 1
    base = find_base(images, find_device(disk.path))
    assert base is not None and base.folder.name == "third"
