"""The only module that imports pyudev: udev devices in, frozen dataclasses out.

When udev has no database entry for a device (no udev daemon ran, as on a
bare container), the filesystem type and partition table are probed from the
device itself and the disk says so (``from_udev=False``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyudev

from rescue import system
from rescue.blockio import sysfs_text
from rescue.devices.model import (
    FLAG_BOOT_MEDIUM,
    FLAG_IN_USE,
    FLAG_MOUNTED,
    FLAG_READ_ONLY,
    FLAG_SWAP,
    Disk,
    Partition,
)
from rescue.devices.system_state import SystemState
from rescue.filesystems.probe import probe_fstype
from rescue.kernel import DevNum

# Kernel names that are never a disk a technician means
_HIDDEN_PREFIXES = ("ram", "zram", "fd", "dm-", "md", "nbd")
_UDEV_DB = Path("/run/udev/data")


def _attr(device: Any, name: str) -> str | None:
    try:
        value = device.attributes.get(name)
    except (KeyError, OSError):
        return None
    if value is None:
        return None
    text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    return text.strip() or None


def _devnum(device: Any) -> DevNum:
    num = device.device_number
    return os.major(num), os.minor(num)


def _has_udev_data(device: Any) -> bool:
    major, minor = _devnum(device)
    return (_UDEV_DB / f"b{major}:{minor}").exists()


def _transport(device: Any, props: dict[str, str]) -> str | None:
    name: str = device.sys_name
    if name.startswith("loop"):
        return "loop"
    if name.startswith("nvme"):
        return "nvme"
    if name.startswith("vd"):
        return "virtio"
    if name.startswith("mmcblk"):
        return "mmc"
    bus = props.get("ID_BUS")
    if bus == "ata":
        return "sata"
    if bus:
        return bus
    path = str(Path(device.sys_path).resolve())
    if "/usb" in path:
        return "usb"
    if "/virtio" in path:
        return "virtio"
    return None


def _table_from_disk(node: str, sector: int) -> str | None:
    """gpt, dos or None, read from the disk's first sectors (no udev needed)."""
    try:
        with open(node, "rb") as f:
            head = f.read(sector * 2)
            if head[sector : sector + 8] == b"EFI PART":
                return "gpt"
            f.seek(0)
            if probe_fstype(f) is not None:
                return None
    except OSError:
        return None
    if len(head) < 512 or head[510:512] != b"\x55\xaa":
        return None
    entries = [head[446 + 16 * i : 462 + 16 * i] for i in range(4)]
    if any(e[4] != 0 for e in entries) and all(e[0] in (0, 0x80) for e in entries):
        return "dos"
    return None


def _probe_node(node: str | None) -> str | None:
    if not node:
        return None
    try:
        with open(node, "rb") as f:
            return probe_fstype(f)
    except OSError:
        return None


def _loop_backing(device: Any) -> str | None:
    return sysfs_text(Path(device.sys_path) / "loop" / "backing_file")


def _is_hidden(device: Any, size: int) -> bool:
    name: str = device.sys_name
    if name.startswith(_HIDDEN_PREFIXES):
        return True
    if name.startswith("loop") and (size == 0 or _loop_backing(device) is None):
        return True
    return bool(name.startswith("sr") and size == 0)


def _holders(device: Any) -> bool:
    holders = Path(device.sys_path) / "holders"
    try:
        return any(holders.iterdir())
    except OSError:
        return False


def _flags(device: Any, state: SystemState, read_only: bool) -> list[str]:
    num = _devnum(device)
    flags = []
    if num in state.boot:
        flags.append(FLAG_BOOT_MEDIUM)
    if num in state.mounts:
        flags.append(FLAG_MOUNTED)
    if num in state.swaps:
        flags.append(FLAG_SWAP)
    if _holders(device):
        flags.append(FLAG_IN_USE)
    if read_only:
        flags.append(FLAG_READ_ONLY)
    return flags


def _boot_loop(device: Any, state: SystemState) -> bool:
    """A loop device whose backing file lies on the running system's medium (live squashfs)."""
    backing = _loop_backing(device)
    if not backing:
        return False
    try:
        return os.stat(backing).st_dev in state.medium_fs_devs
    except OSError:
        return False


def _partition(
    device: Any, disk_path: str, state: SystemState, use_udev: bool, read_only_disk: bool
) -> Partition:
    props = dict(device.properties) if use_udev else {}
    node = device.device_node or f"/dev/{device.sys_name}"
    size = int(_attr(device, "size") or 0) * 512
    start = int(_attr(device, "start") or 0) * 512
    number = int(_attr(device, "partition") or props.get("ID_PART_ENTRY_NUMBER") or 0)
    fstype = props.get("ID_FS_TYPE") or _probe_node(node)
    read_only = read_only_disk or _attr(device, "ro") == "1"
    return Partition(
        path=node,
        name=device.sys_name,
        number=number,
        start=start,
        size=size,
        fstype=fstype,
        label=props.get("ID_FS_LABEL"),
        uuid=props.get("ID_FS_UUID"),
        partlabel=props.get("ID_PART_ENTRY_NAME"),
        mountpoints=tuple(state.mounts.get(_devnum(device), ())),
        flags=tuple(_flags(device, state, read_only)),
        disk=disk_path,
    )


