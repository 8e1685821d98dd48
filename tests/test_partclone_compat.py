"""Debian's partclone.chkimg accepts our stream for every filesystem rescue maps."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from capabilities import need
from diskbench import MKFS, run

from rescue.cli import main

pytestmark = need("partclone")

SIZES = {"ext4": 64, "ntfs": 64, "vfat": 64, "exfat": 64, "xfs": 320, "btrfs": 200}


@pytest.mark.parametrize("fstype", sorted(SIZES))
def test_chkimg_accepts_our_stream(tmp_path: Path, fstype: str) -> None:
    part = tmp_path / "part.img"
    with part.open("wb") as f:
        f.truncate(SIZES[fstype] << 20)
    run(*MKFS[fstype], str(part))
    image = tmp_path / "image"
    assert main(["capture", str(part), str(image)]) == 0
    streams = list(image.glob(f"*.{fstype}-ptcl-img.zst"))
    assert len(streams) == 1, list(image.iterdir())
    check = subprocess.run(
        f"zstd -dc {streams[0]} | partclone.chkimg -s - -L /dev/null",
        shell=True,
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
