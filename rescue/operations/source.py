"""What is being imaged: a disk, a partition, or a regular file holding a raw disk."""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from rescue.blockio import device_size, sysfs_text
from rescue.devices.system_state import SystemState
from rescue.devices.udev import udev_serial
from rescue.errors import BadInputError, DeviceNotFoundError, RefusedError


@dataclass(frozen=True)
class Source:
    path: str
    """The device node or file as given, symlinks resolved."""
    name: str
    """Name used in the image (sda, nvme0n1, loop3, or a name made from a file's)."""
    is_file: bool
    is_partition: bool
    size: int
    model: str | None = None
    serial: str | None = None
    logical_sector_size: int = 512
    physical_sector_size: int = 512


def _sysfs_block(path: str) -> Path | None:
    st = os.stat(path)
    if not stat.S_ISBLK(st.st_mode):
        return None
    sys = Path(f"/sys/dev/block/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}")
    return sys.resolve() if sys.exists() else None


def file_disk_name(path: str) -> str:
    """A device-like name for a disk held in a file: letters, digits, '-' and '_' only."""
    stem = Path(path).name.split(".")[0]
    name = re.sub(r"[^A-Za-z0-9_-]", "-", stem).strip("-") or "disk"
    return name[:32]


def resolve_source(path: str) -> Source:
    """Identify ``path`` and everything the image records about it."""
    if not os.path.exists(path):
        raise DeviceNotFoundError(f"{path} does not exist.", hint="See `rescue list` for disks.")
    real = os.path.realpath(path)
    st = os.stat(real)
    if stat.S_ISREG(st.st_mode):
        if st.st_size == 0:
            raise BadInputError(f"{path} is an empty file, not a disk.")
        return Source(
            path=real,
            name=file_disk_name(real),
            is_file=True,
            is_partition=False,
            size=st.st_size,
        )
    if not stat.S_ISBLK(st.st_mode):
        raise BadInputError(f"{path} is neither a disk, a partition nor a file holding a disk.")
    sys = _sysfs_block(real)
    name = sys.name if sys else Path(real).name
    is_part = bool(sys and (sys / "partition").exists())
    disk_sys = sys.parent if (sys and is_part) else sys
    model = serial = None
    lss = pss = 512
    if disk_sys is not None:
        model = sysfs_text(disk_sys / "device" / "model")
        serial = (
            udev_serial(disk_sys.name)
            or sysfs_text(disk_sys / "device" / "serial")
            or sysfs_text(disk_sys / "serial")
        )  # udev first, as the disk list has it (a SATA disk's serial is not in sysfs)
        lss = int(sysfs_text(disk_sys / "queue" / "logical_block_size") or 512)
        pss = int(sysfs_text(disk_sys / "queue" / "physical_block_size") or 512)
    return Source(
        path=real,
        name=name,
        is_file=False,
        is_partition=is_part,
        size=device_size(real),
        model=model,
        serial=serial,
        logical_sector_size=lss,
        physical_sector_size=pss,
    )


def devnums_of_source(path: str) -> set[tuple[int, int]]:
    """(major, minor) of a disk or partition and, for a disk, of its partitions."""
    sys = _sysfs_block(path)
    if sys is None:
        return set()
    nums = set()
    for d in [sys, *(p for p in sys.iterdir() if (p / "partition").exists())]:
        text = sysfs_text(d / "dev")
        if text:
            major, minor = (int(x) for x in text.split(":"))
            nums.add((major, minor))
    return nums


def refuse_if_mounted_rw(src: Source) -> None:
    """An image of a filesystem that changes while it is read is not consistent: refuse."""
    if src.is_file:
        return

    state = SystemState.read()
    busy = devnums_of_source(src.path) & state.writable
    if busy:
        where = sorted({m for n in busy for m in state.mounts.get(n, [])})
        raise RefusedError(
            f"{src.path} is mounted read-write ({', '.join(where)}): files would change while "
            "they are imaged.",
            hint="Unmount it first, or remount it read-only (mount -o remount,ro MOUNTPOINT).",
        )


def _dev_of_path(path: Path) -> int:
    """st_dev of the nearest existing folder at or above ``path``."""
    p = path.absolute()
    while not p.exists():
        p = p.parent
    return os.stat(p).st_dev


def _holders_chain(sys_dir: Path) -> set[str]:
    """Names of ``sys_dir``'s device and every disk under it (dm/md slaves, partitions' disk)."""
    names = {sys_dir.name}
    if (sys_dir / "partition").exists():
        names.add(sys_dir.parent.name)
    slaves = sys_dir / "slaves"
    if slaves.is_dir():
        for s in slaves.iterdir():
            names |= _holders_chain(s.resolve())
    return names


def refuse_if_on_device(folder: Path, device: str, what: str) -> None:
    """Refuse when ``folder`` lies on a filesystem stored on ``device`` (or its disk)."""
    if not os.path.exists(device) or not stat.S_ISBLK(os.stat(device).st_mode):
        return
    dev = _dev_of_path(folder)
    sys = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    if not sys.exists():
        return  # a filesystem without a block device (tmpfs, network, FUSE)
    folder_devs = _holders_chain(sys.resolve())
    target_sys = _sysfs_block(device)
    if target_sys is None:
        return
    target_names = {target_sys.name}
    if not (target_sys / "partition").exists():
        target_names |= {p.name for p in target_sys.iterdir() if (p / "partition").exists()}
    if folder_devs & target_names:
        raise RefusedError(
            f"{folder} is stored on {device} itself ({what}).",
            hint="Put the image on another disk, e.g. an external USB drive.",
        )
