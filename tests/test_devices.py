"""Disk discovery on real loop disks: what `rescue list` reports and why a device is flagged."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from capabilities import need
from conftest import DiskFactory
from diskbench import PartSpec

from rescue.cli import main
from rescue.devices import find_device, list_disks
from rescue.devices.model import Disk

pytestmark = need("root", "loop")

LAYOUT = [
    PartSpec(64, "ext4", "rootfs"),
    PartSpec(64, "ntfs", "WINDATA"),
    PartSpec(None, "swap", "swappy"),
]


def _listed(capsys: pytest.CaptureFixture[str], path: str) -> dict:
    assert main(["list", "--json"]) == 0
    disks = json.loads(capsys.readouterr().out)
    matches = [d for d in disks if d["path"] == path]
    assert len(matches) == 1, f"{path} not listed once in {[d['path'] for d in disks]}"
    return matches[0]


def test_list_json_reports_a_gpt_disk(
    loop_disk_factory: DiskFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    disk = loop_disk_factory(200, "gpt", LAYOUT)
    d = _listed(capsys, disk.path)
    assert d["size"] == 200 << 20
    assert d["partition_table"] == "gpt"
    assert d["transport"] == "loop"
    assert d["backing_file"] == str(disk.backing)
    assert d["flags"] == []
    parts = d["partitions"]
    assert [p["path"] for p in parts] == disk.parts
    assert [p["number"] for p in parts] == [1, 2, 3]
    assert [p["fstype"] for p in parts] == ["ext4", "ntfs", "swap"]
    assert [p["label"] for p in parts] == ["rootfs", "WINDATA", "swappy"]
    assert parts[0]["start"] == 1 << 20
    assert parts[0]["size"] == 64 << 20
    assert parts[1]["start"] == 65 << 20
    for p in parts:
        assert p["uuid"], p
        assert p["mountpoints"] == []
        assert p["flags"] == []
    blkid = subprocess.run(
        ["blkid", "-o", "value", "-s", "UUID", disk.parts[0]],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert parts[0]["uuid"] == blkid


def test_mounted_partition_and_active_swap_are_flagged(
    loop_disk_factory: DiskFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    disk = loop_disk_factory(200, "gpt", LAYOUT)
    mnt = disk.mount(0, tmp_path / "mnt")
    ntfs_mnt = disk.mount(1, tmp_path / "ntfs")
    disk.swapon(2)
    d = _listed(capsys, disk.path)
    ext4, ntfs, swap = d["partitions"]
    assert ext4["mountpoints"] == [str(mnt)]
    assert ext4["flags"] == ["mounted"]
    assert ntfs["mountpoints"] == [str(ntfs_mnt)]
    assert "mounted" in ntfs["flags"]
    assert swap["flags"] == ["swap-active"]
    assert "mounted" in d["flags"]
    assert "swap-active" in d["flags"]
    disk.swapoff(2)
    disk.umount(mnt)
    d = _listed(capsys, disk.path)
    assert d["partitions"][0]["flags"] == []
    assert d["partitions"][2]["flags"] == []


def test_mbr_disk_and_module_entry_point(loop_disk_factory: DiskFactory) -> None:
    disk = loop_disk_factory(128, "dos", [PartSpec(60, "ext2"), PartSpec(None, "vfat", "STICK")])
    out = subprocess.run(
        [sys.executable, "-m", "rescue", "list", "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    d = next(x for x in json.loads(out) if x["path"] == disk.path)
    assert d["partition_table"] == "dos"
    assert [p["fstype"] for p in d["partitions"]] == ["ext2", "vfat"]
    assert d["partitions"][1]["label"] == "STICK"


def test_plain_list_is_a_table(loop_disk_factory: DiskFactory) -> None:
    disk = loop_disk_factory(64, "gpt", [PartSpec(None, "ext4")])
    out = subprocess.run(
        [sys.executable, "-m", "rescue", "list"],
        capture_output=True,
        text=True,
        check=True,
        env={"COLUMNS": "200", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    ).stdout
    assert disk.path in out
    assert disk.parts[0] in out
    assert "ext4" in out


def test_empty_loop_devices_are_hidden(udev: None) -> None:
    empty = subprocess.run(
        ["losetup", "-f"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert empty not in [d.path for d in list_disks()]


def test_probing_without_udev_properties(loop_disk_factory: DiskFactory) -> None:
    disk = loop_disk_factory(
        500,
        "gpt",
        [PartSpec(64, "ext4"), PartSpec(64, "ntfs"), PartSpec(320, "xfs"), PartSpec(None, "swap")],
    )
    probed = next(d for d in list_disks(use_udev_properties=False) if d.path == disk.path)
    assert isinstance(probed, Disk)
    assert not probed.from_udev
    assert probed.partition_table == "gpt"
    assert [p.fstype for p in probed.partitions] == ["ext4", "ntfs", "xfs", "swap"]
    assert all(p.uuid is None for p in probed.partitions)  # only udev knows them


def test_find_device_follows_links(loop_disk_factory: DiskFactory) -> None:
    disk = loop_disk_factory(64, "gpt", [PartSpec(None, "ext4", "findme")])
    by_label = Path("/dev/disk/by-label/findme")
    if not by_label.exists():
        pytest.skip("udev made no /dev/disk/by-label links")
    found = find_device(str(by_label))
    assert found.path == disk.parts[0]
    assert find_device(disk.path).path == disk.path


def test_a_disks_serial_comes_from_udev_then_sysfs(tmp_path: Path) -> None:
    """SATA: udev's ID_SERIAL_SHORT; NVMe/SCSI: sysfs device/serial; virtio: sysfs serial
    (udev sets only ID_SERIAL for it). The layouts are sysfs's own; QEMU's virtio disk is
    checked for real by scripts/boot-test's job boot."""
    from rescue.devices.udev import disk_serial  # noqa: PLC0415

    (tmp_path / "nvme" / "device").mkdir(parents=True)
    (tmp_path / "nvme" / "device" / "serial").write_text("S64DNX0R   \n")
    (tmp_path / "vda").mkdir()
    (tmp_path / "vda" / "serial").write_text("RESCUE-JOB-TARGET\n")
    (tmp_path / "none").mkdir()
    assert disk_serial({"ID_SERIAL_SHORT": "WD-WX1"}, tmp_path / "nvme") == "WD-WX1"
    assert disk_serial({}, tmp_path / "nvme") == "S64DNX0R"
    assert disk_serial({"ID_SERIAL": "RESCUE-JOB-TARGET"}, tmp_path / "vda") == "RESCUE-JOB-TARGET"
    assert disk_serial({}, tmp_path / "none") is None
