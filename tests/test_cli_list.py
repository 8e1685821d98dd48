"""`rescue list` keeps every device path and model whole: the other columns wrap.

Most tests here are about formatting only, so they build Disk values from
rescue.devices.model by hand (fake disks: no device is read); the last one
lists real loop disks through the command line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from capabilities import need
from conftest import DiskFactory
from diskbench import PartSpec

import rescue.cli.list as list_cmd
from rescue.cli import main
from rescue.cli.columns import Column, Row, format_table
from rescue.devices.model import Disk, Partition

GiB = 1 << 30
LONG_MOUNT = "/run/media/technician/a-rather-long-filesystem-label"


def _part(disk: str, n: int, size: int, fs: str | None, label: str | None, **kw: Any) -> Partition:
    sep = "p" if disk[-1].isdigit() else ""
    fields: dict[str, Any] = {
        "path": f"{disk}{sep}{n}", "name": f"{disk[5:]}{sep}{n}", "number": n, "start": n << 20,
        "size": size, "fstype": fs, "label": label, "uuid": None, "partlabel": None,
        "mountpoints": (), "flags": (), "disk": disk,
    }  # fmt: skip
    return Partition(**{**fields, **kw})


def _disk(path: str, size: int, model: str | None, serial: str | None, **kw: Any) -> Disk:
    fields: dict[str, Any] = {
        "path": path, "name": path.rsplit("/", 1)[-1], "size": size, "model": model,
        "serial": serial, "transport": None, "removable": False, "read_only": False,
        "rotational": False, "logical_sector_size": 512, "partition_table": "gpt", "flags": (),
        "partitions": (),
    }  # fmt: skip
    return Disk(**{**fields, **kw})


def long_disks() -> list[Disk]:
    """Fake disks with a long model, a long serial, a long disk file and a long mount point."""
    nvme = "/dev/nvme0n1"
    efi = _part(
        nvme,
        1,
        GiB // 2,
        "vfat",
        "EFI",
        partlabel="EFI system partition",
        mountpoints=("/boot/efi",),
        flags=("mounted",),
    )
    root = _part(
        nvme,
        2,
        1900 * GiB,
        "ext4",
        "a-rather-long-filesystem-label",
        partlabel="Linux filesystem",
        mountpoints=(LONG_MOUNT,),
        flags=("mounted",),
    )
    stick = _part("/dev/sdb", 1, 32 * GiB, "exfat", "STICK")
    return [
        _disk(
            nvme,
            2048 * GiB,
            "Samsung SSD 980 PRO with Heatsink 2TB",
            "S6B0NL0T123456X",
            transport="nvme",
            partitions=(efi, root),
            flags=("boot-medium", "mounted"),
        ),
        _disk(
            "/dev/sdb",
            32 * GiB,
            "SanDisk 3.2Gen1",
            "0401c3b2a1f5e6d7c8b9a0ffeeddccbbaa99",
            transport="usb",
            removable=True,
            partition_table="dos",
            partitions=(stick,),
        ),
        _disk(
            "/dev/loop12",
            64 << 20,
            None,
            None,
            partition_table=None,
            backing_file="/var/tmp/pytest-of-root/pytest-12/test_something_long0/disk.img",
        ),
    ]


def short_disks() -> list[Disk]:
    """A fake disk whose table fits 80 columns once its mount point wraps."""
    data = _part("/dev/sda", 1, 500 * GiB, "ext4", "data", mountpoints=(LONG_MOUNT,))
    return [_disk("/dev/sda", 500 * GiB, "WDC WD5000", None, transport="sata", partitions=(data,))]


def whole_values(disks: list[Disk]) -> list[str]:
    """What must never be cut: every device path, model, serial and disk file."""
    values = []
    for d in disks:
        values += [d.path, *(p.path for p in d.partitions)]
        values += [v for v in (d.model, d.serial, d.backing_file) if v]
    return values


def test_long_paths_and_models_stay_whole_at_80_columns() -> None:
    """Too wide even wrapped: models, files and mount points go on lines of their own."""
    disks = long_disks()
    lines = list_cmd.format_disks(disks, 80).splitlines()
    for value in [*whole_values(disks), LONG_MOUNT]:
        assert any(value in line for line in lines), f"{value} was cut:\n" + "\n".join(lines)
    assert max(len(line) for line in lines) <= 80, "\n".join(lines)
    assert lines[0].split()[:3] == ["device", "size", "bus"]
    model = next(i for i, line in enumerate(lines) if "Samsung SSD 980 PRO" in line)
    assert lines[model - 2].startswith("/dev/nvme0n1 ")  # under its disk (flags took two lines)
    assert f"mounted on: {LONG_MOUNT}" in lines[lines.index("    name: Linux filesystem") + 1]


def test_a_table_that_can_fit_fits_by_wrapping() -> None:
    disks = short_disks()
    natural = list_cmd.format_disks(disks, 10_000).splitlines()
    assert max(len(line) for line in natural) > 80  # too wide unwrapped
    lines = list_cmd.format_disks(disks, 80).splitlines()
    assert max(len(line) for line in lines) <= 80
    assert len(lines) > len(natural)
    for value in whole_values(disks):
        assert any(value in line for line in lines)
    # every character of the mount point is still there, in order
    column = lines[0].index("mounted")
    assert "".join(line[column:].split(" ")[0] for line in lines[2:]) == LONG_MOUNT


def test_whole_columns_break_only_between_pieces() -> None:
    columns = (Column("name", whole=True), Column("notes"))
    rows = [Row((("Model X-1000", "(SERIAL-123)"), "one two three four five six seven"))]
    text = format_table(columns, rows, 30)
    assert "Model X-1000" in text and "(SERIAL-123)" in text
    assert all(len(line) <= 30 for line in text.splitlines()), text


def test_piped_list_at_80_columns(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    disks = long_disks()
    monkeypatch.setattr(list_cmd, "list_disks", lambda: disks)
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert out == list_cmd.format_disks(disks, 80) + "\n"  # no colour codes, nothing cut
    for value in whole_values(disks):
        assert value in out


def test_piped_list_without_a_width_has_one_line_a_device(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Piped, as lsblk: no width limit, so nothing needs to wrap."""
    disks = long_disks()
    monkeypatch.setattr(list_cmd, "list_disks", lambda: disks)
    monkeypatch.delenv("COLUMNS", raising=False)
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 + sum(1 + len(d.partitions) for d in disks)
    assert any(LONG_MOUNT in line for line in lines)


@need("root", "loop")
def test_real_loop_disks_at_80_columns(
    loop_disk_factory: DiskFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    disk = loop_disk_factory(32, "gpt", [PartSpec(None, "ext4")])
    mnt = disk.mount(0, tmp_path / "a-mount-point-with-a-long-name-to-wrap")
    try:
        monkeypatch.setenv("COLUMNS", "80")
        assert main(["list"]) == 0
        out = capsys.readouterr().out
    finally:
        disk.umount(mnt)
    assert disk.path in out and disk.parts[0] in out
    assert str(disk.backing) in out  # the disk file: never cut
    assert str(mnt) in out  # whole: wrapped in its column or on a line of its own
    long_values = (str(disk.backing), str(mnt))
    assert all(len(line) <= 80 for line in out.splitlines() if not line.endswith(long_values))
