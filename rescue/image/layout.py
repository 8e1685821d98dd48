"""The Clonezilla image folder: partition tables, boot code and lists, saved and restored.

What Clonezilla writes for a disk ``sda`` (docs/FORMAT.md, "The image folder"):
``disk``, ``parts``, ``sda-pt.sf`` (sfdisk dump), ``sda-chs.sf``,
``sda-pt.parted(.compact)``, ``sda-mbr``, for GPT ``sda-gpt-1st``/``-2nd``/
``.gdisk``, for MBR ``sda-hidden-data-after-mbr``, ``dev-fs.list``,
``blkdev.list``, ``blkid.list``, ``swappt-sdaN.info``, ``clonezilla-img``,
``Info-img-id.txt``. Device names in the files are ``/dev/NAME`` as Clonezilla
writes them, whatever the source was (a file holding a disk gets a made-up name).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from rescue import __version__, kernel, system
from rescue.blockio import device_size, is_block_device, pwrite_all, write_durable
from rescue.errors import (
    ImageDamagedError,
    NotAnImageError,
    RefusedError,
    UnsupportedImageError,
)
from rescue.filesystems import registry
from rescue.filesystems.base import RAW_FSTYPE
from rescue.image import names
from rescue.image.folder import has_member, plain_name, read_member, read_text_member
from rescue.image.manifest import StoredAs
from rescue.image.sealing import folder_sealer, write_sealed_member
from rescue.text import printable
from rescue.units import human_size

HIDDEN_DATA_MAX = 1 << 20
TABLE_COPY = 1 << 20
LOG_SIGNATURE = "Image saved by rescue"
"""How ``clonezilla-img`` starts in our images (so a lost rescue.json is noticed)."""
"""The MBR gap saved (GRUB's core image lives there): up to the first partition, at most 1 MiB."""


@dataclass(frozen=True)
class PartitionEntry:
    name: str
    number: int
    start: int
    """Bytes."""
    size: int
    type: str
    uuid: str | None = None
    partlabel: str | None = None
    fstype: str | None = None
    fs_uuid: str | None = None
    fs_label: str | None = None


@dataclass(frozen=True)
class DiskLayout:
    name: str
    size: int
    sector_size: int
    table: str | None
    disk_guid: str | None
    partitions: tuple[PartitionEntry, ...]


@dataclass(frozen=True)
class StreamRef:
    part: str
    fstype: str
    kind: str
    """:attr:`StoredAs.PARTCLONE` or :attr:`StoredAs.DD`."""
    compression: str
    """zst, gz, uncomp, ..."""
    base: Path
    """The stream's file name without a split suffix."""


@dataclass(frozen=True)
class ImageLayout:
    folder: Path
    disk: str | None
    """None for a partition image (Clonezilla's "saveparts")."""
    parts: tuple[str, ...]
    table: DiskLayout | None
    streams: dict[str, StreamRef]
    swap: dict[str, dict[str, str]]
    """Swap partitions: UUID and LABEL from swappt-*.info."""


def part_name(disk: str, number: int) -> str:
    """Linux's rule: sda → sda1, nvme0n1/loop0/mmcblk0 → p1."""
    return f"{disk}p{number}" if disk[-1:].isdigit() else f"{disk}{number}"


def _whole_disk_filesystem(path: str, size: int) -> bool:
    """A filesystem written straight onto the disk (a "superfloppy" USB stick)?

    A FAT or NTFS boot sector ends in 55AA like an MBR, and sfdisk reads it as
    one; blkid tells a filesystem from a partition table.
    """
    return "TYPE" in kernel.blkid(path, offset=0, size=size)


def read_source_layout(path: str, name: str) -> DiskLayout:
    """The partition table of a disk or disk file, with each partition's filesystem."""

    size = device_size(path)
    res = system.run(["sfdisk", "-J", path], check=False)
    if res.returncode != 0 or not res.stdout.strip() or _whole_disk_filesystem(path, size):
        return DiskLayout(name, size, 512, None, None, ())
    pt = json.loads(res.stdout)["partitiontable"]
    sector = int(pt.get("sectorsize", 512))
    parts: list[PartitionEntry] = []
    for p in pt.get("partitions", []):
        m = re.search(r"(\d+)$", p["node"])
        number = int(m.group(1)) if m else len(parts) + 1
        start, psize = int(p["start"]) * sector, int(p["size"]) * sector
        fs = kernel.blkid(path, offset=start, size=psize)
        parts.append(
            PartitionEntry(
                name=part_name(name, number),
                number=number,
                start=start,
                size=psize,
                type=str(p.get("type", "")),
                uuid=p.get("uuid"),
                partlabel=p.get("name"),
                fstype=fs.get("TYPE"),
                fs_uuid=fs.get("UUID"),
                fs_label=fs.get("LABEL"),
            )
        )
    return DiskLayout(name, size, sector, pt["label"], pt.get("id"), tuple(parts))


def _write(folder: Path, name: str, data: bytes | str) -> None:
    """Write a layout file (sealed, in an encrypted image's folder)."""
    raw = data.encode() if isinstance(data, str) else data
    sealer = folder_sealer(folder)
    if sealer is not None:
        write_sealed_member(folder, name, raw, sealer)
        return
    write_durable(folder / name, raw)


def write_lists(folder: Path, disk: str | None, parts: list[str]) -> None:
    """``disk`` (a whole-disk image only) and ``parts``: the files by which Clonezilla knows
    an image folder and what it holds."""
    if disk is not None:
        _write(folder, names.DISK_FILE, disk + "\n")
    _write(folder, names.PARTS_FILE, " ".join(parts) + "\n")


def _read_at(path: str, offset: int, size: int) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


def _sfdisk_dump(path: str, name: str) -> str:
    """``sfdisk -d`` with the device names Clonezilla would write (/dev/sda, /dev/sda1)."""
    text = system.output(["sfdisk", "-d", path])
    lines = []
    for line in text.splitlines():
        m = re.match(r"^(\S+?)(\d+) : (.*)$", line)
        if line.startswith("device:"):
            lines.append(f"device: /dev/{name}")
        elif m:
            lines.append(f"/dev/{part_name(name, int(m.group(2)))} : {m.group(3)}")
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


def _common_files(
    folder: Path, entries: list[tuple[str, str | None, int, dict[str, str | None]]], command: str
) -> None:
    """dev-fs.list, blkid.list, blkdev.list, clonezilla-img, Info-img-id.txt."""
    devfs = ["# <Device name>   <File system>   <Size>"]
    blkid = []
    blkdev = ["KNAME NAME SIZE TYPE FSTYPE MOUNTPOINT MODEL"]
    for part, fstype, size, ids in entries:
        devfs.append(f"/dev/{part} {fstype or ''} {human_size(size).replace(' ', '')}")
        attrs = " ".join(f'{k}="{v}"' for k, v in ids.items() if v)
        blkid.append(f"/dev/{part}: {attrs}")
        blkdev.append(f"{part} {part} {human_size(size).replace(' ', '')} part {fstype or ''}")
    _write(folder, names.DEV_FS_LIST, "\n".join(devfs) + "\n")
    _write(folder, names.BLKID_LIST, "\n".join(blkid) + "\n")
    _write(folder, names.BLKDEV_LIST, "\n".join(blkdev) + "\n")
    log = f"{LOG_SIGNATURE} {__version__} on {time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n{command}\n"
    _write(folder, names.CLONEZILLA_LOG, log)
    _write(folder, names.IMG_ID_FILE, f"IMG_ID={hashlib.sha512(log.encode()).hexdigest()}\n")
    _write(folder, names.SAVED_BY_CMD_FILE, command + "\n")


def _recreated(fstype: str | None) -> bool:
    """Only the identity of this filesystem is kept (swap): Clonezilla's info file holds it."""
    fs = registry.get(fstype)
    return fs is not None and fs.recreated


def _swap_info(folder: Path, part: str, uuid: str | None, label: str | None) -> None:
    _write(folder, names.swap_info_file(part), f'UUID="{uuid or ""}"\nLABEL="{label or ""}"\n')


@contextlib.contextmanager
def _table_copy(source_path: str, layout: DiskLayout) -> Iterator[str]:
    """A sparse file of the source's size holding only its partition-table sectors.

    Covers the first and last MiB (MBR, GPT and its backup) and the MiB before
    each partition (where an extended partition's EBRs live).
    """
    regions = [(0, min(layout.size, TABLE_COPY)), (max(0, layout.size - TABLE_COPY), layout.size)]
    for p in layout.partitions:
        regions.append((max(0, p.start - TABLE_COPY), p.start))
        regions.append((p.start, min(p.start + 512, layout.size)))
    with tempfile.TemporaryDirectory(prefix="rescue-table-") as tmp:
        copy = Path(tmp) / "disk"
        src = os.open(source_path, os.O_RDONLY | os.O_CLOEXEC)
        dst = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(dst, layout.size)
            for lo, hi in regions:
                if hi > lo:
                    pwrite_all(dst, os.pread(src, hi - lo, lo), lo, str(copy))
        finally:
            os.close(src)
            os.close(dst)
        yield str(copy)


def save_layout(
    folder: Path,
    layout: DiskLayout,
    source_path: str,
    *,
    parts: list[str],
    fstypes: dict[str, str],
) -> None:
    """Write every layout file of a whole-disk image (streams are written by the copier)."""
    name = layout.name
    write_lists(folder, name, parts)
    _write(folder, names.sfdisk_dump(name), _sfdisk_dump(source_path, name))
    cyl = max(1, layout.size // (255 * 63 * 512))
    _write(folder, names.chs_file(name), f"cylinders={cyl}\nheads=255\nsectors=63\n")
    sector = layout.sector_size
    with _table_copy(source_path, layout) as copy:
        # parted and sgdisk open their disk read-write: give them a copy, never the source
        for compact, unit in ((False, "s"), (True, "compact")):
            res = system.run(["parted", "-s", copy, "unit", unit, "print"], check=False)
            _write(
                folder,
                names.parted_file(name, compact=compact),
                res.stdout.replace(copy.encode(), b"/dev/" + name.encode()),
            )
        if layout.table == "gpt":
            backup = names.gdisk_backup_file(name)
            # in the folder of the table's copy: a private temporary folder
            system.run(["sgdisk", "-b", str(Path(copy).parent / backup), copy])
            _write(folder, backup, (Path(copy).parent / backup).read_bytes())
    _write(folder, names.mbr_file(name), _read_at(source_path, 0, 512))
    if layout.table == "gpt":
        _write(folder, names.gpt_primary_file(name), _read_at(source_path, 0, 34 * sector))
        _write(
            folder,
            names.gpt_backup_file(name),
            _read_at(source_path, layout.size - 33 * sector, 33 * sector),
        )
    else:
        first = min((p.start for p in layout.partitions), default=512)
        gap = min(max(first - 512, 0), HIDDEN_DATA_MAX)
        _write(folder, names.hidden_data_file(name), _read_at(source_path, 512, gap))
    entries: list[tuple[str, str | None, int, dict[str, str | None]]] = []
    for p in layout.partitions:
        if p.name not in parts:
            continue
        fstype = fstypes.get(p.name, p.fstype)
        ids = {"LABEL": p.fs_label, "UUID": p.fs_uuid, "TYPE": p.fstype, "PARTUUID": p.uuid}
        entries.append((p.name, fstype, p.size, ids))
        if _recreated(p.fstype):
            _swap_info(folder, p.name, p.fs_uuid, p.fs_label)
    _common_files(folder, entries, f"rescue capture {shlex.quote(source_path)}")


def save_partition_only(
    folder: Path,
    part: str,
    fstype: str,
    source_path: str,
    *,
    size: int,
    uuid: str | None = None,
    label: str | None = None,
) -> None:
    """A single-partition image, as Clonezilla's "saveparts" writes it (no ``disk`` file)."""
    write_lists(folder, None, [part])
    if _recreated(fstype):
        _swap_info(folder, part, uuid, label)
    ids = {"LABEL": label, "UUID": uuid, "TYPE": fstype}
    _common_files(folder, [(part, fstype, size, ids)], f"rescue capture {shlex.quote(source_path)}")


# -- reading an image folder ---------------------------------------------------------

_STREAM_RE = re.compile(
    r"^(?P<part>.+?)\.(?P<fs>[A-Za-z0-9_+]+)"
    + re.escape(names.STREAM_SUFFIX)
    + r"\.(?P<comp>[a-z0-9]+)(?P<split>\.[a-z]{2})?$"
)
_SF_PART_RE = re.compile(r"^/dev/(?P<name>\S+)\s*:\s*(?P<rest>.*)$")


STREAM_COMPRESSIONS = ("zst", "gz", "uncomp")
"""What a stream file may be compressed with, for this rescue to read it."""
MAX_TABLE_ENTRIES = 1024


def _parse_sf(text: str, disk: str) -> DiskLayout:
    header: dict[str, str] = {}
    parts = []
    where = names.sfdisk_dump(disk)
    for line in text.splitlines():
        m = _SF_PART_RE.match(line)
        if m:
            fields = {}
            for item in m.group("rest").split(","):
                key, _, value = item.strip().partition("=")
                fields[key.strip()] = value.strip().strip('"')
            parts.append((m.group("name"), fields))
        elif ":" in line:
            key, _, value = line.partition(":")
            header[key.strip()] = value.strip()
    sector_text = header.get("sector-size", "512")
    if sector_text not in ("512", "1024", "2048", "4096"):
        raise ImageDamagedError(f"{where} gives a sector size of {printable(sector_text)!r}.")
    sector = int(sector_text)
    if len(parts) > MAX_TABLE_ENTRIES:
        raise ImageDamagedError(f"{where} lists {len(parts)} partitions; no table holds as many.")
    entries: list[PartitionEntry] = []
    for name, fields in parts:
        num = re.search(r"(\d+)$", name)
        start_text, size_text = fields.get("start", ""), fields.get("size", "")
        if not (start_text.isdigit() and size_text.isdigit()) or len(start_text + size_text) > 36:
            raise ImageDamagedError(f"{where} has a malformed line for {printable(name)}.")
        start, size = int(start_text) * sector, int(size_text) * sector
        if num is not None and len(num.group(1)) > 5:
            raise ImageDamagedError(f"{where} numbers a partition {printable(name)}.")
        entries.append(
            PartitionEntry(
                name=plain_name(name.replace("/", "-"), f"a partition in {where}"),
                number=int(num.group(1)) if num else len(entries) + 1,
                start=start,
                size=size,
                type=fields.get("type", fields.get("Id", "")),
                uuid=fields.get("uuid"),
                partlabel=fields.get("name"),
            )
        )
    end = max((e.start + e.size for e in entries), default=0)
    return DiskLayout(
        disk, end, sector, header.get("label"), header.get("label-id"), tuple(entries)
    )


def _parse_info(folder: Path, name: str) -> dict[str, str]:
    info = {}
    for line in read_text_member(folder, name).splitlines():
        key, _, value = line.partition("=")
        if key.strip():
            info[key.strip()] = value.strip().strip('"')
    return info


def read_image_layout(folder: Path) -> ImageLayout:
    """Parse an image folder written by rescue or by Clonezilla."""
    parts_file = folder / names.PARTS_FILE
    if not has_member(folder, names.PARTS_FILE):
        raise NotAnImageError(
            f"{folder} is not an image folder (it has no 'parts' file).",
            hint="Choose the folder that holds the image's files (disk, parts, *-ptcl-img.*).",
        )
    parts = tuple(
        plain_name(p, f"a partition in {names.PARTS_FILE}")
        for p in read_text_member(folder, names.PARTS_FILE).split()
    )
    if not parts:
        raise ImageDamagedError(f"{parts_file} lists no partitions.")
    if len(parts) > MAX_TABLE_ENTRIES:
        raise ImageDamagedError(f"{parts_file} lists {len(parts)} partitions.")
    disk = None
    table = None
    if has_member(folder, names.DISK_FILE):
        disks = read_text_member(folder, names.DISK_FILE).split()
        if len(disks) != 1:
            raise NotAnImageError(
                f"{folder} holds {len(disks)} disks; rescue restores one at a time."
            )
        disk = plain_name(disks[0], f"the disk in {names.DISK_FILE}")
        sf = folder / names.sfdisk_dump(disk)
        if not has_member(folder, sf.name):
            raise ImageDamagedError(f"{sf} is missing: the partition table cannot be restored.")
        table = _parse_sf(read_text_member(folder, sf.name), disk)
    streams: dict[str, StreamRef] = {}
    for path in sorted(folder.iterdir()):
        m = _STREAM_RE.match(path.name)
        if not m or m.group("part") not in parts:
            continue
        split = m.group("split")
        base = folder / (path.name[: m.start("split")] if split else path.name)
        fs = m.group("fs")
        if m.group("comp") not in STREAM_COMPRESSIONS:
            raise UnsupportedImageError(
                f"{printable(path.name)} is compressed with {printable(m.group('comp'))!r}; "
                f"this rescue reads {', '.join(STREAM_COMPRESSIONS)} streams.",
                hint="Decompress it and compress it again with zstd or gzip, same file name "
                "with the new suffix.",
            )
        streams.setdefault(
            m.group("part"),
            StreamRef(
                part=m.group("part"),
                fstype=fs,
                kind=StoredAs.DD if fs == RAW_FSTYPE else StoredAs.PARTCLONE,
                compression=m.group("comp"),
                base=base,
            ),
        )
    swap = {
        p: _parse_info(folder, names.swap_info_file(p))
        for p in parts
        if has_member(folder, names.swap_info_file(p))
    }
    return ImageLayout(folder, disk, parts, table, streams, swap)


# -- restoring the partition table ---------------------------------------------------


def restore_partition_table(
    folder: Path,
    disk: str,
    target: str,
    target_size: int,
    *,
    edit: Callable[[str, int], str] | None = None,
) -> None:
    """Write the saved table, boot code and MBR gap to ``target`` (disk or disk file).

    ``edit(script, sector_size)`` may change the sfdisk script first (a partition
    that grows). The kernel learns the new partitions through BLKPG; call
    :func:`reread_partitions` once all writing is done.
    """
    sf_text = read_text_member(folder, names.sfdisk_dump(disk))
    if edit is not None:
        sf_text = edit(sf_text, _parse_sf(sf_text, disk).sector_size)
    table = _parse_sf(sf_text, disk)
    need = table.size + (33 * table.sector_size if table.table == "gpt" else 0)
    if target_size < need:
        raise RefusedError(
            f"{target} has {target_size} bytes ({human_size(target_size)}); the partitions "
            f"need {need} bytes ({human_size(need)})."
        )
    # everything is read before the first write
    mbr = read_member(folder, names.mbr_file(disk), 512, "the boot code")
    gap = b""
    if table.table != "gpt" and has_member(folder, names.hidden_data_file(disk)):
        gap = read_member(folder, names.hidden_data_file(disk), 1 << 20, "the boot area")
    # let sfdisk place the GPT backup at the target's real end
    lines = [ln for ln in sf_text.splitlines() if not ln.startswith(("last-lba:", "device:"))]
    script = "\n".join(lines) + "\n"
    system.run(
        ["sfdisk", "--no-reread", "--no-tell-kernel", "-q", "-f", "--wipe", "always", target],
        input=script.encode(),
    )
    fd = os.open(target, os.O_WRONLY | os.O_CLOEXEC)
    try:
        pwrite_all(fd, mbr[:446], 0, target)  # boot code only: the table is sfdisk's
        if gap:
            first = min((p.start for p in table.partitions), default=512)
            pwrite_all(fd, gap[: max(0, first - 512)], 512, target)
        os.fsync(fd)
    finally:
        os.close(fd)
    if is_block_device(target):
        # BLKPG only: udev may be held off by the caller's lock, so no settle here
        system.run(["partx", "-u", target], check=False)


def reread_partitions(target: str) -> None:
    """Make the kernel and udev see the table on ``target``.

    The kernel's own re-read needs its partition parsers; ``partx -u`` (BLKPG)
    then adds, resizes or removes whatever the kernel did not, so partitions are
    right even on kernels built without MBR/GPT support.
    """
    kernel.settle()
    system.run(["blockdev", "--rereadpt", target], check=False)
    system.run(["partx", "-u", target], check=False)
    kernel.settle()


def partition_device(target: str, number: int, wait: float = 10.0) -> str | None:
    """The node of partition ``number`` of the disk ``target``; None for a disk file."""
    if not is_block_device(target):
        return None
    real = os.path.realpath(target)
    name = Path(real).name
    node = f"/dev/{part_name(name, number)}"
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if is_block_device(node):
            return node
        time.sleep(0.1)
    sys_dev = Path(f"/sys/class/block/{part_name(name, number)}/dev")
    if sys_dev.exists():
        major, minor = (int(x) for x in sys_dev.read_text().split(":"))
        os.mknod(node, 0o600 | stat.S_IFBLK, os.makedev(major, minor))
        return node
    raise ImageDamagedError(
        f"Partition {number} of {target} did not appear after restoring the table."
    )
