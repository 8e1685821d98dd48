"""Image folders damaged or crafted by hand: a message and an exit code, never a traceback,
a hang, a read outside the folder or a write to the target.

Each case starts from a real image of a real disk, changes one thing the way a
broken drive or a hostile hand would, and runs the real command in a
subprocess with a time limit. The target is a disk file filled with a pattern
and compared whole afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from capabilities import need
from diskbench import clonezilla_copy, rescue_command

from rescue.cli import main

pytestmark = need("root", "loop")

TIME_LIMIT = 60


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A rescue image of a GPT disk file with one ext4 partition, made once for the module."""
    where = tmp_path_factory.mktemp("pristine")
    disk = where / "disk.img"
    with disk.open("wb") as f:
        f.truncate(48 << 20)
    subprocess.run(
        ["sfdisk", "-q", str(disk)], input="label: gpt\nstart=2048, type=linux\n",
        text=True, check=True,
    )  # fmt: skip
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-E", f"offset={2048 * 512}", str(disk), "40M"], check=True
    )
    assert main(["capture", str(disk), str(where / "image")]) == 0
    return where / "image"


@pytest.fixture
def image(pristine: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "image"
    copy.mkdir()
    for f in pristine.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    return copy


@pytest.fixture
def target(tmp_path: Path) -> Path:
    t = tmp_path / "target.img"
    t.write_bytes(bytes(range(256)) * (64 << 12))  # 64 MiB of a pattern
    return t


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rescue(*args: str) -> subprocess.CompletedProcess[str]:
    return rescue_command(*args, timeout=TIME_LIMIT)


def refused(image: Path, target: Path, *words: str, commands: tuple[str, ...] = ()) -> None:
    """verify, info and restore all end in one message naming ``words``; the target is intact."""
    before = digest(target)
    runs = {
        "verify": ["verify", str(image)],
        "info": ["info", str(image)],
        "restore": ["restore", str(image), str(target), "--yes"],
    }
    for name, argv in runs.items():
        if commands and name not in commands:
            continue
        res = rescue(*argv)
        assert res.returncode in (1, 2), (argv, res.returncode, res.stdout, res.stderr)
        assert "Traceback" not in res.stderr, res.stderr
        assert res.stderr.strip().startswith("rescue: "), res.stderr
        for w in words:
            assert w in res.stderr, (argv, w, res.stderr)
    assert digest(target) == before, "the target was written"


def edit_manifest(image: Path, change: Callable[[dict], None]) -> None:
    path = image / "rescue.json"
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("size", "big", ["partitions[0].size", "not a whole number"]),
        ("size", -4096, ["partitions[0].size", "outside"]),
        ("start", -1, ["partitions[0].start"]),
        ("stored_as", "zfs-send", ["partitions[0].stored_as", "zfs-send"]),
        ("fstype", "reiser4", ["partitions[0].fstype", "reiser4"]),
        ("block_size", 3000, ["block_size"]),
        ("stream", "../other/sda1.img", ["partitions[0].stream", "not a plain file name"]),
        ("stream", "/etc/passwd", ["not a plain file name"]),
        ("name", "p1\nImage intact", ["partitions[0].name", "\\n"]),
        ("used_blocks", 1 << 40, ["used"]),
        ("unreadable", [[0, 1 << 50]], ["unreadable"]),
        ("tail", "%%%", ["tail", "base64"]),
    ],
)
def test_ill_typed_or_out_of_range_fields_are_refused(
    image: Path, target: Path, field: str, value: object, words: list[str]
) -> None:
    def change(doc: dict) -> None:
        doc["partitions"][0][field] = value

    edit_manifest(image, change)
    refused(image, target, "rescue.json", *words)


@pytest.mark.parametrize(
    ("where", "value", "words"),
    [
        ("name", "../sibling", ["source.name", "not a plain file name"]),
        ("kind", "cdrom", ["source.kind", "cdrom"]),
        ("size", 1 << 20, ["past the end of its"]),
    ],
)
def test_a_bad_source_is_refused(
    image: Path, target: Path, where: str, value: object, words: list[str]
) -> None:
    edit_manifest(image, lambda doc: doc["source"].__setitem__(where, value))
    refused(image, target, *words)


def test_an_unknown_compression_is_refused(image: Path, target: Path) -> None:
    edit_manifest(image, lambda doc: doc["compression"].__setitem__("algorithm", "brotli"))
    refused(image, target, "brotli")


def test_deeply_nested_json(image: Path, target: Path) -> None:
    path = image / "rescue.json"
    text = path.read_text()
    nested = "[" * 200_000 + "]" * 200_000
    path.write_text(text[:-2] + f', "extra2": {nested}}}\n')
    refused(image, target, "rescue.json", "not valid JSON")


def test_a_huge_manifest(image: Path, target: Path) -> None:
    path = image / "rescue.json"
    with path.open("ab") as f:
        f.write(b" " * (17 << 20))
    refused(image, target, "rescue.json", "at most")


@pytest.mark.parametrize("victim", ["rescue.json", "disk-pt.sf", "disk-mbr"])
def test_a_file_that_is_a_symlink_out_of_the_folder(
    image: Path, target: Path, tmp_path: Path, victim: str
) -> None:
    name = next(p.name for p in image.iterdir() if p.name.endswith(victim.split("-", 1)[-1]))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes((image / name).read_bytes())
    (image / name).unlink()
    (image / name).symlink_to(elsewhere)
    commands = ("verify", "info", "restore") if victim == "rescue.json" else ("restore",)
    refused(image, target, name, "symbolic link", commands=commands)


def test_a_layout_file_linked_to_dev_zero(image: Path, target: Path) -> None:
    sf = next(image.glob("*-pt.sf"))
    sf.unlink()
    sf.symlink_to("/dev/zero")
    refused(image, target, sf.name, commands=("restore",))


def test_a_fifo_in_place_of_the_manifest(image: Path, target: Path) -> None:
    (image / "rescue.json").unlink()
    os.mkfifo(image / "rescue.json")
    refused(image, target, "rescue.json", "FIFO")


def test_clonezilla_folder_with_a_bad_parts_file(image: Path, target: Path, tmp_path: Path) -> None:
    cz = clonezilla_copy(image, tmp_path / "cz", "zstd").parent
    (cz / "parts").write_text("disk1 ../../etc/passwd\n")
    refused(cz, target, "parts", "not a plain file name", commands=("info", "restore"))


def test_clonezilla_stream_in_a_compression_rescue_cannot_read(
    image: Path, target: Path, tmp_path: Path
) -> None:
    stream = clonezilla_copy(image, tmp_path / "cz", "zstd")
    cz = stream.parent
    stream.rename(cz / stream.name.replace(".zst", ".xz"))
    refused(cz, target, ".xz", "'xz'", commands=("info", "restore"))


def test_the_untouched_image_still_restores(image: Path, target: Path) -> None:
    """The checks refuse what is wrong, not what is right."""
    res = rescue("restore", str(image), str(target), "--yes")
    assert res.returncode == 0, res.stderr
    res = rescue("verify", str(image))
    assert res.returncode == 0, res.stderr


def test_a_target_file_on_a_full_filesystem_is_a_message(image: Path, tmp_path: Path) -> None:
    """ENOSPC while writing (the data or the tail after it) ends in words, not a traceback."""
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)], check=True)
    try:
        target = small / "target.img"
        with target.open("wb") as f:
            f.truncate(64 << 20)  # sparse: room for its size, not for its data
        res = rescue("restore", str(image), str(target), "--yes")
    finally:
        subprocess.run(["umount", str(small)], check=True)
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    assert "No space left on device" in res.stderr, res.stderr
