"""An image partition served as a block device, and every piece of it taken down again.

A served partition is made of pieces, made in this order and removed in reverse:

1. a FUSE server process serving the partition as one file
   (``STATE/fuse/partition``, see :mod:`rescue.imagedev.server`), read-only or
   with a copy-on-write overlay (:mod:`rescue.imagedev.overlay`);
2. a loop device over that file;
3. optionally, what a caller put on top and recorded here (a read-only mount of
   the filesystem, made by :mod:`rescue.browse.mounts`).

Each served partition keeps a record in its own state folder under
``/run/rescue/mounts`` (``$RESCUE_RUN_DIR``), rewritten (write-new + rename)
after each piece is made. The record is what lets ``unmount`` and the
stale-record sweep find and remove every piece, also after the command that
made it or the server was killed. A record is stale when it was finished but a
piece has gone (server dead, filesystem unmounted by hand), or when it was
never finished and the command making it is gone.
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

from rescue import kernel
from rescue.containers.keys import encode_for_pipe
from rescue.errors import BadInputError, ExternalToolError, RescueError
from rescue.image.sealing import folder_sealer
from rescue.image.view import ImagePart
from rescue.imagedev.index import prepare, scratch_dir
from rescue.imagedev.spec import PARTITION_FILE, SPEC_NAME, WRITTEN_FILE, ServerSpec
from rescue.progress import NullProgress, ProgressReporter

log = logging.getLogger(__name__)

DEFAULT_RUN_DIR = Path("/run/rescue/mounts")
RECORD = "mount.json"
SERVER_START_TIMEOUT = 60.0
PIECE_TIMEOUT = 10.0


def run_dir() -> Path:
    return Path(os.environ.get("RESCUE_RUN_DIR") or DEFAULT_RUN_DIR)


@dataclass
class ServedRecord:
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
    def load(cls, state_dir: Path) -> ServedRecord:
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


# --- taking a mount down ----------------------------------------------------------


def take_down(rec: ServedRecord, *, stale: bool) -> None:
    """Remove every piece that is still there, last made first. Safe to repeat."""
    marker = str(rec.state_dir)
    mountpoint = rec.mountpoint
    source = kernel.mounted_at(mountpoint)
    if source is not None and source in (rec.loop, rec.mount_source):
        kernel.unmount(mountpoint, lazy_fallback=stale)
    if rec.loop is not None and kernel.loop_backing(rec.loop) == str(rec.served_file):
        kernel.detach_loop(rec.loop, wait=True)
        if kernel.loop_backing(rec.loop) == str(rec.served_file):
            raise RescueError(f"The loop device {rec.loop} is still attached to the image.")
    if kernel.mounted_at(rec.fuse_dir) is not None:
        kernel.unmount(rec.fuse_dir, lazy_fallback=True)
    _stop_process(rec.server_pid, marker)
    _remove_state(rec)


def _remove_state(rec: ServedRecord) -> None:
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


def records() -> list[ServedRecord]:
    found = []
    root = run_dir()
    if not root.is_dir():
        return []
    for d in sorted(root.iterdir()):
        try:
            found.append(ServedRecord.load(d))
        except (OSError, ValueError, TypeError):
            if d.is_dir() and not (d / RECORD).exists() and kernel.mounted_at(d / "fuse") is None:
                _remove_state(ServedRecord(d.name, "", "", "", 0))
    return found


def is_stale(rec: ServedRecord) -> bool:
    if not rec.complete:
        return not _alive(rec.mounter_pid, "")
    if not _alive(rec.server_pid, str(rec.state_dir)):
        return True
    return rec.loop is None or kernel.mounted_at(rec.mountpoint) != (rec.mount_source or rec.loop)


def sweep() -> list[ServedRecord]:
    """Take down every stale mount; returns those that were swept."""
    swept = []
    for rec in records():
        if is_stale(rec):
            log.warning("removing the stale mount of %s at %s", rec.image, rec.mountpoint)
            try:
                take_down(rec, stale=True)
            except RescueError as exc:
                log.warning("could not remove all of the stale mount %s: %s", rec.id, exc)
                continue
            swept.append(rec)
    return swept


def find_record(mountpoint: Path) -> ServedRecord | None:
    target = os.path.realpath(mountpoint)
    for rec in records():
        if os.path.realpath(rec.mountpoint) == target:
            return rec
    return None


# --- serving --------------------------------------------------------------------


def _start_server(rec: ServedRecord, key: bytes | None = None) -> None:
    """Start the FUSE server; ``key`` (a framed secret) goes to its standard input."""
    rec.fuse_dir.mkdir()
    read_end, write_end = os.pipe()
    err_path = rec.state_dir / "server.err"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rescue.imagedev.server",
                str(rec.state_dir),
                "--ready-fd",
                str(write_end),
            ],
            pass_fds=(write_end,),
            stdin=subprocess.DEVNULL if key is None else subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,  # outlives this command, immune to its terminal's signals
        )
    os.close(write_end)
    rec.server_pid = proc.pid
    rec.save()
    if key is not None:
        assert proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(key)
        proc.stdin.close()
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


def _attach(served_file: Path, writable: bool) -> str:
    """A loop device over the server's file, reading it with direct I/O: each read of
    the loop goes to the server as one request, without a second copy of the data in
    the page cache of the FUSE file (that cache and its read-ahead cost more than they
    save: the filesystem on top caches and reads ahead already, the server keeps
    decoded frames). Buffered when the kernel refuses: that works the same, slower."""
    try:
        loop = kernel.attach_loop(served_file, read_only=not writable, direct_io=True)
    except ExternalToolError as exc:
        log.info("the loop device reads the image server's file buffered: %s", exc)
        return kernel.attach_loop(served_file, read_only=not writable)
    dio = Path("/sys/block") / os.path.basename(loop) / "loop" / "dio"
    with contextlib.suppress(OSError):
        if dio.read_text().strip() != "1":
            log.info("the loop device %s reads the image server's file buffered", loop)
    return loop


@contextlib.contextmanager
def removed_on_failure(rec: ServedRecord) -> Iterator[None]:
    try:
        yield
    except BaseException:
        try:
            take_down(rec, stale=True)
        except RescueError as exc:
            log.warning("could not remove all pieces of the failed mount: %s", exc)
        raise


def serve(
    folder: Path,
    part: ImagePart,
    spec: ServerSpec,
    mountpoint: Path | None,
    *,
    writable: bool,
    key: bytes | None = None,
) -> ServedRecord:
    """Start a server for ``part`` and attach a loop device to its file.

    With ``spec.inner`` the file is a volume inside the partition's layers, opened
    with ``key`` (a secret framed by :func:`rescue.containers.keys.encode_for_pipe`).
    """
    ident = secrets.token_hex(6)
    state = run_dir() / ident
    if writable:
        assert part.stream is not None
        spec = replace(spec, overlay=scratch_dir(part.stream, part.used_bytes) / f"overlay-{ident}")
    state.mkdir(parents=True, mode=0o700)
    target = mountpoint if mountpoint is not None else state / "root"
    rec = ServedRecord(
        id=ident,
        image=str(folder.absolute()),
        partition=part.name,
        mountpoint=str(target),
        mounter_pid=os.getpid(),
        private=mountpoint is None,
    )
    sealer = folder_sealer(spec.stream.parent)
    pipe = b""
    if sealer is not None:  # an encrypted image: the server opens it with the same key
        spec = replace(spec, sealed=True)
        pipe = sealer.key_for_pipe()
    if spec.inner:
        pipe += key or encode_for_pipe(None)
    with removed_on_failure(rec):
        if mountpoint is None:
            target.mkdir()
        rec.save()
        spec.save(state)
        _start_server(rec, pipe if spec.sealed or spec.inner else None)
        rec.loop = _attach(rec.served_file, writable)
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
    rec = serve(folder, part, spec, None, writable=writable)
    assert rec.loop is not None
    try:
        yield PartitionView(rec.loop, ServerSpec.load(rec.state_dir), rec.fuse_dir)
    finally:
        kernel.settle()  # udev probes the loop after its last writer closes it
        take_down(rec, stale=False)
