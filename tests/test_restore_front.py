"""What the technician is shown and asked before a restore, and names from an image shown safely.

The restore's confirmation names everything (:func:`rescue.operations.plan_text.describe_plan`);
``--verify-first`` reads the whole image before the first byte is written; a name
in an image folder cannot print a line of its own.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from capabilities import need
from conftest import DiskFactory
from diskbench import (
    LoopDisk,
    PartSpec,
    clonezilla_copy,
    disk_digest,
    fill_tree,
    rescue_command,
)

from rescue.cli import main
from rescue.errors import EXIT_REFUSED
from rescue.operations.plan_text import describe_plan, plan_lines
from rescue.operations.restore import plan_restore
from rescue.text import shown, shown_message

pytestmark = need("root", "loop", "partclone")

VERDICTS = ("Image intact", "Restore complete", "Image complete")


def rescue(*args: str) -> subprocess.CompletedProcess[str]:
    """On a wide terminal, so that a table cell is not folded in the middle of a name."""
    return rescue_command(*args, env={"COLUMNS": "200"})


def flip(path: Path, offset: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x10]))


@pytest.fixture
def source(loop_disk_factory: DiskFactory, tmp_path: Path) -> LoopDisk:
    disk = loop_disk_factory(160, "gpt", [PartSpec(64, "ext4", label="system"),
                                          PartSpec(None, "ext4", label="home")])  # fmt: skip
    mnt = disk.mount(0, tmp_path / "m")
    fill_tree(mnt, 5, 6)
    disk.umount(mnt)
    return disk


@pytest.fixture
def image(source: LoopDisk, tmp_path: Path) -> Path:
    out = tmp_path / "image"
    assert main(["capture", source.path, str(out), "--split", "2M"]) == 0
    return out


@pytest.fixture
def target(loop_disk_factory: DiskFactory) -> LoopDisk:
    return loop_disk_factory(256, None, [])


def test_the_confirmation_names_target_image_and_every_partition(
    image: Path, source: LoopDisk, target: LoopDisk
) -> None:
    before = disk_digest(target.path)
    res = rescue("restore", str(image), target.path)  # no terminal: described, then refused
    assert res.returncode == EXIT_REFUSED, res.stderr
    err = res.stderr
    size = 256 << 20
    assert f"{target.path} (a disk)" in err and f"({size} bytes)" in err
    assert f"folder {image}" in err and "made " in err
    assert f"from the disk {source.path}" in err
    name = source.path.rsplit("/", 1)[-1]
    assert f"#1 {name}p1 ext4 label 'system': as it was" in err
    assert f"#2 {name}p2 ext4 label 'home': grows; " in err
    assert "No full check of the image first" in err  # rescue's own image: off by default
    assert "no terminal to confirm on" in err
    assert disk_digest(target.path) == before

    plan = plan_restore(image, target.path, grow=1)
    text = "\n".join(plan_lines(describe_plan(plan, verify_first=True)))
    assert f"#1 {name}p1 ext4 label 'system': grows; 64.0 MiB → " in text
    assert f"#2 {name}p2 ext4 label 'home': moves; " in text
    assert "read and checked first" in text


def test_verify_first_refuses_a_damaged_stream_and_writes_nothing(
    image: Path, target: LoopDisk
) -> None:
    vols = sorted(image.glob("*p1.ext4-ptcl-img.zst.*"))
    vol = vols[len(vols) // 2]
    flip(vol, vol.stat().st_size // 2)  # in the middle of the stream's data
    before = disk_digest(target.path)
    res = rescue("restore", str(image), target.path, "--yes", "--verify-first")
    assert res.returncode != 0, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    assert "failed its check before the restore" in res.stderr
    assert f"Nothing was written to {target.path}" in res.stderr
    assert "Restore complete" not in res.stdout
    assert disk_digest(target.path) == before


def test_verify_first_is_the_default_for_a_clonezilla_image(
    loop_disk_factory: DiskFactory, tmp_path: Path
) -> None:
    disk = loop_disk_factory(96, "gpt", [PartSpec(None, "ext4")])
    mnt = disk.mount(0, tmp_path / "m")
    fill_tree(mnt, 3, 4)
    disk.umount(mnt)
    ours = tmp_path / "ours"
    assert main(["capture", disk.path, str(ours)]) == 0
    cz = tmp_path / "clonezilla"
    stream = clonezilla_copy(ours, cz, "zstd")
    target = loop_disk_factory(128, None, [])

    res = rescue("restore", str(cz), target.path, "--yes")
    assert res.returncode == 0, res.stderr
    assert "written by Clonezilla" in res.stderr
    assert "The whole image is read and checked first" in res.stderr
    assert "Image checked" in res.stderr

    flip(stream, stream.stat().st_size // 2)
    before = disk_digest(target.path)
    res = rescue("restore", str(cz), target.path, "--yes")
    assert res.returncode != 0
    assert "failed its check before the restore" in res.stderr
    assert disk_digest(target.path) == before
    # skipped on request: the stream's own checksums stop the restore, after it began
    res = rescue("restore", str(cz), target.path, "--yes", "--no-verify-first")
    assert res.returncode != 0
    assert "No full check of the image first" in res.stderr


def forge(image: Path, field: str, forged: str) -> None:
    """A partition's ``field`` in rescue.json set to ``forged`` (the manifest is not hashed)."""
    data = json.loads((image / "rescue.json").read_text())
    data["partitions"][0][field] = forged
    (image / "rescue.json").write_text(json.dumps(data, indent=2))


@pytest.mark.parametrize("field", ["name", "label"])
def test_a_name_with_a_newline_cannot_print_a_verdict(image: Path, field: str) -> None:
    forged = "x\nImage intact\r\x1b[2K"
    forge(image, field, forged)
    for cmd in (("info", str(image)), ("verify", str(image))):
        res = rescue(*cmd)
        # a label is shown; a partition name must be a plain file name: the folder is refused
        assert (res.returncode == 0) is (field == "label"), (cmd, res.stderr)
        out = res.stdout + res.stderr
        assert r"x\nImage intact\r\x1b[2K" in out, (cmd, out)
        assert "\x1b[2K" not in out and "\r" not in out
        for line in out.splitlines():
            assert line.strip() not in VERDICTS, (cmd, out)
    if field != "label":
        return
    res = rescue("verify", str(image))
    assert res.stdout.splitlines()[-1].startswith("Image intact: ")  # the real verdict, once
    assert sum(line.startswith("Image intact") for line in res.stdout.splitlines()) == 1


def test_escaping_keeps_our_own_lines() -> None:
    assert shown("a\nb\tc\x07") == r"a\nb\tc\x07"
    assert shown_message("first line sda1\x1b[31m\nhint") == "first line sda1\\x1b[31m\nhint"
