"""Restore onto a smaller target: partitions and filesystems shrink so the used data fits.

A filesystem can only be shrunk whole, and the image is read-only and
compressed. So each partition that must shrink is served as a copy-on-write
device (:func:`rescue.imagedev.served.partition_view`: the image underneath,
writes in a sparse scratch file), its own tool shrinks it there (resize2fs
after e2fsck, ntfsresize, ``btrfs filesystem resize`` through a private
mount), and the used blocks of the shrunk filesystem are copied to the target
partition. Nothing is written to the target before every minimum is known and
the plan fits.

XFS cannot shrink. A smaller XFS partition gets a fresh XFS with the same
UUID, label and on-disk features, and the files are copied into it with
``cp`` keeping owners, modes, times (to the nanosecond), extended attributes,
ACLs and hard links; XFS-only inode flags (chattr) and project quota ids are
not carried over.

The minimum of each filesystem comes from its own tool, run on a read-only
view of the image: ``resize2fs -P``, ``ntfsresize --info``, ``btrfs
inspect-internal min-dev-size``; for XFS the used space plus room for a new
log and metadata (and never below the 300 MiB mkfs.xfs needs).
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from rescue import kernel
from rescue.blockio import is_block_device, open_for_writing
from rescue.copier import Extent, copy_ranges
from rescue.errors import DeviceError, ExternalToolError, RefusedError
from rescue.filesystems.detect import allocation_for
from rescue.image.view import ImagePart, ImageView
from rescue.imagedev.index import open_reader, scratch_dir
from rescue.imagedev.overlay import Overlay
from rescue.imagedev.served import partition_view
from rescue.kernel import private_mount
from rescue.operations.grow import partition_device
from rescue.operations.layout_plan import (
    Fit,
    MiB,
    Placement,
    Slot,
    TooSmallError,
    align_up,
    plan_fit,
)
from rescue.progress import ProgressReporter, check_cancel
from rescue.system import output, run
from rescue.units import human_size

if TYPE_CHECKING:
    from rescue.imagedev.served import PartitionView

XFS_SMALLEST = 301 * MiB
"""mkfs.xfs refuses filesystems of 300 MiB or less."""
SHRINKABLE = ("ext2", "ext3", "ext4", "ntfs", "btrfs", "xfs")
_TAIL_MAX = MiB
_GAP = 256 << 10
"""Free space shorter than this between used runs is copied rather than skipped."""


# --- how small each filesystem can be --------------------------------------------------


def _ext_minimum(dev: str) -> int:
    text = output(["resize2fs", "-P", dev])
    m = re.search(r"minimum size of the filesystem:\s*(\d+)", text)
    if m is None:
        raise ExternalToolError(f"resize2fs -P gave no minimum size for {dev}: {text.strip()}")
    b = re.search(r"^Block size:\s*(\d+)", output(["dumpe2fs", "-h", dev]), re.M)
    if b is None:
        raise ExternalToolError(f"dumpe2fs gave no block size for {dev}.")
    return int(m.group(1)) * int(b.group(1))


def _ntfs_minimum(dev: str) -> int:
    res = run(["ntfsresize", "--info", "--force", "--no-action", dev], check=False)
    text = res.stdout.decode(errors="replace")
    m = re.search(r"You might resize at (\d+) bytes", text)
    if m is None:
        raise ExternalToolError(
            f"ntfsresize cannot tell how small {dev} can be: "
            f"{(text + res.stderr.decode(errors='replace')).strip().splitlines()[-1:]}"
        )
    return int(m.group(1)) + MiB  # room for the backup boot sector and rounding


def _btrfs_minimum(dev: str) -> int:
    with private_mount(dev, "btrfs", "ro,rescue=nologreplay") as mnt:
        text = output(["btrfs", "inspect-internal", "min-dev-size", str(mnt)])
    m = re.match(r"\s*(\d+)", text)
    if m is None:
        raise ExternalToolError(f"btrfs gave no minimum size for {dev}: {text.strip()}")
    return int(m.group(1))


def _xfs_minimum(dev: str) -> int:
    with private_mount(dev, "xfs", "ro,norecovery,nouuid") as mnt:
        st = os.statvfs(mnt)
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    # a new log (up to 64 MiB), allocation group headers and free-space slack
    return max(XFS_SMALLEST, math.ceil(used * 1.15) + 96 * MiB)


_MINIMUM = {
    "ext2": _ext_minimum,
    "ext3": _ext_minimum,
    "ext4": _ext_minimum,
    "ntfs": _ntfs_minimum,
    "btrfs": _btrfs_minimum,
    "xfs": _xfs_minimum,
}


def can_shrink(part: ImagePart) -> bool:
    return part.stored_as == "partclone" and part.fstype in SHRINKABLE


def minimum_size(
    folder: Path, part: ImagePart, progress: ProgressReporter, cancel: threading.Event | None
) -> int:
    """Smallest partition (MiB aligned) that holds ``part``'s filesystem; its size if fixed."""
    if not can_shrink(part):
        return part.size

    assert part.fstype is not None
    with partition_view(folder, part, progress=progress, cancel=cancel) as view:
        least = _MINIMUM[part.fstype](view.loop)
    return min(part.size, align_up(least)) if part.size else align_up(least)


