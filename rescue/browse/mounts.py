"""Mount a partition of an image read-only, and take every piece down again.

A mount is three pieces, made in this order and removed in reverse:

1. a FUSE server process serving the partition as one file
   (``STATE/fuse/partition``, see :mod:`rescue.browse.server`);
2. a read-only loop device over that file;
3. the filesystem on the loop device, mounted ``ro,nosuid,nodev,noexec`` with
   journal replay off (by the kernel, or by ntfs-3g / fusefat / exfat-fuse
   where the kernel cannot).

Each mount keeps a record in its own state folder under ``/run/rescue/mounts``
(``$RESCUE_RUN_DIR``), rewritten (write-new + rename) after each piece is
made. The record is what lets ``unmount`` and the stale-mount sweep find and
remove every piece, also after the mounting command or the server was killed.
A record is stale when its mount was finished but a piece has gone (server
dead, filesystem unmounted by hand), or when it was never finished and the
command making it is gone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from rescue.browse.index import prepare, scratch_dir
from rescue.browse.spec import PARTITION_FILE, SPEC_NAME, WRITTEN_FILE, ServerSpec
from rescue.devices.system_state import mount_table
from rescue.errors import BadInputError, ExternalToolError, RescueError
from rescue.operations.image_view import ImagePart, ImageView, check_all_present, open_image
from rescue.progress import NullProgress, ProgressReporter
from rescue.system import kernel_supports, output, run, which

log = logging.getLogger(__name__)

DEFAULT_RUN_DIR = Path("/run/rescue/mounts")
RECORD = "mount.json"
SERVER_START_TIMEOUT = 60.0
PIECE_TIMEOUT = 10.0

# Mount options for every filesystem: nothing written, nothing executed from the image.
_SAFE = "ro,nosuid,nodev,noexec"
_KERNEL_OPTIONS = {
    "ext2": ("ext4", _SAFE + ",noload"),
    "ext3": ("ext4", _SAFE + ",noload"),
    "ext4": ("ext4", _SAFE + ",noload"),
    "xfs": ("xfs", _SAFE + ",norecovery,nouuid"),
    "btrfs": ("btrfs", _SAFE + ",rescue=nologreplay"),
    "vfat": ("vfat", _SAFE),
    "exfat": ("exfat", _SAFE),
}
_FUSE_DRIVERS = {
    "ntfs": ("ntfs-3g", "ntfs-3g"),
    "vfat": ("fusefat", "fusefat"),
    "exfat": ("mount.exfat-fuse", "exfat-fuse"),
}
_FS_ALIASES = {"fat12": "vfat", "fat16": "vfat", "fat32": "vfat", "fat": "vfat", "ntfs3": "ntfs"}


def run_dir() -> Path:
    return Path(os.environ.get("RESCUE_RUN_DIR") or DEFAULT_RUN_DIR)


@dataclass
class MountRecord:
    """Everything needed to take one mount down."""

    id: str
    image: str
    partition: str
    mountpoint: str
    mounter_pid: int
    private: bool = False
    """The mountpoint is the state folder's own ``root`` (a browsing session)."""
    server_pid: int | None = None
    loop: str | None = None
    fstype: str | None = None
    driver: str | None = None
    mount_source: str | None = None
    """The source the mount table shows for the filesystem (FUSE drivers name themselves)."""
    complete: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def state_dir(self) -> Path:
        return run_dir() / self.id

    @property
    def fuse_dir(self) -> Path:
        return self.state_dir / "fuse"

    @property
    def served_file(self) -> Path:
        return self.fuse_dir / PARTITION_FILE

    def save(self) -> None:
        path = self.state_dir / RECORD
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        os.replace(tmp, path)

    @classmethod
    def load(cls, state_dir: Path) -> MountRecord:
        doc = json.loads((state_dir / RECORD).read_text())
        return cls(**doc)


# --- processes ----------------------------------------------------------------


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def _alive(pid: int | None, marker: str) -> bool:
    """``pid`` runs and is the process we started (its command line holds ``marker``)."""
    if not pid:
        return False
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our own child
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat_line.rpartition(")")[2].split()[0] in ("Z", "X"):
        return False
    return marker in _cmdline(pid)


