"""Mount a share, unmount it, and remember the mounts made for scripts.

Private mounts (for one command: ``private_share``) go into a new folder under
:func:`run_dir` (``/run/rescue/shares``, mode 0700) and are taken down when the
block ends, also on an error or Ctrl-C. ``rescue mount-share`` mounts where the
technician says and leaves a record there, so that ``rescue unmount`` takes down
only what rescue mounted. rescue's SSH known_hosts and ssh's log files live in
the same private folder: none of them holds a secret.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import secrets
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rescue import kernel, system
from rescue.errors import BadInputError, RescueError
from rescue.shares import hostkeys, nfs, smb, ssh
from rescue.shares.errors import (
    ConnectionDroppedError,
    ShareError,
    ShareFullError,
)
from rescue.shares.hostkeys import HostKey
from rescue.shares.location import ShareLocation
from rescue.shares.watch import ShareWatch

log = logging.getLogger(__name__)

RUN_DIR = Path("/run/rescue/shares")
RUN_DIR_ENV = "RESCUE_SHARES_DIR"
"""Overrides RUN_DIR (tests keep their known_hosts and records apart)."""
MOUNT_SECONDS = 90

ERESTARTSYS = 512
"""The kernel's own code for a request ended from outside: NFS hands it to the program whose
write the share's watch failed (``umount --force``); Python knows no name for it."""
DROPPED = frozenset({
    errno.ENOTCONN, errno.EIO, errno.ESTALE, errno.ECONNRESET, errno.ECONNABORTED,
    errno.ETIMEDOUT, errno.EHOSTDOWN, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EPIPE,
    ERESTARTSYS,
})  # fmt: skip
"""What a share's files raise when the connection under them has gone."""
FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


@dataclass(frozen=True)
class Credentials:
    """How to log in; the password's bytes never show in a repr, a log or a message."""

    password: bytes | None = field(default=None, repr=False)
    identity: Path | None = None
    """SSH: a private key file (its path only is passed on)."""
    host_key: str | None = None
    """SSH: the ``SHA256:`` fingerprint the server's key must have."""
    confirm_host_key: Callable[[str, list[HostKey]], bool] | None = field(default=None, repr=False)
    """SSH: asks the technician about an unknown key (None: refuse it)."""


@dataclass(frozen=True)
class ShareMount:
    mountpoint: str
    url: str
    kind: str
    """``fuse`` (sshfs) or ``kernel`` (cifs, nfs): how it is taken down."""
    holds_for: str | None = None
    """The image mount (``rescue mount URL MNT``) this share is mounted for, if any:
    taken down with it."""


def run_dir() -> Path:
    """rescue's private folder for shares (made 0700 if missing)."""
    path = Path(os.environ.get(RUN_DIR_ENV) or RUN_DIR)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def _records_dir() -> Path:
    path = run_dir() / "mounted"
    path.mkdir(exist_ok=True, mode=0o700)
    return path


def _record_path(mountpoint: Path | str) -> Path:
    key = hashlib.sha256(os.path.realpath(mountpoint).encode()).hexdigest()[:32]
    return _records_dir() / f"{key}.json"


def _mount_ssh(
    loc: ShareLocation, mountpoint: Path, creds: Credentials, *, read_only: bool
) -> None:
    system.require("sshfs", "sshfs")
    known = run_dir() / "known_hosts"
    hostkeys.ensure_known(
        known, loc.host, loc.port, expected=creds.host_key, confirm=creds.confirm_host_key
    )
    log_file = run_dir() / f"ssh-{secrets.token_hex(6)}.log"
    argv = ssh.sshfs_argv(
        loc, mountpoint, known_hosts=known, log_file=log_file,
        password=creds.password is not None, identity=creds.identity, read_only=read_only,
    )  # fmt: skip
    stdin = creds.password + b"\n" if creds.password is not None else b""
    try:
        res = system.run(argv, input=stdin, check=False, timeout=MOUNT_SECONDS)
        if res.returncode != 0 or kernel.mounted_at(mountpoint) is None:
            try:
                said_ssh = log_file.read_text(errors="replace")
            except OSError:
                said_ssh = ""
            raise ssh.failure(loc, res.stderr.decode(errors="replace"), said_ssh)
    finally:
        log_file.unlink(missing_ok=True)