def fit_image(
    image: ImageView,
    target: str,
    target_size: int,
    progress: ProgressReporter,
    cancel: threading.Event | None,
) -> Fit:
    """How ``image`` fits a smaller target; refuses (before any write) when it cannot."""
    parts = list(image.parts)
    if image.kind == "disk":
        if image.table not in ("gpt", "dos") or any(p.number is None for p in parts):
            raise RefusedError(
                f"{target} is smaller than the image's disk, and its layout cannot be "
                f"shrunk (no partition table): the target needs {image.required_size} bytes."
            )
        if image.table == "dos" and any((p.number or 0) > 4 for p in parts):
            raise RefusedError(
                "The image's MBR table has logical partitions; shrinking it is not supported: "
                f"the target needs at least {image.required_size} bytes "
                f"({human_size(image.required_size)}).",
                hint="Restore onto a disk at least as large as the source.",
            )
    progress.phase("Working out how small each filesystem can be", None)
    minimums = {}
    for part in parts:
        check_cancel(cancel)
        if can_shrink(part):
            minimums[part.name] = minimum_size(image.folder, part, progress, cancel)
    if image.kind != "disk":
        part = parts[0]
        least = minimums.get(part.name, part.size)
        if not can_shrink(part) or least > target_size:
            what = part.fstype or "raw"
            raise TooSmallError(
                f"{target} is too small: it has {target_size} bytes "
                f"({human_size(target_size)}); the {what} filesystem needs at least "
                f"{least} bytes ({human_size(least)}).",
                hint="Choose a larger target partition.",
            )
        fit = Fit((Placement(part.name, 0, 0, target_size, 0, part.size, part.fstype, least),))
    else:
        fit = plan_fit(
            [Slot(p.name, p.number, p.start, p.size, p.fstype) for p in parts],
            minimums,
            image.table,
            target_size,
        )
    _check_scratch_room(image, fit)
    return fit


def _check_scratch_room(image: ImageView, fit: Fit) -> None:
    """Refuse now, not halfway, when the scratch space for a shrink has no room."""

    for part in image.parts:
        place = fit.get(part.name)
        if place is None or not place.shrinks or part.fstype == "xfs" or part.stream is None:
            continue
        scratch_dir(part.stream, part.used_bytes)  # one at a time: the largest must fit


# --- shrinking and copying ---------------------------------------------------------------


