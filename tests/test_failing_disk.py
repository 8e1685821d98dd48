"""Capturing a disk with unreadable sectors: keep going, retry, say exactly what was lost.

The failing disk is real to the tool: a read-only loop device over a FUSE file
whose reads fail with EIO in chosen ranges (tests/failing_device.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
from capabilities import need
from conftest import DiskFactory
from diskbench import PartSpec, RecordingProgress, run
from failing_device import failing_file, failing_loop

from rescue.cli import main
from rescue.errors import EXIT_UNREADABLE

pytestmark = need("root", "loop", "fuse")
BS = 4096


def blocks_of(image: Path, path: str) -> list[int]:
    out = run("debugfs", "-R", f"blocks {path}", str(image))
    return [int(b) for b in out.split()]


@pytest.fixture
def ext4_with_victim(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    img = tmp_path / "source.img"
    with img.open("wb") as f:
        f.truncate(96 << 20)
    run("mkfs.ext4", "-q", "-F", "-b", "4096", str(img))
    mnt = tmp_path / "m"
    mnt.mkdir()
    run("mount", "-o", "loop", str(img), str(mnt))
    files = {
        "victim.bin": os.urandom(6 << 20),
        "healthy.bin": os.urandom(3 << 20),
        "notes.txt": b"keep me\n" * 5000,
    }
    try:
        for name, data in files.items():
            (mnt / name).write_bytes(data)
    finally:
        run("umount", str(mnt))
    return img, files


def test_capture_goes_on_past_bad_sectors_and_lists_them(
    ext4_with_victim: tuple[Path, dict[str, bytes]], tmp_path: Path
) -> None:
    img, files = ext4_with_victim
    victim = blocks_of(img, "/victim.bin")
    bad = [
        (victim[10] * BS, BS),  # one bad page
        (victim[700] * BS, 3 * BS),  # three in a row
    ]
    free_block = 20000  # far past the files: free space, never read
    bad.append((free_block * BS, 8 * BS))
    image = tmp_path / "image"
    with failing_loop(img, bad, tmp_path) as dev:
        assert main(["capture", dev, str(image), "--retries", "2"]) == EXIT_UNREADABLE
    manifest = json.loads((image / "rescue.json").read_text())
    (part,) = manifest["partitions"]
    # exactly the bad sectors inside used data; the free-space ones were never needed
    assert [tuple(r) for r in part["unreadable"]] == bad[:2]
    # and the files they belong to, in the manifest and in the report kept with the image
    assert part["damaged_files"] == ["/victim.bin"]
    assert "/victim.bin" in (image / "damage-report.txt").read_text()

    # the image is intact: verify passes and says it is an image of a damaged disk
    assert main(["verify", str(image)]) == 0

    # restore: every used byte that was readable is back; the bad pages are zeros
    target = tmp_path / "target.img"
    with target.open("wb") as f:
        f.truncate(img.stat().st_size)
    assert main(["restore", str(image), str(target), "--yes"]) == 0
    run("e2fsck", "-fn", str(target))  # metadata was readable: the filesystem is clean
    out = tmp_path / "restored"
    out.mkdir()
    for name in files:
        subprocess.run(
            ["debugfs", "-R", f"dump /{name} {out / name}", str(target)],
            check=True, capture_output=True,
        )  # fmt: skip
    assert (out / "healthy.bin").read_bytes() == files["healthy.bin"]
    assert (out / "notes.txt").read_bytes() == files["notes.txt"]
    got = bytearray((out / "victim.bin").read_bytes())
    want = bytearray(files["victim.bin"])
    for off, n in bad[:2]:
        index = victim.index(off // BS)
        want[index * BS : index * BS + n] = bytes(n)
    assert hashlib.sha256(got).digest() == hashlib.sha256(want).digest()


def test_stop_on_error_refuses_to_go_on(
    ext4_with_victim: tuple[Path, dict[str, bytes]], tmp_path: Path
) -> None:
    img, _ = ext4_with_victim
    victim = blocks_of(img, "/victim.bin")
    with failing_loop(img, [(victim[5] * BS, BS)], tmp_path) as dev:
        assert main(["capture", dev, str(tmp_path / "image"), "--stop-on-error"]) == 1
    assert not (tmp_path / "image" / "rescue.json").exists()


def test_ntfs_damage_report_names_the_file(tmp_path: Path) -> None:
    img = tmp_path / "ntfs.img"
    with img.open("wb") as f:
        f.truncate(64 << 20)
    run("mkntfs", "-q", "-F", "-Q", str(img))
    mnt = tmp_path / "m"
    mnt.mkdir()
    run("ntfs-3g", str(img), str(mnt))
    try:
        (mnt / "docs").mkdir()
        (mnt / "docs" / "report.doc").write_bytes(os.urandom(2 << 20))
        (mnt / "fine.txt").write_bytes(b"fine\n" * 1000)
    finally:
        run("umount", str(mnt))
    info = run("ntfsinfo", "-v", "-F", "/docs/report.doc", str(img))
    lcn = int(info.split("Runlist:")[1].splitlines()[1].split()[1], 16)
    cluster = 4096
    bad = [((lcn + 20) * cluster, cluster)]
    image = tmp_path / "image"
    with failing_loop(img, bad, tmp_path) as dev:
        assert main(["capture", dev, str(image)]) == EXIT_UNREADABLE
    (part,) = json.loads((image / "rescue.json").read_text())["partitions"]
    assert [tuple(r) for r in part["unreadable"]] == bad
    assert part["damaged_files"] == ["/docs/report.doc"]


@need("udev")
def test_capture_warns_first_when_smart_says_the_disk_is_failing(
    loop_disk_factory: DiskFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loop devices have no SMART: smartctl's verdict is stubbed, the capture is real."""
    from rescue.devices.smart import SmartSummary  # noqa: PLC0415
    from rescue.operations import capture as capture_mod  # noqa: PLC0415

    disk = loop_disk_factory(64, "gpt", [PartSpec(None, "ext4")])
    asked: list[str] = []

    def fake_smart(path: str) -> SmartSummary:
        asked.append(path)
        return SmartSummary(passed=True, bad_sectors={"pending": 12}, temperature=50,
                            power_on_hours=40000)  # fmt: skip

    monkeypatch.setattr(capture_mod, "smart_summary", fake_smart)
    notes = RecordingProgress()
    capture_mod.capture(disk.parts[0], tmp_path / "image", progress=notes)
    assert asked == [disk.path]  # the disk holding the partition
    assert notes.notes[0].startswith(f"SMART: {disk.path} is failing (12 pending sectors)")


def test_disk_that_disappears_leaves_a_resumable_image(
    ext4_with_victim: tuple[Path, dict[str, bytes]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A disk file on a share that goes away mid-read (reads end with ENODEV), then returns."""
    import rescue.copier  # noqa: PLC0415

    monkeypatch.setattr(rescue.copier, "CHECKPOINT_EVERY", 0.0)
    img, _ = ext4_with_victim
    clean = tmp_path / "clean"
    assert main(["capture", str(img), str(clean)]) == 0
    image = tmp_path / "image"
    with failing_file(img, [], tmp_path, gone_at=8 << 20) as disk:
        assert main(["capture", str(disk), str(image)]) == 1
        err = capsys.readouterr().err
        assert "disappeared" in err and "--resume" in err
        assert not (image / "rescue.json").exists()
    with failing_file(img, [], tmp_path) as disk:  # plugged back in
        assert main(["capture", str(disk), "--resume", str(image)]) == 0
    (want,) = clean.glob("*-ptcl-img.zst")
    (got,) = image.glob("*-ptcl-img.zst")  # named after the file served, "disk"
    assert got.read_bytes() == want.read_bytes()