def _mount_smb(
    loc: ShareLocation, mountpoint: Path, creds: Credentials, *, read_only: bool
) -> None:
    system.require("mount.cifs", "cifs-utils")
    tried: list[str] = []
    said = ""
    for version in smb.versions(loc):
        tried.append(version)
        argv = smb.cifs_argv(loc, mountpoint, version=version, read_only=read_only)
        if loc.user is None:
            res = system.run(argv, check=False, timeout=MOUNT_SECONDS)
        else:
            with system.secret_pipe(creds.password or b"") as fd:
                res = system.run(
                    argv, check=False, timeout=MOUNT_SECONDS,
                    env={"PASSWD_FD": str(fd)}, pass_fds=(fd,),
                )  # fmt: skip
        if res.returncode == 0:
            return
        said = (res.stderr + res.stdout).decode(errors="replace")
        if not smb.is_dialect_refused(said):
            break
        log.info("SMB dialect %s refused by %s: %s", version, loc.host, said.strip())
    raise smb.failure(loc, said, tuple(tried))


def _mount_nfs(loc: ShareLocation, mountpoint: Path, *, read_only: bool) -> None:
    system.require("mount.nfs", "nfs-common")
    tried: list[str] = []
    said = ""
    for version in nfs.versions(loc):
        tried.append(version)
        argv = nfs.nfs_argv(loc, mountpoint, version=version, read_only=read_only)
        res = system.run(argv, check=False, timeout=MOUNT_SECONDS)
        if res.returncode == 0:
            return
        said = (res.stderr + res.stdout).decode(errors="replace")
        if not nfs.is_version_refused(said):
            break
        log.info("NFS version %s refused by %s: %s", version, loc.host, said.strip())
    raise nfs.failure(loc, said, tuple(tried))


def kind_of(loc: ShareLocation) -> str:
    return "fuse" if loc.scheme == "ssh" else "kernel"


def attach(loc: ShareLocation, mountpoint: Path, creds: Credentials, *, read_only: bool) -> None:
    """Mount the folder ``loc`` names at ``mountpoint`` (an empty folder)."""
    if loc.scheme == "ssh":
        _mount_ssh(loc, mountpoint, creds, read_only=read_only)
    elif loc.scheme == "smb":
        _mount_smb(loc, mountpoint, creds, read_only=read_only)
    else:
        _mount_nfs(loc, mountpoint, read_only=read_only)


def detach(mountpoint: Path | str, kind: str) -> None:
    """Take down a share's mount; a dead connection's mount is detached lazily."""
    if kind == "fuse":
        res = system.run(["fusermount3", "-u", str(mountpoint)], check=False, timeout=60)
        if res.returncode != 0 and kernel.mounted_at(mountpoint) is not None:
            said = res.stderr.decode(errors="replace")
            if "busy" in said:
                raise RescueError(
                    f"{mountpoint} is in use: a program still has a file or folder open there.",
                    hint="Close it (leave the folder in every shell), then unmount again.",
                )
            system.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False, timeout=60)
    else:
        kernel.unmount(mountpoint, lazy_fallback=True)


def mount_share(
    loc: ShareLocation,
    mountpoint: Path,
    creds: Credentials,
    *,
    read_only: bool,
    holds_for: Path | None = None,
) -> ShareMount:
    """Mount ``loc`` at ``mountpoint`` for scripts and record it for ``rescue unmount``.

    ``holds_for``: the image mount this share is for (see :func:`held_for`).
    """
    if mountpoint.exists() and not mountpoint.is_dir():
        raise BadInputError(f"{mountpoint} is not a folder.")
    mountpoint.mkdir(parents=True, exist_ok=True)
    if kernel.mounted_at(mountpoint) is not None:
        raise BadInputError(f"Something is already mounted at {mountpoint}.")
    if any(mountpoint.iterdir()):
        raise BadInputError(f"{mountpoint} is not empty: give an empty folder.")
    attach(loc, mountpoint, creds, read_only=read_only)
    held = os.path.realpath(holds_for) if holds_for is not None else None
    mounted = ShareMount(os.path.realpath(mountpoint), loc.url(), kind_of(loc), held)
    _record_path(mountpoint).write_text(json.dumps(asdict(mounted)) + "\n")
    return mounted


def holder_folder() -> Path:
    """A new empty folder for a share that an image mount reads from."""
    return Path(tempfile.mkdtemp(prefix="for-image-", dir=run_dir()))


def _load(path: Path) -> ShareMount | None:
    try:
        doc = json.loads(path.read_text())
        held = doc.get("holds_for")
        return ShareMount(
            str(doc["mountpoint"]), str(doc["url"]), str(doc["kind"]),
            str(held) if held is not None else None,
        )  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError):
        return None