def _stop_process(pid: int | None, marker: str) -> None:
    """Wait for ``pid`` to end by itself, then ask, then force it (by PID, never by name)."""
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None and _alive(pid, marker):
            assert pid is not None
            log.info("sending %s to %d", sig.name, pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + (PIECE_TIMEOUT / 2 if sig is None else 5.0)
        while _alive(pid, marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not _alive(pid, marker):
            return
    raise RescueError(f"The FUSE server (process {pid}) does not stop.")


# --- mounts, loops ------------------------------------------------------------


def _mounted_at(path: Path | str) -> str | None:
    """The source of the top mount at ``path``, or None."""
    target = os.path.realpath(path)
    found = None
    for entry in mount_table():
        if entry.mountpoint == target:
            found = entry.source
    return found


def _loop_backing(loop: str) -> str | None:
    name = os.path.basename(loop)
    try:
        text = Path(f"/sys/block/{name}/loop/backing_file").read_text().strip()
    except OSError:
        return None
    return text.removesuffix(" (deleted)")


def _umount(path: Path | str, *, lazy_fallback: bool) -> None:
    result = run(["umount", str(path)], check=False)
    if result.returncode == 0 or _mounted_at(path) is None:
        return
    message = result.stderr.decode(errors="replace").strip()
    if lazy_fallback:
        log.warning("umount %s failed (%s); detaching it lazily", path, message)
        run(["umount", "-l", str(path)], check=False)
        if _mounted_at(path) is None:
            return
    if "busy" in message:
        raise RescueError(
            f"{path} is in use: a program still has a file or folder open there.",
            hint="Close it (leave the folder in every shell), then run rescue unmount again.",
        )
    raise ExternalToolError(f"Could not unmount {path}: {message}")


def _wait_gone(loop: str) -> None:
    deadline = time.monotonic() + PIECE_TIMEOUT
    while _loop_backing(loop) is not None and time.monotonic() < deadline:
        time.sleep(0.05)


# --- taking a mount down ----------------------------------------------------------


def _take_down(rec: MountRecord, *, stale: bool) -> None:
    """Remove every piece that is still there, last made first. Safe to repeat."""
    marker = str(rec.state_dir)
    mountpoint = rec.mountpoint
    source = _mounted_at(mountpoint)
    if source is not None and source in (rec.loop, rec.mount_source):
        _umount(mountpoint, lazy_fallback=stale)
    if rec.loop is not None and _loop_backing(rec.loop) == str(rec.served_file):
        run(["losetup", "-d", rec.loop], check=False)
        _wait_gone(rec.loop)
        if _loop_backing(rec.loop) == str(rec.served_file):
            raise RescueError(f"The loop device {rec.loop} is still attached to the image.")
    if _mounted_at(rec.fuse_dir) is not None:
        _umount(rec.fuse_dir, lazy_fallback=True)
    _stop_process(rec.server_pid, marker)
    _remove_state(rec)


def _remove_state(rec: MountRecord) -> None:
    """Delete the state folder, file by file: never recursively through a mount."""
    d = rec.state_dir
    for name in (RECORD, RECORD.replace(".json", ".tmp"), SPEC_NAME, "server.log", "server.err"):
        with contextlib.suppress(FileNotFoundError):
            (d / name).unlink()
    for sub in ("fuse", "root"):
        with contextlib.suppress(FileNotFoundError):
            (d / sub).rmdir()
    try:
        d.rmdir()
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("left %s behind: %s", d, exc.strerror)


def records() -> list[MountRecord]:
    found = []
    root = run_dir()
    if not root.is_dir():
        return []
    for d in sorted(root.iterdir()):
        try:
            found.append(MountRecord.load(d))
        except (OSError, ValueError, TypeError):
            if d.is_dir() and not (d / RECORD).exists() and _mounted_at(d / "fuse") is None:
                _remove_state(MountRecord(d.name, "", "", "", 0))
    return found


def is_stale(rec: MountRecord) -> bool:
    if not rec.complete:
        return not _alive(rec.mounter_pid, "")
    if not _alive(rec.server_pid, str(rec.state_dir)):
        return True
    return rec.loop is None or _mounted_at(rec.mountpoint) != (rec.mount_source or rec.loop)


def sweep() -> list[MountRecord]:
    """Take down every stale mount; returns those that were swept."""
    swept = []
    for rec in records():
        if is_stale(rec):
            log.warning("removing the stale mount of %s at %s", rec.image, rec.mountpoint)
            try:
                _take_down(rec, stale=True)
            except RescueError as exc:
                log.warning("could not remove all of the stale mount %s: %s", rec.id, exc)
                continue
            swept.append(rec)
    return swept


def find_record(mountpoint: Path) -> MountRecord | None:
    target = os.path.realpath(mountpoint)
    for rec in records():
        if os.path.realpath(rec.mountpoint) == target:
            return rec
    return None


def unmount(mountpoint: Path) -> MountRecord:
    """Take down the image mount at ``mountpoint`` (and any stale one)."""
    rec = find_record(mountpoint)
    if rec is None:
        sweep()
        raise BadInputError(f"No image is mounted at {mountpoint} by rescue.")
    _take_down(rec, stale=is_stale(rec))
    sweep()
    return rec


def unmount_all() -> list[MountRecord]:
    done = []
    for rec in records():
        _take_down(rec, stale=is_stale(rec))
        done.append(rec)
    return done


# --- choosing what to mount ---------------------------------------------------------


def _describe(p: ImagePart) -> str:
    number = p.number if p.number is not None else "-"
    return f"  {number}: {p.name} {p.fstype or 'unknown'} ({p.stored_as})"


def choose_partition(image: ImageView, number: int | None) -> ImagePart:
    browsable = [p for p in image.parts if p.stored_as in ("partclone", "dd")]
    listing = "\n".join(_describe(p) for p in image.parts)
    if number is None:
        if len(browsable) == 1:
            return browsable[0]
        raise BadInputError(
            f"{image.folder} holds {len(browsable)} partitions that can be browsed; "
            f"choose one with --partition N:\n{listing}"
        )
    for p in image.parts:
        if p.number == number or (p.number is None and len(image.parts) == 1 and number == 1):
            if p not in browsable:
                what = "swap space" if p.stored_as == "swap" else "no stored data"
                raise BadInputError(
                    f"Partition {number} ({p.name}) holds {what}: nothing to browse."
                )
            return p
    raise BadInputError(f"{image.folder} has no partition {number}. It holds:\n{listing}")


def _check_mountpoint(mountpoint: Path) -> None:
    if not mountpoint.exists():
        if not mountpoint.parent.is_dir():
            raise BadInputError(f"The folder {mountpoint.parent} does not exist.")
        mountpoint.mkdir()
        return
    if not mountpoint.is_dir():
        raise BadInputError(f"{mountpoint} is not a folder.")
    if _mounted_at(mountpoint) is not None:
        raise BadInputError(f"Something is already mounted at {mountpoint}.")
    if any(mountpoint.iterdir()):
        raise BadInputError(
            f"{mountpoint} is not empty; mounting there would hide its files.",
            hint="Choose an empty folder.",
        )


# --- making a mount -------------------------------------------------------------------


def _start_server(rec: MountRecord) -> None:
    rec.fuse_dir.mkdir()
    read_end, write_end = os.pipe()
    err_path = rec.state_dir / "server.err"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rescue.browse.server",
                str(rec.state_dir),
                "--ready-fd",
                str(write_end),
            ],
            pass_fds=(write_end,),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,  # outlives this command, immune to its terminal's signals
        )
    os.close(write_end)
    rec.server_pid = proc.pid
    rec.save()
    try:
        ready, _, _ = select.select([read_end], [], [], SERVER_START_TIMEOUT)
        answer = os.read(read_end, 64) if ready else b""
    finally:
        os.close(read_end)
    if answer.startswith(b"ready"):
        return
    try:
        code = proc.wait(timeout=PIECE_TIMEOUT)
    except subprocess.TimeoutExpired:
        code = None
    message = err_path.read_text(errors="replace").strip().splitlines()
    detail = message[-1].removeprefix("rescue: ") if message else "no message"
    if code is None:
        raise RescueError(f"The image server did not start within {SERVER_START_TIMEOUT:.0f} s.")
    if code == 2:
        raise BadInputError(detail)
    raise RescueError(f"The image server failed to start (exit {code}): {detail}")


