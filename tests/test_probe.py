"""Superblock probing on filesystems made by their own mkfs in plain files."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from rescue.filesystems.probe import probe_fstype

MKFS = {
    "ext2": ["mkfs.ext2", "-q", "-F"],
    "ext3": ["mkfs.ext3", "-q", "-F"],
    "ext4": ["mkfs.ext4", "-q", "-F"],
    "xfs": ["mkfs.xfs", "-q", "-f"],
    "btrfs": ["mkfs.btrfs", "-q", "-f"],
    "ntfs": ["mkntfs", "-q", "-F", "-Q"],
    "exfat": ["mkfs.exfat"],
    "vfat": ["mkfs.vfat"],
    "swap": ["mkswap"],
}


@pytest.mark.parametrize("fstype", sorted(MKFS))
def test_probe_recognises_fresh_filesystem(tmp_path: Path, fstype: str) -> None:
    img = tmp_path / "fs.img"
    with img.open("wb") as f:
        f.truncate(320 << 20)
    subprocess.run([*MKFS[fstype], str(img)], check=True, capture_output=True)
    with img.open("rb") as f:
        assert probe_fstype(f) == fstype


def test_probe_unknown_returns_none(tmp_path: Path) -> None:
    img = tmp_path / "zero.img"
    img.write_bytes(b"\0" * (1 << 20))
    with img.open("rb") as f:
        assert probe_fstype(f) is None