def find(mountpoint: Path | str) -> ShareMount | None:
    """The record of the share ``rescue mount-share`` put at ``mountpoint``, if any."""
    return _load(_record_path(mountpoint))


def records() -> list[ShareMount]:
    """Every share ``rescue mount-share`` mounted and nobody unmounted yet."""
    found = (_load(p) for p in sorted(_records_dir().glob("*.json")))
    return [r for r in found if r is not None]


def unmount_share(mountpoint: Path | str) -> ShareMount:
    """Take down a share mounted by ``mount_share``; anything else is refused."""
    rec = find(mountpoint)
    if rec is None:
        raise BadInputError(f"No share is mounted at {mountpoint} by rescue mount-share.")
    if kernel.mounted_at(rec.mountpoint) is not None:
        detach(rec.mountpoint, rec.kind)
    _record_path(rec.mountpoint).unlink(missing_ok=True)
    if rec.holds_for is not None:
        _remove_empty(Path(rec.mountpoint))
    return rec


def held_for(image_mount: Path | str) -> list[ShareMount]:
    """The shares mounted for the image mount at ``image_mount`` (``rescue mount URL``)."""
    where = os.path.realpath(image_mount)
    return [r for r in records() if r.holds_for == where]


@contextlib.contextmanager
def private_share(
    loc: ShareLocation,
    creds: Credentials,
    *,
    read_only: bool,
    on_stuck: Callable[[], None] | None = None,
) -> Iterator[Path]:
    """``loc`` mounted in a new folder under :func:`run_dir` until the block ends.

    The folder's name holds this process's id, so that mounts left by a command
    that was killed are found and taken down (:func:`sweep`) by the next one. A
    kernel share is watched meanwhile (:class:`ShareWatch`): a server that stops
    answering makes the command's reads and writes fail within about half a
    minute (``on_stuck`` is called where that does not free the command), and
    its mount is then detached without waiting on it.
    """
    sweep()
    folder = Path(tempfile.mkdtemp(prefix=f"mnt-{os.getpid()}-", dir=run_dir()))
    try:
        attach(loc, folder, creds, read_only=read_only)
        kind = kind_of(loc)
        watch = None
        try:
            if kind == "kernel":
                watch = ShareWatch(folder, on_stuck=on_stuck).start()
            yield folder
        finally:
            if watch is not None:
                watch.stop()
            if watch is not None and watch.server_gone:
                kernel.detach_gone(folder)
            else:
                detach(folder, kind)
    finally:
        if kernel.mounted_at(folder) is None:
            _remove_empty(folder)


def _remove_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep() -> list[str]:
    """Take down private mounts whose command is gone (killed before it could unmount)."""
    root = run_dir()
    swept = []
    for entry in kernel.mount_table():
        path = Path(entry.mountpoint)
        if path.parent != root or not path.name.startswith("mnt-"):
            continue
        owner = path.name.split("-")[1]
        if owner.isdigit() and not _alive(int(owner)):
            log.warning("taking down %s, left by a command that ended without unmounting", path)
            if entry.fstype.startswith("fuse"):
                detach(path, "fuse")
            else:  # perhaps left because its server went away: not waited on
                kernel.detach_gone(path)
            _remove_empty(path)
            swept.append(str(path))
    return swept


def writing_error(exc: OSError, *, source: str, image: str) -> ShareError:
    """An OSError from writing a capture onto a share, as the error that says how to go on.

    A broken connection (ENOTCONN, EIO, ESTALE, ...) and a full share each name
    the resume command (``rescue capture SOURCE --resume IMAGE``); the capture's
    own checkpoint on the share says where it goes on.
    """
    resume = f"rescue capture {source} --resume {image}"
    if exc.errno == ERESTARTSYS:
        why = "its server stopped answering"
    else:
        why = os.strerror(exc.errno) if exc.errno else str(exc)
    if exc.errno in FULL:
        return ShareFullError(
            f"The share holding {image} is full ({why}): the image is incomplete.",
            hint=f"Free some space on the share, then go on with: {resume}",
        )
    if exc.errno in DROPPED:
        return ConnectionDroppedError(
            f"The connection to the share holding {image} dropped during the capture "
            f"({why}): the image is incomplete.",
            hint=f"Once the server answers again (check the network and the server), "
            f"go on with: {resume}",
        )
    return ShareError(
        f"Writing the image to {image} failed ({why}): the image is incomplete.",
        hint=f"Check the share, then go on with: {resume}",
    )
