"""A capture killed at any moment goes on with --resume and gives the same image."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from capabilities import need
from conftest import DiskFactory
from diskbench import PartSpec

from rescue.cli import main
from rescue.image.names import CAPTURE_MAP as MAP_NAME

pytestmark = need("root", "loop")


def rescue(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "RESCUE_CHECKPOINT_SECONDS": "0.1"}
    return subprocess.Popen(
        [sys.executable, "-m", "rescue", *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, text=True,
    )  # fmt: skip


def streams(image: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(image.iterdir()) if "-ptcl-img" in p.name}


def records(image: Path) -> list[dict[str, object]]:
    return json.loads((image / "rescue.json").read_text())["partitions"]


@pytest.fixture
def busy_disk(loop_disk_factory: DiskFactory, tmp_path: Path) -> str:
    """Enough incompressible data that a capture takes a few seconds."""
    disk = loop_disk_factory(400, "gpt", [PartSpec(250, "ext4"), PartSpec(None)])
    mnt = disk.mount(0, tmp_path / "fill")
    rng = random.Random(3)
    for i in range(6):
        (mnt / f"data{i}.bin").write_bytes(rng.randbytes(30 << 20))
    disk.umount(mnt)
    with open(disk.parts[1], "r+b") as f:  # a partition of no known filesystem: stored raw
        f.write(rng.randbytes(40 << 20))
    return disk.path


def checkpoint_of(image: Path) -> tuple[int, int]:
    """(partitions done, stream position) of the capture map, (-1, -1) if none yet."""
    try:
        doc = json.loads((image / MAP_NAME).read_text())
    except (OSError, ValueError):
        return -1, -1
    point = doc.get("checkpoint") or {}
    return len(doc.get("done", [])), int(point.get("stream_pos", 0))


def test_killed_capture_resumes_to_the_same_image(busy_disk: str, tmp_path: Path) -> None:
    """SIGKILL at random moments, each after the capture got further than the last time."""
    options = ["--split", "37M", "--json"]
    clean = tmp_path / "clean"
    assert main(["capture", busy_disk, str(clean), *options]) == 0

    image = tmp_path / "resumed"
    rng = random.Random(42)
    kills = 0
    seen = (-1, -1)
    proc = rescue("capture", busy_disk, str(image), *options)
    while True:
        deadline = time.monotonic() + 60
        while proc.poll() is None and checkpoint_of(image) <= seen:
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.15))  # somewhere between two checkpoints
        seen = checkpoint_of(image)
        proc.kill()
        code = proc.wait()
        if code == 0 or (image / "rescue.json").exists():
            # finished; a kill after the manifest was written may have cut its tidying short,
            # which a resume finishes (saying there is nothing left to resume)
            if (image / "rescue.incomplete").exists():
                assert main(["capture", "--resume", str(image)]) == 2
            break
        kills += 1
        assert (image / "rescue.incomplete").exists()  # never complete-looking before the end
        proc = rescue("capture", "--resume", str(image), "--json")
    print(f"killed {kills} times")
    assert kills >= 4
    assert not (image / MAP_NAME).exists()
    assert streams(image) == streams(clean)
    assert records(image) == records(clean)
    assert sorted(p.name for p in image.iterdir()) == sorted(p.name for p in clean.iterdir())
    assert main(["verify", str(image)]) == 0


def test_resume_refuses_another_disk_and_a_finished_image(
    busy_disk: str, loop_disk_factory: DiskFactory, tmp_path: Path
) -> None:
    image = tmp_path / "image"
    proc = rescue("capture", busy_disk, str(image), "--json")
    deadline = time.monotonic() + 30
    while checkpoint_of(image) <= (0, 0) and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    assert not (image / "rescue.json").exists()
    other = loop_disk_factory(64, None, [])
    assert main(["capture", other.path, "--resume", str(image)]) == 2
    assert main(["capture", "--resume", str(tmp_path / "nothing-here")]) == 2
    assert main(["capture", "--resume", str(image), "--json"]) == 0
    assert main(["capture", "--resume", str(image)]) == 2  # complete now


def test_full_destination_stops_clearly_and_resumes_after_room_is_made(
    busy_disk: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "small"
    dest.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=60M", "tmpfs", str(dest)], check=True)
    try:
        image = dest / "image"
        assert main(["capture", busy_disk, str(image), "--json"]) == 1
        err = capsys.readouterr().err
        assert "is full" in err and f"rescue capture --resume {image}" in err
        assert not (image / "rescue.json").exists()
        assert (image / "rescue.incomplete").exists()
        subprocess.run(["mount", "-o", "remount,size=600M", str(dest)], check=True)
        assert main(["capture", "--resume", str(image), "--json"]) == 0
        assert main(["verify", str(image)]) == 0
        # nothing of ours keeps the destination busy: it unmounts at once
        assert subprocess.run(["umount", str(dest)], check=False).returncode == 0
    finally:
        subprocess.run(["umount", "-l", str(dest)], check=False, capture_output=True)
