"""A damaged image is reported with the file at fault and the right exit code, never restored."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from capabilities import need
from conftest import DiskFactory
from diskbench import LoopDisk, PartSpec, fill_tree, rescue_command

from rescue.cli import main
from rescue.errors import EXIT_FAILED, EXIT_REFUSED

pytestmark = need("root", "loop", "partclone")


@pytest.fixture
def image(loop_disk_factory: DiskFactory, tmp_path: Path) -> Path:
    disk = loop_disk_factory(160, "gpt", [PartSpec(100, "ext4"), PartSpec(None, "ext4")])
    mnt = disk.mount(0, tmp_path / "m")
    fill_tree(mnt, 9, 8)
    disk.umount(mnt)
    out = tmp_path / "image"
    assert main(["capture", disk.path, str(out), "--split", "2M"]) == 0
    return out


@pytest.fixture
def target(loop_disk_factory: DiskFactory) -> LoopDisk:
    return loop_disk_factory(160, None, [])


def rescue(*args: str) -> subprocess.CompletedProcess[str]:
    return rescue_command(*args)


def volumes(image: Path) -> list[Path]:
    return sorted(image.glob("*p1.ext4-ptcl-img.zst.*"))


def flip(path: Path, offset: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x10]))


def assert_fails(image: Path, target: LoopDisk, code: int, *words: str) -> None:
    for cmd in (["verify", str(image)], ["restore", str(image), target.path, "--yes"]):
        res = rescue(*cmd)
        assert res.returncode == code, (cmd, res.stdout, res.stderr)
        assert "Traceback" not in res.stderr
        assert "complete" not in res.stdout.lower() or "incomplete" in res.stderr.lower()
        for w in words:
            assert w in res.stderr, (w, res.stderr)


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_flipped_byte_in_a_stream(image: Path, target: LoopDisk, where: str) -> None:
    vols = volumes(image)
    vol = {"first": vols[0], "middle": vols[len(vols) // 2], "last": vols[-1]}[where]
    offset = {"first": 200, "middle": vol.stat().st_size // 2, "last": vol.stat().st_size - 20}[
        where
    ]
    flip(vol, offset)
    res = rescue("verify", str(image))
    assert res.returncode == EXIT_FAILED
    assert vol.name in res.stderr
    # restore does not trust the manifest hashes alone: the stream's own checksums stop it
    (image / "rescue.json").write_text(
        (image / "rescue.json").read_text().replace('"sha256"', '"sha256_unchecked"')
    )
    res = rescue("restore", str(image), target.path, "--yes")
    assert res.returncode != 0
    assert "Restore complete" not in res.stdout


def test_damage_found_by_stream_checksums_alone(image: Path, target: LoopDisk) -> None:
    """Without rescue.json (a Clonezilla-style image) the streams' own checksums catch it."""
    vol = volumes(image)[1]
    flip(vol, 5000)
    (image / "rescue.json").unlink()
    (image / "clonezilla-img").write_text("saved by Clonezilla\n")
    res = rescue("verify", str(image))
    assert res.returncode == EXIT_FAILED
    assert "damaged" in res.stderr.lower() or "mismatch" in res.stderr.lower()


def test_truncated_stream(image: Path, target: LoopDisk) -> None:
    vol = volumes(image)[-1]
    with vol.open("r+b") as f:
        f.truncate(vol.stat().st_size // 2)
    assert_fails(image, target, EXIT_FAILED, vol.name)


@pytest.mark.parametrize("which", [0, -1])
def test_missing_split_volume(image: Path, target: LoopDisk, which: int) -> None:
    vols = volumes(image)
    assert len(vols) >= 3
    victim = vols[1] if which == 0 else vols[-1]
    victim.unlink()
    assert_fails(image, target, EXIT_FAILED, victim.name)


def test_incomplete_image(image: Path, target: LoopDisk) -> None:
    (image / "rescue.json").unlink()
    assert_fails(image, target, EXIT_FAILED, "incomplete")
    assert rescue("info", str(image)).returncode == EXIT_FAILED


def test_interrupted_capture_marker(image: Path, target: LoopDisk) -> None:
    (image / "rescue.json").unlink()
    (image / "rescue.incomplete").write_text("capturing\n")
    assert_fails(image, target, EXIT_FAILED, "incomplete")


def test_corrupt_manifest(image: Path, target: LoopDisk) -> None:
    (image / "rescue.json").write_text('{"format": "rescue-image", "format_vers')
    assert_fails(image, target, EXIT_FAILED, "rescue.json")


def test_newer_format_version(image: Path, target: LoopDisk) -> None:
    data = json.loads((image / "rescue.json").read_text())
    data["format_version"] = 99
    (image / "rescue.json").write_text(json.dumps(data))
    assert_fails(image, target, EXIT_REFUSED, "newer rescue")


def test_not_an_image(tmp_path: Path, target: LoopDisk) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_fails(empty, target, EXIT_REFUSED, "not an image")
    res = rescue("info", str(tmp_path / "nowhere"))
    assert res.returncode == EXIT_REFUSED
    assert "Traceback" not in res.stderr


def test_a_refused_restore_leaves_the_target_untouched(image: Path, target: LoopDisk) -> None:
    (image / "rescue.json").unlink()
    assert rescue("restore", str(image), target.path, "--yes").returncode == EXIT_FAILED
    with open(target.path, "rb") as f:
        assert f.read(4 << 20) == b"\0" * (4 << 20)