def _disk(device: Any, state: SystemState, use_udev: bool) -> Disk | None:
    size = int(_attr(device, "size") or 0) * 512
    if _is_hidden(device, size):
        return None
    has_db = use_udev and _has_udev_data(device)
    props: dict[str, str] = dict(device.properties) if has_db else {}
    node = device.device_node or f"/dev/{device.sys_name}"
    sysp = Path(device.sys_path)
    sector = int(sysfs_text(sysp / "queue" / "logical_block_size") or 512)
    read_only = _attr(device, "ro") == "1"
    parts = [
        _partition(child, node, state, has_db, read_only)
        for child in device.children
        if child.device_type == "partition"
    ]
    parts.sort(key=lambda p: p.number)
    table = props.get("ID_PART_TABLE_TYPE") if has_db else _table_from_disk(node, sector)
    if table is None and parts:
        table = _table_from_disk(node, sector)
    flags = _flags(device, state, read_only)
    if device.sys_name.startswith("loop") and _boot_loop(device, state):
        flags.insert(0, FLAG_BOOT_MEDIUM)
    for p in parts:  # a disk carries the flags of its partitions
        flags.extend(f for f in p.flags if f not in flags)
    model = sysfs_text(sysp / "device" / "model") or props.get("ID_MODEL")
    serial = disk_serial(props, sysp)
    fstype = None
    if not parts:
        fstype = props.get("ID_FS_TYPE") if has_db else _probe_node(node)
    return Disk(
        path=node,
        name=device.sys_name,
        size=size,
        model=model,
        serial=serial,
        transport=_transport(device, props),
        removable=_attr(device, "removable") == "1",
        read_only=read_only,
        rotational=sysfs_text(sysp / "queue" / "rotational") == "1",
        logical_sector_size=sector,
        partition_table=table,
        flags=tuple(flags),
        partitions=tuple(parts),
        backing_file=_loop_backing(device),
        fstype=fstype,
        mountpoints=tuple(state.mounts.get(_devnum(device), ())),
        from_udev=has_db,
    )


def list_disks(*, use_udev_properties: bool = True) -> list[Disk]:
    """Every disk a technician may mean, with partitions, in kernel name order."""
    context = pyudev.Context()
    state = SystemState.read()
    disks = []
    for device in context.list_devices(subsystem="block", DEVTYPE="disk"):
        disk = _disk(device, state, use_udev_properties)
        if disk is not None:
            disks.append(disk)
    disks.sort(key=lambda d: (len(d.name), d.name))
    return disks


def disk_serial(props: Any, sysp: Path) -> str | None:
    """A disk's serial: udev's ID_SERIAL_SHORT (a SATA disk's, from ata_id, is only in
    udev's database), else sysfs's: ``device/serial`` (NVMe, SCSI) or ``serial`` (a
    virtio disk, whose udev rule sets only ID_SERIAL)."""
    serial = props.get("ID_SERIAL_SHORT")
    if serial:
        return str(serial)
    return sysfs_text(sysp / "device" / "serial") or sysfs_text(sysp / "serial")


def udev_serial(sys_name: str) -> str | None:
    """The serial of the block device ``sys_name`` (``sda``) as the disk list gives it
    (:func:`disk_serial`). None when neither udev nor sysfs knows one."""
    try:
        device = pyudev.Devices.from_name(pyudev.Context(), "block", sys_name)
    except (pyudev.DeviceNotFoundError, OSError, ValueError):
        return None
    return disk_serial(device.properties, Path(device.sys_path))


def udev_running() -> bool:
    """A udev daemon answers on its control socket (the socket file may be stale)."""

    if system.which("udevadm") is None:
        return False
    return system.run(["udevadm", "control", "--ping", "--timeout=2"], check=False).returncode == 0


def disk_events(cancel: Any, poll: float) -> Any:
    """(action, node, name) for disks added or removed, until ``cancel`` is set."""
    context = pyudev.Context()
    monitor = pyudev.Monitor.from_netlink(context)
    monitor.filter_by(subsystem="block", device_type="disk")
    monitor.start()
    while not cancel.is_set():
        device = monitor.poll(timeout=poll)
        if device is None:
            continue
        name = device.sys_name
        node = device.device_node or f"/dev/{name}"
        if name.startswith(_HIDDEN_PREFIXES):
            continue
        action = device.action
        if name.startswith("loop"):
            # loop devices exist empty; attaching or detaching a file changes them
            if action != "change":
                continue
            size = int(_attr(device, "size") or 0)
            yield ("added" if size > 0 else "removed"), node, name
        elif action == "add":
            yield "added", node, name
        elif action == "remove":
            yield "removed", node, name