def _attach_loop(rec: MountRecord, *, writable: bool = False) -> str:
    mode = [] if writable else ["--read-only"]
    loop = output(["losetup", *mode, "--find", "--show", str(rec.served_file)]).strip()
    if not loop.startswith("/dev/loop"):
        raise ExternalToolError(f"losetup gave no loop device for {rec.served_file}.")
    return loop


def _detect_fstype(loop: str, recorded: str | None) -> str:
    found = run(["blkid", "-p", "-o", "value", "-s", "TYPE", loop], check=False)
    fstype = found.stdout.decode().strip() if found.returncode == 0 else ""
    fstype = fstype or (recorded or "")
    fstype = _FS_ALIASES.get(fstype, fstype)
    if not fstype or fstype == "dd":
        raise BadInputError(
            "The partition holds no filesystem that can be recognised; it cannot be browsed."
        )
    return fstype


def _mount_fs(loop: str, fstype: str, mountpoint: str) -> str:
    """Mount ``loop`` read-only at ``mountpoint``; returns the driver used."""
    kernel = _KERNEL_OPTIONS.get(fstype)
    if kernel is not None and (fstype not in _FUSE_DRIVERS or kernel_supports(fstype)):
        kind, options = kernel
        run(["mount", "-t", kind, "-o", options, loop, mountpoint])
        return "kernel"
    fuse = _FUSE_DRIVERS.get(fstype)
    if fuse is None:
        raise BadInputError(f"Browsing a {fstype} filesystem is not supported.")
    program, package = fuse
    if which(program) is None:
        raise ExternalToolError(
            f"Mounting {fstype} needs {program}, which is not installed.",
            hint=f"Install it with: apt-get install {package}",
        )
    run([program, "-o", _SAFE, loop, mountpoint])
    return program


