"""SMB shares through mount.cifs: options, dialect fallback, and ``mount error(N)`` in words.

The password travels on a pipe whose number is in ``PASSWD_FD`` (mount.cifs
reads it from there): never in the arguments, never in a credentials file,
never in the environment. Dialects are tried newest first (3.1.1, 3.0, 2.1),
moving on only when the server refuses the dialect; ``?vers=`` in the URL
names one. SMB1 is never offered.
"""

from __future__ import annotations

import contextlib
import errno
import re
from pathlib import Path

from rescue import system
from rescue.shares.errors import (
    ClientMissingError,
    DialectRefusedError,
    ServerUnreachableError,
    ShareAuthError,
    ShareError,
    ShareNotFoundError,
)
from rescue.shares.location import SMB_VERSIONS, ShareLocation

_MOUNT_ERROR = re.compile(r"mount error\((\d+)\)")

DIALECT_CODES = frozenset({errno.EOPNOTSUPP, errno.EHOSTDOWN, errno.EINVAL, errno.EPROTO})
"""What the kernel's client answers when the server does not take the dialect offered
(EHOSTDOWN also when the server is down: after the last dialect the message says both)."""


def versions(loc: ShareLocation) -> tuple[str, ...]:
    """The dialects to try, in order."""
    return (loc.version,) if loc.version else SMB_VERSIONS


def unc(loc: ShareLocation) -> str:
    """``//HOST/SHARE/PATH`` (an IPv6 address goes unbracketed; ``ip=`` says it too)."""
    return "//" + "/".join([loc.host, *loc.path])


def cifs_options(loc: ShareLocation, *, version: str, read_only: bool) -> str:
    """The ``-o`` string; every name in it was checked by the URL parser (no commas)."""
    opts = [f"vers={version}"]
    if loc.user is None:
        opts.append("guest")
    else:
        opts.append(f"username={loc.user}")
        if loc.domain:
            opts.append(f"domain={loc.domain}")
    if ":" in loc.host:
        opts.append(f"ip={loc.host}")
    if loc.port is not None:
        opts.append(f"port={loc.port}")
    opts += ["ro" if read_only else "rw", "nosuid", "nodev", "noexec"]
    return ",".join(opts)


def cifs_argv(loc: ShareLocation, mountpoint: Path, *, version: str, read_only: bool) -> list[str]:
    return [
        "mount.cifs", unc(loc), str(mountpoint),
        "-o", cifs_options(loc, version=version, read_only=read_only),
    ]  # fmt: skip


def error_code(said: str) -> int | None:
    """N of mount.cifs's ``mount error(N)``."""
    m = _MOUNT_ERROR.search(said)
    return int(m.group(1)) if m else None


def is_dialect_refused(said: str) -> bool:
    return error_code(said) in DIALECT_CODES


def failure(loc: ShareLocation, said: str, tried: tuple[str, ...]) -> ShareError:
    """mount.cifs's message (``said``) after trying the dialects ``tried``, as the error to show."""
    code = error_code(said)
    words = " ".join(ln.strip() for ln in said.splitlines() if ln.strip())[:300] or "no message"
    where = unc(loc)
    who = f"{loc.domain + chr(92) if loc.domain else ''}{loc.user}" if loc.user else "guest"
    if code in (errno.EACCES, errno.EPERM, errno.ENOKEY):
        return ShareAuthError(
            f"The server refused {who} on {where} ({words}).",
            hint="Check the user name, the domain (smb://DOMAIN;USER@HOST/...) and the "
            "password file's first line, and that the user may use this share.",
        )
    if code in (errno.ENOENT, errno.ENXIO, errno.ENOTDIR):
        return ShareNotFoundError(
            f"{where} does not exist on the server ({words}).",
            hint=f"Check the share's name and the folder (smbclient -L {loc.host_in_url} "
            "lists the shares).",
        )
    if code in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ETIMEDOUT):
        return ServerUnreachableError(
            f"Could not reach the SMB server {loc.host_in_url} ({words}).",
            hint="Check the address, that file sharing is on there (port 445), the firewall "
            "and the network.",
        )
    if code == errno.ENODEV or "not supported by the system" in said:
        return ClientMissingError(
            f"This system cannot mount SMB shares ({words}).",
            hint="The kernel lacks the cifs module (the rescue live system has it).",
        )
    if code in DIALECT_CODES:
        return DialectRefusedError(
            f"The SMB server {loc.host_in_url} took none of the dialects "
            f"{', '.join(tried)} ({words}).",
            hint="It may be down, or speak only SMB1, which rescue does not use: "
            "turn SMB2/3 on at the server, or name a dialect with ?vers= in the URL.",
        )
    return ShareError(f"mount.cifs could not mount {where}: {words}")


def list_argv(loc: ShareLocation) -> list[str]:
    """smbclient's listing of the shares of ``loc``'s server (SMB2 and newer only)."""
    argv = ["smbclient", "-g", "-L", loc.host, "-m", "SMB3"]
    if loc.port is not None:
        argv += ["-p", str(loc.port)]
    if loc.user is None:
        argv.append("-N")
    else:
        argv += ["-U", f"{loc.domain}/{loc.user}" if loc.domain else loc.user]
    return argv


def parse_listing(out: str) -> list[tuple[str, str]]:
    """(name, comment) of each disk share in smbclient's ``-g`` output."""
    found = []
    for line in out.splitlines():
        kind, _, rest = line.partition("|")
        if kind == "Disk":
            name, _, comment = rest.partition("|")
            found.append((name, comment))
    return found


def listing_failure(loc: ShareLocation, said: str) -> ShareError:
    words = " ".join(ln.strip() for ln in said.splitlines() if ln.strip())[:300] or "no message"
    who = f"{loc.domain + chr(92) if loc.domain else ''}{loc.user}" if loc.user else "guest"
    if "LOGON_FAILURE" in said or "WRONG_PASSWORD" in said or "ACCOUNT" in said:
        return ShareAuthError(
            f"The server {loc.host_in_url} refused {who} ({words}).",
            hint="Check the user name, the domain (smb://DOMAIN;USER@HOST) and the password "
            "file's first line.",
        )
    if "ACCESS_DENIED" in said:
        return ShareError(
            f"The server {loc.host_in_url} does not list its shares to {who} ({words}).",
            hint="Give the share's name in the URL: smb://USER@HOST/SHARE/PATH.",
        )
    if "CONNECTION_REFUSED" in said or "UNREACHABLE" in said or "TIMEOUT" in said:
        return ServerUnreachableError(
            f"Could not reach the SMB server {loc.host_in_url} ({words}).",
            hint="Check the address, that file sharing is on there (port 445), the firewall "
            "and the network.",
        )
    return ShareError(f"smbclient could not list the shares of {loc.host_in_url}: {words}")


def list_shares(loc: ShareLocation, password: bytes | None) -> list[tuple[str, str]]:
    """The disk shares ``loc``'s server offers (where it lists them), as (name, comment).

    The password goes to smbclient on a pipe (``PASSWD_FD``), as to mount.cifs."""
    argv = list_argv(loc)
    with contextlib.ExitStack() as stack:
        env: dict[str, str] = {}
        fds: tuple[int, ...] = ()
        if loc.user is not None:
            fd = stack.enter_context(system.secret_pipe(password or b""))
            env, fds = {"PASSWD_FD": str(fd)}, (fd,)
        res = system.run(argv, check=False, env=env, pass_fds=fds, timeout=60)
    out = res.stdout.decode(errors="replace")
    if res.returncode != 0:
        raise listing_failure(loc, out + res.stderr.decode(errors="replace"))
    return parse_listing(out)
