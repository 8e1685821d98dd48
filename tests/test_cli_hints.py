"""Two rules the UI and the command line share, on real images captured from loop disks.

Where images are looked for (rescue.operations.finding): `rescue restore`
without an image folder lists what it finds, as the UI's picker does, and
refuses. Whether a folder holds a capture to resume (capture_map.resumable):
`rescue capture SOURCE IMAGE_DIR` into it says how to go on with it instead.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from capabilities import need
from conftest import DiskFactory
from diskbench import LoopDisk, PartSpec, clonezilla_copy

from rescue.cli import main
from rescue.errors import EXIT_REFUSED, BadInputError
from rescue.image.names import CAPTURE_MAP
from rescue.operations.capture import capture
from rescue.operations.capture_map import describe_resumable, resumable
from rescue.operations.finding import describe_found, find_images_on_drives, search_roots
from rescue.operations.verify import verify

pytestmark = need("root", "loop")


class Interrupt:
    """A progress reporter that stops the capture at its first byte, as a power cut would."""

    def phase(self, name: str, total: int | None) -> None:
        pass

    def advance(self, done: int) -> None:
        raise KeyboardInterrupt

    def note(self, message: str) -> None:
        pass


@pytest.fixture
def small_disk(loop_disk_factory: DiskFactory) -> LoopDisk:
    return loop_disk_factory(32, "gpt", [PartSpec(None, "ext4", label="SMALL")])


def interrupted_capture(disk: LoopDisk, image: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        capture(disk.path, image, progress=Interrupt())
    assert (image / CAPTURE_MAP).is_file()
    assert not (image / "rescue.json").exists()


def test_capture_into_an_interrupted_one_says_how_to_resume(
    small_disk: LoopDisk, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "pc"
    assert resumable(image) is None  # no folder: nothing to resume
    interrupted_capture(small_disk, image)
    state = resumable(image)
    assert state is not None and state.source["path"] == small_disk.path
    described = describe_resumable(image)
    assert described is not None and small_disk.path in described and "32.0 MiB" in described

    before = sorted((p.name, p.stat().st_size) for p in image.iterdir())
    capsys.readouterr()
    assert main(["capture", small_disk.path, str(image)]) == EXIT_REFUSED
    err = capsys.readouterr().err
    assert f"{image} holds an interrupted capture of {small_disk.path}" in err
    assert f"rescue capture --resume {image}" in err
    assert "new name" not in err  # the same disk: the short command is enough
    assert sorted((p.name, p.stat().st_size) for p in image.iterdir()) == before  # untouched

    assert main(["capture", "--resume", str(image)]) == 0
    assert resumable(image) is None  # finished: the map is gone
    assert verify(image).streams_checked == 1


def test_capture_of_another_name_into_an_interrupted_one_names_both(
    small_disk: LoopDisk, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "pc"
    interrupted_capture(small_disk, image)
    other = tmp_path / "disk-file.img"
    other.write_bytes(bytes(1 << 20))
    capsys.readouterr()
    assert main(["capture", str(other), str(image)]) == EXIT_REFUSED
    err = capsys.readouterr().err
    assert f"rescue capture {other} --resume {image}" in err and "new name" in err


def test_a_damaged_capture_map_is_an_error_not_a_fresh_start(tmp_path: Path) -> None:
    image = tmp_path / "pc"
    image.mkdir()
    (image / CAPTURE_MAP).write_text("{not json")
    with pytest.raises(BadInputError, match="damaged"):
        resumable(image)


def test_restore_without_an_image_lists_those_on_the_drives(
    small_disk: LoopDisk,
    loop_disk_factory: DiskFactory,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    drive = loop_disk_factory(64, "gpt", [PartSpec(None, "ext4", label="USB")])
    mnt = drive.mount(0, tmp_path / "usb")
    try:
        images = mnt / "images"
        good, stopped = images / "office-pc", images / "stopped-pc"
        assert main(["capture", small_disk.path, str(good)]) == 0
        interrupted_capture(small_disk, stopped)
        assert (stopped / "clonezilla-img").is_file()  # saved first: it looks like an image

        assert mnt in search_roots()  # a mounted drive's root
        assert good in find_images_on_drives() and stopped in find_images_on_drives()
        found = describe_found(good)
        assert found.problem is None and found.made is not None
        assert found.source is not None and found.source.startswith(small_disk.path)
        assert found.size == 32 << 20 and found.used
        assert "rescue capture --resume" in (describe_found(stopped).problem or "")
        clonezilla_copy(good, images / "by-clonezilla", "gzip")
        theirs = describe_found(images / "by-clonezilla")
        assert theirs.problem is None and theirs.made is not None
        assert theirs.source == small_disk.path.rsplit("/", 1)[-1]  # the disk's name, no more
        assert theirs.size is not None and theirs.size <= 32 << 20

        capsys.readouterr()
        assert main(["restore"]) == EXIT_REFUSED
        out, err = capsys.readouterr()
        (row,) = [line for line in out.splitlines() if line.startswith(str(good))]
        assert small_disk.path in row and "32.0 MiB" in row
        assert found.made.astimezone().strftime("%Y-%m-%d %H:%M") in row
        words = " ".join(out.split())  # the note under a row wraps between words
        assert f"not usable: an interrupted capture of {small_disk.path}" in words
        assert f"rescue capture --resume {stopped}" in words
        assert any(line.startswith(str(images / "by-clonezilla")) for line in out.splitlines())
        assert "rescue restore IMAGE_DIR TARGET" in err

        # an image but no target: refused too, saying what is missing
        assert main(["restore", str(good)]) == EXIT_REFUSED
        assert f"rescue restore {good} TARGET" in capsys.readouterr().err
    finally:
        drive.umount(mnt)