def _folder_times(dev: str) -> dict[str, tuple[int, int, int]]:
    """Every folder of the ext filesystem on ``dev``: path -> (inode, mtime ns, ctime ns)."""
    found: dict[str, tuple[int, int, int]] = {}
    with private_mount(dev, "ext4", "ro,noload") as mnt:
        st = os.stat(mnt)
        found[""] = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
        stack = [""]
        while stack:
            rel = stack.pop()
            with os.scandir(os.path.join(mnt, rel)) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)
                        path = os.path.join(rel, entry.name)
                        found[path] = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
                        stack.append(path)
    return found


def _ext_time(field: str, inode: int, ns: int) -> list[str]:
    """debugfs commands setting ``field`` (mtime, ctime) of ``inode`` to ``ns`` since the epoch."""
    seconds, nanos = divmod(ns, 10**9)
    low = seconds & 0xFFFFFFFF
    signed = low - (1 << 32) if low >= 1 << 31 else low
    epoch = ((seconds - signed) >> 32) & 3  # ext4 keeps times past 2038 in two extra bits
    return [
        f"set_inode_field <{inode}> {field} @{seconds}",
        f"set_inode_field <{inode}> {field}_extra {nanos << 2 | epoch}",
    ]


def _put_back_folder_times(dev: str, before: dict[str, tuple[int, int, int]]) -> int:
    """Give back the folder times resize2fs changed; returns how many folders it touched.

    resize2fs renumbers the inodes it moves out of the removed block groups and
    stamps the folders holding them with the current time (on purpose, so that
    incremental backups see them). A restore must leave them as they were.
    """
    commands = []
    for path, (inode, mtime, ctime) in _folder_times(dev).items():
        old = before.get(path)
        if old is not None and (old[1], old[2]) != (mtime, ctime):
            commands += _ext_time("mtime", inode, old[1]) + _ext_time("ctime", inode, old[2])
    if commands:
        with tempfile.NamedTemporaryFile("w", prefix="rescue-debugfs-", suffix=".txt") as f:
            f.write("\n".join(commands) + "\n")
            f.flush()
            run(["debugfs", "-w", "-f", f.name, dev])
    return len(commands) // 4


def shrink_filesystem(dev: str, fstype: str, size: int) -> None:
    """Shrink the filesystem on ``dev`` (a writable view) to at most ``size`` bytes."""
    if fstype in ("ext2", "ext3", "ext4"):
        fsck = run(["e2fsck", "-f", "-y", dev], check=False)
        if fsck.returncode > 1:
            raise ExternalToolError(
                f"e2fsck found problems in the image's filesystem that it could not mend "
                f"(exit {fsck.returncode}); it cannot be shrunk.",
                hint="Restore onto a disk at least as large as the source instead.",
            )
        before = _folder_times(dev)
        run(["resize2fs", dev, f"{size // 512}s"])
        _put_back_folder_times(dev, before)
    elif fstype == "ntfs":
        run(["ntfsresize", "--force", "--size", str(size), dev], input=b"y\n")
    elif fstype == "btrfs":
        with private_mount(dev, "btrfs", "rw") as mnt:
            run(["btrfs", "filesystem", "resize", str(size), str(mnt)])
    else:
        raise RefusedError(f"A {fstype} filesystem cannot be shrunk.")


