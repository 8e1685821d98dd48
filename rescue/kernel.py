"""The kernel's block layer as the tools see it: mounts, loop devices, blkid, udev.

Every mount and unmount, every loop device set up or torn down, every blkid
probe and every wait for udev goes through here (and from here through
:func:`rescue.system.run`), so each is done one way: read-only mounts always
get ``nosuid,nodev,noexec``, a loop device is always detached by the code that
made it, and blkid's output is parsed once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rescue.errors import ExternalToolError, RescueError
from rescue.system import output, run, which

log = logging.getLogger(__name__)

DevNum = tuple[int, int]

SAFE_OPTIONS = "nosuid,nodev,noexec"
"""Added to every mount rescue makes: nothing on an image or a disk is run or opened as a device."""

SETTLE_TIMEOUT = 30
LOOP_GONE_TIMEOUT = 10.0


# --- the mount table ------------------------------------------------------------------


def unescape(text: str) -> str:
    """Undo /proc's octal escapes (a space in a mountpoint is written \\040)."""
    if "\\" not in text:
        return text
    out = []
    i = 0
    while i < len(text):
        if text[i] == "\\" and i + 4 <= len(text) and text[i + 1 : i + 4].isdigit():
            out.append(chr(int(text[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


@dataclass(frozen=True)
class MountEntry:
    mountpoint: str
    source: str
    fstype: str
    options: tuple[str, ...]
    devnum: DevNum = (0, 0)
    """The filesystem's device number (major 0: anonymous, as FUSE and tmpfs have)."""


def mount_table(proc: Path = Path("/proc")) -> list[MountEntry]:
    """Every mount this process sees, in mount order."""
    try:
        lines = (proc / "self" / "mountinfo").read_text().splitlines()
    except OSError:
        return []
    entries = []
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = left.split()
        rfields = right.split()
        if len(fields) < 6 or len(rfields) < 2:
            continue
        major, minor = (int(x) for x in fields[2].split(":"))
        entries.append(
            MountEntry(
                mountpoint=unescape(fields[4]),
                source=unescape(rfields[1]),
                fstype=rfields[0],
                options=tuple(fields[5].split(",")),
                devnum=(major, minor),
            )
        )
    return entries


def mounted_at(path: Path | str) -> str | None:
    """The source of the top mount at ``path``, or None."""
    target = os.path.realpath(path)
    found = None
    for entry in mount_table():
        if entry.mountpoint == target:
            found = entry.source
    return found


# --- mounting ---------------------------------------------------------------------------


def mount(dev: str, mountpoint: Path | str, options: str, fstype: str | None = None) -> None:
    """Mount ``dev`` at ``mountpoint`` with ``options`` plus :data:`SAFE_OPTIONS`."""
    kind = ["-t", fstype] if fstype else []
    run(["mount", *kind, "-o", f"{options},{SAFE_OPTIONS}", dev, str(mountpoint)])


def mount_fuse(program: str, dev: str, mountpoint: Path | str, options: str) -> None:
    """Mount ``dev`` through a FUSE driver (ntfs-3g, fusefat, ...), with the safe options."""
    run([program, "-o", f"{options},{SAFE_OPTIONS}", dev, str(mountpoint)])


def unmount(path: Path | str, *, lazy_fallback: bool = False) -> None:
    """Unmount ``path``; a busy mount is an error in words (or detached lazily if asked)."""
    result = run(["umount", str(path)], check=False)
    if result.returncode == 0 or mounted_at(path) is None:
        return
    message = result.stderr.decode(errors="replace").strip()
    if lazy_fallback:
        log.warning("umount %s failed (%s); detaching it lazily", path, message)
        run(["umount", "-l", str(path)], check=False)
        if mounted_at(path) is None:
            return
    if "busy" in message:
        raise RescueError(
            f"{path} is in use: a program still has a file or folder open there.",
            hint="Close it (leave the folder in every shell), then run rescue unmount again.",
        )
    raise ExternalToolError(f"Could not unmount {path}: {message}")


GONE_SERVER_ARGS = ("--internal-only", "--no-canonicalize")
"""For a network mount whose server is gone: no umount.nfs/umount.cifs helper (which would
talk to the server) and no path resolution (a stat of the mountpoint would wait on it)."""


def fail_waiting_requests(path: Path | str) -> None:
    """Make the network filesystem mounted at ``path`` fail the requests that wait on its
    server (``umount --force`` runs its ``umount_begin``); the unmount itself is refused
    while a file there is open, which is how :class:`rescue.shares.watch.ShareWatch` uses it."""
    run(["umount", "--force", *GONE_SERVER_ARGS, str(path)], check=False, timeout=30)


def detach_gone(path: Path | str) -> None:
    """Detach the network mount at ``path`` whose server is gone, without waiting on it."""
    run(["umount", "--lazy", *GONE_SERVER_ARGS, str(path)], check=False, timeout=30)


@contextlib.contextmanager
def private_mount(dev: str, fstype: str, options: str) -> Iterator[Path]:
    """``dev`` mounted with ``options`` in a private temporary folder until the block ends."""
    folder = Path(tempfile.mkdtemp(prefix="rescue-mnt-"))
    try:
        mount(dev, folder, options, fstype)
        try:
            yield folder
        finally:
            run(["umount", str(folder)])
    finally:
        os.rmdir(folder)


def kernel_supports(fstype: str) -> bool:
    """The running kernel mounts ``fstype`` (after loading its module, where one exists)."""

    def listed() -> bool:
        try:
            with open("/proc/filesystems") as f:
                text = f.read()
        except OSError:
            return False
        return any(line.split()[-1] == fstype for line in text.splitlines() if line.split())

    if listed():
        return True
    if which("modprobe"):
        run(["modprobe", "-q", fstype], check=False)
    return listed()


# --- loop devices -------------------------------------------------------------------------


def attach_loop(
    path: Path | str,
    *,
    read_only: bool,
    offset: int = 0,
    size: int | None = None,
    direct_io: bool = False,
) -> str:
    """A new loop device over ``path`` (or ``size`` bytes of it at ``offset``), reading
    ``path`` with direct I/O when asked (a kernel that cannot leaves it buffered)."""
    argv = ["losetup", "--find", "--show"]
    if read_only:
        argv.append("--read-only")
    if direct_io:
        argv.append("--direct-io=on")
    if offset:
        argv += ["--offset", str(offset)]
    if size is not None:
        argv += ["--sizelimit", str(size)]
    loop = output([*argv, str(path)]).strip()
    if not loop.startswith("/dev/loop"):
        raise ExternalToolError(f"losetup gave no loop device for {path}.")
    return loop


def loop_backing(loop: str) -> str | None:
    """The file a loop device reads, None when it is not attached."""
    name = os.path.basename(loop)
    try:
        text = Path(f"/sys/block/{name}/loop/backing_file").read_text().strip()
    except OSError:
        return None
    return text.removesuffix(" (deleted)")


def detach_loop(loop: str, *, wait: bool = False) -> None:
    """Detach ``loop``; with ``wait``, until the kernel says it is gone (or a timeout)."""
    run(["losetup", "-d", loop], check=False)
    if not wait:
        return
    deadline = time.monotonic() + LOOP_GONE_TIMEOUT
    while loop_backing(loop) is not None and time.monotonic() < deadline:
        time.sleep(0.05)


@contextlib.contextmanager
def loop_device(
    path: Path | str, *, read_only: bool, offset: int = 0, size: int | None = None
) -> Iterator[str]:
    """A loop device over (a byte range of) ``path`` for as long as the block runs."""
    loop = attach_loop(path, read_only=read_only, offset=offset, size=size)
    try:
        yield loop
    finally:
        detach_loop(loop)


# --- blkid and udev ---------------------------------------------------------------------


def blkid(dev: str, *, offset: int | None = None, size: int | None = None) -> dict[str, str]:
    """What blkid reads from ``dev`` itself (no cache): ``{"TYPE": "ext4", "UUID": ...}``.

    ``offset``/``size`` probe a byte range of a disk file; empty when nothing is found.
    """
    argv = ["blkid", "-p", "-o", "export"]
    if offset is not None:
        argv += ["-O", str(offset)]
    if size is not None:
        argv += ["-S", str(size)]
    result = run([*argv, dev], check=False)
    info: dict[str, str] = {}
    for line in result.stdout.decode(errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            info[key] = value
    return info


def settle() -> None:
    """Wait until udev has handled every event so far (nothing to do without udev)."""
    if which("udevadm"):
        run(["udevadm", "settle", f"--timeout={SETTLE_TIMEOUT}"], check=False)


def announce_change(dev: str) -> None:
    """Make udev read ``dev`` again (a change event) and wait until it has."""
    if which("udevadm"):
        run(["udevadm", "trigger", "--action=change", dev], check=False)
        settle()