def _wait_mounted(mountpoint: str) -> str:
    """The source of the filesystem that appeared at ``mountpoint``."""
    deadline = time.monotonic() + PIECE_TIMEOUT
    while (source := _mounted_at(mountpoint)) is None:
        if time.monotonic() > deadline:
            raise RescueError(f"The filesystem did not appear at {mountpoint}.")
        time.sleep(0.02)
    return source


@dataclass(frozen=True)
class MountedPartition:
    record: MountRecord
    part: ImagePart

    @property
    def mountpoint(self) -> Path:
        return Path(self.record.mountpoint)


def mount_image(
    folder: Path,
    mountpoint: Path | None,
    *,
    partition: int | None = None,
    progress: ProgressReporter | None = None,
    cancel: threading.Event | None = None,
) -> MountedPartition:
    """Mount one partition of the image in ``folder`` read-only at ``mountpoint``.

    With ``mountpoint`` None the mount goes to a private folder inside its state
    folder (for a browsing session). Returns once the files can be read.
    """
    progress = progress or NullProgress()
    sweep()
    image = open_image(folder)
    check_all_present(image)
    part = choose_partition(image, partition)
    if mountpoint is not None:
        mountpoint = mountpoint.absolute()
        _check_mountpoint(mountpoint)
    spec = prepare(part, progress, cancel)
    rec = _serve(folder, part, spec, mountpoint, writable=False)
    with _removed_on_failure(rec):
        assert rec.loop is not None
        target = rec.mountpoint
        rec.fstype = _detect_fstype(rec.loop, part.fstype)
        rec.driver = _mount_fs(rec.loop, rec.fstype, target)
        rec.mount_source = _wait_mounted(target)
        rec.complete = True
        rec.save()
    return MountedPartition(replace(rec), part)


@contextlib.contextmanager
def _removed_on_failure(rec: MountRecord) -> Iterator[None]:
    try:
        yield
    except BaseException:
        try:
            _take_down(rec, stale=True)
        except RescueError as exc:
            log.warning("could not remove all pieces of the failed mount: %s", exc)
        raise


def _serve(
    folder: Path, part: ImagePart, spec: ServerSpec, mountpoint: Path | None, *, writable: bool
) -> MountRecord:
    """Start a server for ``part`` and attach a loop device to its file."""
    ident = secrets.token_hex(6)
    state = run_dir() / ident
    if writable:
        assert part.stream is not None
        spec = replace(spec, overlay=scratch_dir(part.stream, part.used_bytes) / f"overlay-{ident}")
    state.mkdir(parents=True, mode=0o700)
    target = mountpoint if mountpoint is not None else state / "root"
    rec = MountRecord(
        id=ident,
        image=str(folder.absolute()),
        partition=part.name,
        mountpoint=str(target),
        mounter_pid=os.getpid(),
        private=mountpoint is None,
    )
    with _removed_on_failure(rec):
        if mountpoint is None:
            target.mkdir()
        rec.save()
        spec.save(state)
        _start_server(rec)
        rec.loop = _attach_loop(rec, writable=writable)
        rec.save()
    return rec


@dataclass(frozen=True)
class PartitionView:
    """An image partition served as a loop device (see :func:`partition_view`)."""

    loop: str
    spec: ServerSpec
    """What the server serves (the image stream, its index, the overlay)."""
    fuse_dir: Path

    def written_map(self) -> bytes:
        """Which 4 KiB blocks were written since the view was made (a writable view only)."""
        return (self.fuse_dir / WRITTEN_FILE).read_bytes()


@contextlib.contextmanager
def partition_view(
    folder: Path,
    part: ImagePart,
    *,
    writable: bool = False,
    progress: ProgressReporter | None = None,
    cancel: threading.Event | None = None,
) -> Iterator[PartitionView]:
    """The image's partition as a loop device, for as long as the block runs.

    Reads come from the image. A writable view keeps writes in a sparse
    scratch file beside the image (or in the cache folder) that vanishes with
    the view: the image is never written. That is what a filesystem resizer
    needs before the shrunk filesystem is copied out. The record stays
    unfinished while the view is in use, so only the death of this process
    makes another command's sweep remove it.
    """
    sweep()
    spec = prepare(part, progress or NullProgress(), cancel)
    rec = _serve(folder, part, spec, None, writable=writable)
    assert rec.loop is not None
    try:
        yield PartitionView(rec.loop, ServerSpec.load(rec.state_dir), rec.fuse_dir)
    finally:
        if which("udevadm"):  # udev probes the loop after its last writer closes it
            run(["udevadm", "settle", "--timeout=30"], check=False)
        _take_down(rec, stale=False)