def copy_used(
    dev: str,
    fstype: str,
    *,
    source: Overlay | None = None,
    dst_fd: int,
    dst_path: str,
    dst_base: int,
    size: int,
    progress: ProgressReporter,
    cancel: threading.Event | None,
) -> int:
    """Copy the used blocks of the (shrunk) filesystem on ``dev`` into ``size`` bytes at the target.

    Also copies the few bytes after the last block (NTFS keeps its backup boot
    sector there). The filesystem's maps are read from ``dev``, the data from
    ``source`` when given (the same bytes, read faster). Returns the bytes copied.
    """
    with open(dev, "rb", buffering=0) as src:
        alloc = allocation_for(src, os.fstat(src.fileno()).st_size or size, fstype)
        fs_end = alloc.total_blocks * alloc.block_size
        if fs_end > size:
            raise ExternalToolError(
                f"The shrunk {fstype} filesystem still ends at byte {fs_end}, past the "
                f"{size} bytes of its new partition; nothing of it was copied."
            )
        ranges: list[tuple[int, int]] = []
        for first, count in alloc.runs():
            offset, length = first * alloc.block_size, count * alloc.block_size
            if ranges and offset - sum(ranges[-1]) <= _GAP:
                # a small hole between used runs is copied along: fewer, larger reads
                ranges[-1] = (ranges[-1][0], offset + length - ranges[-1][0])
            else:
                ranges.append((offset, length))
        tail = min(size, fs_end + _TAIL_MAX) - fs_end
        if tail > 0:
            ranges.append((fs_end, tail))
        fd = src.fileno()
        read = source.pread if source is not None else (lambda off, n: os.pread(fd, n, off))
        copied = copy_ranges(
            read,
            ranges,
            Extent(dst_fd, dst_path, dst_base, size),
            source=dev,
            progress=progress,
            cancel=cancel,
        )
    try:
        os.fsync(dst_fd)
    except OSError as exc:
        raise DeviceError(f"Could not flush {dst_path}: {exc.strerror or exc}.") from exc
    return copied


def check_filesystem(dev: str, fstype: str) -> None:
    """A read-only check of a restored filesystem; raise when it is not clean."""
    if fstype in ("ext2", "ext3", "ext4"):
        argv = ["e2fsck", "-f", "-n", dev]
    elif fstype == "ntfs":
        argv = ["ntfsfix", "--no-action", dev]
    elif fstype == "btrfs":
        argv = ["btrfs", "check", "--readonly", dev]
    elif fstype == "xfs":
        argv = ["xfs_repair", "-n", dev]
    else:
        return
    res = run(argv, check=False)
    if res.returncode != 0:
        detail = (res.stdout + res.stderr).decode(errors="replace").strip().splitlines()[-3:]
        raise ExternalToolError(
            f"The shrunk {fstype} filesystem on {dev} does not check clean "
            f"({argv[0]} exit {res.returncode}): {' / '.join(detail)}"
        )


# --- XFS: a fresh filesystem and a file copy ------------------------------------------------

_XFS_FEATURES = {
    "crc": "-m",
    "finobt": "-m",
    "rmapbt": "-m",
    "reflink": "-m",
    "bigtime": "-m",
    "inobtcount": "-m",
    "sparse": "-i",
    "ftype": "-n",
}


def xfs_format_options(info: str) -> list[str]:
    """mkfs.xfs options that give a new XFS the on-disk features of the one ``info`` describes.

    ``info`` is what ``xfs_db -c info`` (the xfs_info layout) prints. A restored
    system's kernel must understand the new filesystem, so it gets the same
    features, not this system's defaults.
    """
    found = dict(re.findall(r"\b(\w+)=(\d+)", info))
    groups: dict[str, list[str]] = {}
    crc = found.get("crc", "1")
    for name, flag in _XFS_FEATURES.items():
        if name not in found:
            continue
        if crc == "0" and name not in ("crc", "ftype"):
            continue  # v4 filesystems take none of the v5 features
        groups.setdefault(flag, []).append(f"{name}={found[name]}")
    args = [a for flag, values in groups.items() for a in (flag, ",".join(values))]
    m = re.search(r"^data\s*=\s*bsize=(\d+)", info, re.M)
    if m:
        args += ["-b", f"size={m.group(1)}"]
    return args


