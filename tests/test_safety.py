"""Safety refusals on real devices: what must never be written, and the confirmation."""

from __future__ import annotations

from pathlib import Path

import pytest
from capabilities import need
from conftest import DiskFactory
from diskbench import PartSpec, attach

from rescue.devices import find_device
from rescue.devices.safety import check_target, confirm, describe
from rescue.errors import EXIT_REFUSED, RefusedError

pytestmark = need("root", "loop")


def test_free_disk_passes(loop_disk_factory: DiskFactory) -> None:
    disk = loop_disk_factory(64, "gpt", [PartSpec(None, "ext4")])
    check_target(find_device(disk.path))
    check_target(find_device(disk.parts[0]))


def test_mounted_partition_and_its_disk_are_refused(
    loop_disk_factory: DiskFactory, tmp_path: Path
) -> None:
    disk = loop_disk_factory(64, "gpt", [PartSpec(None, "ext4")])
    disk.mount(0, tmp_path / "m")
    for dev in (disk.parts[0], disk.path):
        with pytest.raises(RefusedError, match="mounted") as err:
            check_target(find_device(dev))
        assert err.value.exit_code == EXIT_REFUSED
        assert "Unmount" in str(err.value)


def test_active_swap_is_refused(loop_disk_factory: DiskFactory) -> None:
    disk = loop_disk_factory(64, "dos", [PartSpec(None, "swap")])
    disk.swapon(0)
    with pytest.raises(RefusedError, match="swap"):
        check_target(find_device(disk.parts[0]))


def test_read_only_device_is_refused(loop_disk_factory: DiskFactory, tmp_path: Path) -> None:
    disk = loop_disk_factory(64, "gpt", [PartSpec(None, "ext4")])
    ro = attach(disk.backing, read_only=True)
    try:
        with pytest.raises(RefusedError, match="read-only"):
            check_target(find_device(ro.path))
    finally:
        ro.detach()


def test_source_is_refused_as_target(loop_disk_factory: DiskFactory) -> None:
    disk = loop_disk_factory(64, "gpt", [PartSpec(30, "ext4"), PartSpec(None, "ext4")])
    whole, p1, p2 = (find_device(x) for x in (disk.path, *disk.parts))
    with pytest.raises(RefusedError, match="source"):
        check_target(p1, source=p1)
    with pytest.raises(RefusedError, match="source"):
        check_target(whole, source=p2)
    with pytest.raises(RefusedError, match="source"):
        check_target(p1, source=whole)
    check_target(p1, source=p2)  # two partitions of one disk do not overlap


def test_describe_names_size_and_path(loop_disk_factory: DiskFactory) -> None:
    disk = loop_disk_factory(64, "gpt", [PartSpec(None, "ext4", "data")])
    text = describe(find_device(disk.path))
    assert disk.path in text
    assert str(64 << 20) in text
    assert str(disk.backing) in text


def test_confirm_needs_the_typed_name_or_yes() -> None:
    confirm("/dev/sdz", yes=True)
    confirm("/dev/sdz", yes=False, ask=lambda _prompt: "sdz")
    with pytest.raises(RefusedError, match="Not confirmed"):
        confirm("/dev/sdz", yes=False, ask=lambda _prompt: "y")
    with pytest.raises(RefusedError, match="--yes"):
        confirm("/dev/sdz", yes=False, interactive=False)
