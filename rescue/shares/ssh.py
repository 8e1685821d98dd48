"""SSH shares through sshfs: its arguments, and its failures in words.

A password goes to sshfs on standard input (``-o password_stdin``), a key by
its file's path (``IdentityFile``); neither is ever an argument. ssh checks the
server's key strictly against rescue's own known_hosts (see ``hostkeys``) and
writes its own messages to a log file (``ssh -E``), since sshfs hides them; the
log holds no secret and is read to say what went wrong.

Speed: AES-GCM is the fastest cipher on machines with AES instructions (on the
development machine sshfs wrote 370-430 MiB/s with aes128-gcm against 215-260
with the default chacha20-poly1305 or aes128-ctr, over loopback), so it is
offered first; the others follow for servers without it. ``max_write`` made no
measurable difference on fuse3 (big writes are its default) and is left alone.
"""

from __future__ import annotations

from pathlib import Path

from rescue.shares.errors import (
    ConnectionDroppedError,
    HostKeyError,
    ServerUnreachableError,
    ShareAuthError,
    ShareError,
    ShareNotFoundError,
)
from rescue.shares.location import ShareLocation

CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
)
ALIVE_SECONDS = 5
ALIVE_COUNT = 3
"""A server that stops answering is given up after about ALIVE_SECONDS x ALIVE_COUNT."""
CONNECT_SECONDS = 10


def _escaped(value: str) -> str:
    """``value`` inside one FUSE ``-o`` option: its commas and backslashes escaped."""
    return value.replace("\\", "\\\\").replace(",", "\\,")


def remote(loc: ShareLocation) -> str:
    """``USER@HOST:PATH`` as sshfs takes it."""
    path = "/".join(loc.path)
    where = path if loc.home_relative else "/" + path
    return f"{loc.user}@{loc.host_in_url}:{where}"


def sshfs_argv(
    loc: ShareLocation,
    mountpoint: Path,
    *,
    known_hosts: Path,
    log_file: Path,
    password: bool,
    identity: Path | None,
    read_only: bool,
) -> list[str]:
    """The sshfs command line for ``loc``: strict host key, keepalives, the fast cipher."""
    for p in (known_hosts, log_file):
        if any(c in str(p) for c in " ,\\"):
            raise ValueError(f"{p}: no spaces, commas or backslashes in rescue's own files")
    options = [
        f"ssh_command=ssh -E {log_file}",
        f"UserKnownHostsFile={known_hosts}",
        "GlobalKnownHostsFile=/dev/null",
        "StrictHostKeyChecking=yes",
        f"ServerAliveInterval={ALIVE_SECONDS}",
        f"ServerAliveCountMax={ALIVE_COUNT}",
        f"ConnectTimeout={CONNECT_SECONDS}",
        "Ciphers=" + _escaped(",".join(CIPHERS)),
        "Compression=no",
    ]
    if password:
        options += [
            "password_stdin",
            "PubkeyAuthentication=no",
            "PreferredAuthentications=" + _escaped("password,keyboard-interactive"),
            "NumberOfPasswordPrompts=1",
        ]
    elif identity is not None:
        options += [
            "IdentityFile=" + _escaped(str(identity)),
            "IdentitiesOnly=yes",
            "PasswordAuthentication=no",
            "BatchMode=yes",
        ]
    else:
        options += ["BatchMode=yes"]
    options += ["ro" if read_only else "rw", "nosuid", "nodev", "noexec"]
    argv = ["sshfs", "-F", "/dev/null", "-p", str(loc.port or 22)]
    for opt in options:
        argv += ["-o", opt]
    return [*argv, "--", remote(loc), str(mountpoint)]


def failure(loc: ShareLocation, said: str, ssh_log: str) -> ShareError:
    """sshfs's and ssh's own words as the error to show (``said``: sshfs's stderr)."""
    text = f"{ssh_log}\n{said}"
    low = text.lower()
    where = f"{loc.user}@{loc.host_in_url}" + (f" port {loc.port}" if loc.port else "")
    words = next(
        (ln.strip() for ln in [*ssh_log.splitlines(), *said.splitlines()] if ln.strip()),
        "no message",
    )
    if "permission denied" in said.lower() and "permission denied (" not in low:
        return ShareAuthError(
            f"The SSH server let {where} in, but the user may not use {remote(loc)} ({words}).",
            hint="Check the folder's owner and permissions on the server, or give a folder "
            "the user may write.",
        )
    if "permission denied" in low or "too many authentication failures" in low:
        return ShareAuthError(
            f"The SSH server refused {where}: wrong password or key ({words}).",
            hint="Check the user name and the password file's first line, or the key "
            "(--identity) and that it is in the user's authorized_keys on the server.",
        )
    if "host key verification failed" in low or "remote host identification" in low:
        return HostKeyError(
            f"The key of {where} is not the one rescue knows ({words}).",
            hint="If the server was reinstalled, check its new fingerprint and give it with "
            "--host-key; otherwise another machine may be answering in its place.",
        )
    unreachable = (
        "connection refused", "no route to host", "connection timed out", "timed out",
        "network is unreachable", "could not resolve", "name or service not known",
        "connection closed by remote host",
    )  # fmt: skip
    if any(w in low for w in unreachable):
        return ServerUnreachableError(
            f"Could not reach the SSH server {where} ({words}).",
            hint="Check the address and port, that sshd runs there, and the network.",
        )
    if "no such file or directory" in low:
        return ShareNotFoundError(
            f"The folder {remote(loc)} does not exist on the server.",
            hint="Check the path in the URL (an absolute path; /~/PATH for one in the home).",
        )
    if "connection reset" in low or "broken pipe" in low:
        return ConnectionDroppedError(
            f"The SSH server {where} closed the connection ({words}).",
            hint="Check that the user may use SFTP there, and the network.",
        )
    return ShareError(f"sshfs could not mount {remote(loc)}: {words}")