def copy_xfs(
    src_dev: str, dst_dev: str, progress: ProgressReporter, cancel: threading.Event | None
) -> None:
    """A new XFS on ``dst_dev`` like the one on ``src_dev`` (UUID, label, features); copy files."""
    check_cancel(cancel)
    options = xfs_format_options(output(["xfs_db", "-r", "-c", "info", src_dev]))
    ident = kernel.blkid(src_dev)
    if ident.get("UUID"):
        if "-m" in options:
            options[options.index("-m") + 1] += f",uuid={ident['UUID']}"
        else:
            options += ["-m", f"uuid={ident['UUID']}"]
    if ident.get("LABEL"):
        options += ["-L", ident["LABEL"]]
    run(["mkfs.xfs", "-f", "-q", *options, dst_dev])
    progress.note(
        "XFS cannot shrink: a new XFS was made with the same UUID, label and features; "
        "copying the files into it."
    )
    with (
        private_mount(src_dev, "xfs", "ro,norecovery,nouuid") as src,
        private_mount(dst_dev, "xfs", "rw,nouuid") as dst,
    ):
        res = run(
            [
                "cp",
                "--no-dereference",
                "--recursive",
                "--preserve=mode,ownership,timestamps,links,xattr",
                "--sparse=always",
                "--no-target-directory",
                f"{src}/.",
                str(dst),
            ],
            check=False,
        )
        if res.returncode != 0:
            detail = res.stderr.decode(errors="replace").strip().splitlines()[-3:]
            raise ExternalToolError(
                f"Copying the files of the XFS partition failed: {' / '.join(detail)}"
            )
        run(["sync", "-f", str(dst)], check=False)


def restore_shrunk(
    folder: Path,
    part: ImagePart,
    size: int,
    where: tuple[str, int],
    *,
    progress: ProgressReporter,
    cancel: threading.Event | None,
) -> None:
    """Put ``part`` into ``size`` bytes at ``where`` (path, offset): shrunk, or copied file by file.

    The filesystem shrinks on a scratch view of the image, then its used blocks
    are copied; the result is checked with the filesystem's own checker.
    """

    path, base = where
    fstype = part.fstype or ""
    node = None if base or not is_block_device(path) else path
    if fstype == "xfs":
        with (
            partition_view(folder, part, progress=progress, cancel=cancel) as src,
            partition_device(path, base, size, node) as dst,
        ):
            copy_xfs(src.loop, dst, progress, cancel)
            check_filesystem(dst, fstype)
        progress.advance(part.used_bytes)
        return
    progress.note(
        f"{part.name}: shrinking its {fstype} filesystem to {human_size(size)} on a scratch "
        "copy of the image (the image itself is not changed)."
    )
    with partition_view(folder, part, writable=True, progress=progress, cancel=cancel) as view:
        shrink_filesystem(view.loop, fstype, size)
        check_cancel(cancel)
        source = _direct_reader(view)
        try:
            fd = open_for_writing(path)
            try:
                copy_used(view.loop, fstype, source=source, dst_fd=fd, dst_path=path, dst_base=base,
                          size=size, progress=progress, cancel=cancel)  # fmt: skip
            finally:
                os.close(fd)
        finally:
            source.close()
    with partition_device(path, base, size, node) as dst:
        check_filesystem(dst, fstype)
    progress.note(f"{part.name}: {fstype} shrunk to {human_size(size)}, copied and checked clean.")


def _direct_reader(view: PartitionView) -> Overlay:
    """The shrunk partition's bytes without the FUSE round trip for what the shrink left alone.

    Blocks the resizer wrote come from the view (the loop device); every other
    block is decompressed from the image in this process, about three times
    faster than through the server. Read once the resizer has finished.
    """

    written = bytearray(view.written_map())
    base = open_reader(view.spec)
    try:
        top = os.open(view.loop, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        base.close()
        raise
    return Overlay(base, top, written)


def set_ntfs_hidden_sectors(fd: int, base: int, size: int, start_sector: int) -> None:
    """Record a moved partition's new start in both NTFS boot sectors (Windows boots by it).

    The backup boot sector is the last sector of the partition (``size`` bytes at ``base``).
    """
    value = start_sector.to_bytes(4, "little") if start_sector < 1 << 32 else bytes(4)
    for offset in (base, base + size - 512):
        if os.pread(fd, 11, offset)[3:11] == b"NTFS    ":
            os.pwrite(fd, value, offset + 0x1C)
    os.fsync(fd)
