"""NFS exports through mount.nfs: options, version fallback, and its messages in words.

NFSv4 is tried as 4.2, 4.1, then 4.0, moving on only when the server or the
kernel refuses the version; ``?vers=3`` (or 4.x) in the URL names one. Mounts
are ``soft`` with a bounded timeout: a server that goes away makes writes fail
(EIO, which rescue reports as a dropped connection with the resume command)
instead of hanging the capture for ever; checksums and ``--resume`` make up for
what a soft mount risks. NFSv3 goes with ``nolock`` (no lock daemon needed).
"""

from __future__ import annotations

from pathlib import Path

from rescue.shares.errors import (
    ClientMissingError,
    DialectRefusedError,
    ServerUnreachableError,
    ShareAuthError,
    ShareError,
    ShareNotFoundError,
)
from rescue.shares.location import NFS_VERSIONS, ShareLocation

TIMEOUT_DECISECONDS = 150
RETRANSMISSIONS = 2

_VERSION_REFUSED = (
    "protocol not supported",
    "requested nfs version or transport protocol is not supported",
    "an incorrect mount option was specified",
    "program not registered",
)


def versions(loc: ShareLocation) -> tuple[str, ...]:
    if loc.version in (None, "4"):
        return NFS_VERSIONS
    assert loc.version is not None
    return (loc.version,)


def export(loc: ShareLocation) -> str:
    """``HOST:/PATH`` (``[ADDR]:/PATH`` for IPv6), as mount.nfs takes it."""
    return f"{loc.host_in_url}:/" + "/".join(loc.path)


def nfs_options(loc: ShareLocation, *, version: str, read_only: bool) -> str:
    opts = [
        f"vers={version}", "soft", f"timeo={TIMEOUT_DECISECONDS}", f"retrans={RETRANSMISSIONS}",
    ]  # fmt: skip
    if version == "3":
        opts.append("nolock")
    if loc.port is not None:
        opts.append(f"port={loc.port}")
    opts += ["ro" if read_only else "rw", "nosuid", "nodev", "noexec"]
    return ",".join(opts)


def nfs_argv(loc: ShareLocation, mountpoint: Path, *, version: str, read_only: bool) -> list[str]:
    return [
        "mount.nfs", export(loc), str(mountpoint),
        "-o", nfs_options(loc, version=version, read_only=read_only),
    ]  # fmt: skip


def is_version_refused(said: str) -> bool:
    low = said.lower()
    return any(w in low for w in _VERSION_REFUSED)


def failure(loc: ShareLocation, said: str, tried: tuple[str, ...]) -> ShareError:
    """mount.nfs's message (``said``) after trying the versions ``tried``, as the error to show."""
    low = said.lower()
    words = " ".join(ln.strip() for ln in said.splitlines() if ln.strip())[:300] or "no message"
    where = export(loc)
    if "access denied" in low or "operation not permitted" in low or "permission denied" in low:
        return ShareAuthError(
            f"The NFS server does not let this machine mount {where} ({words}).",
            hint="Add this machine's address to the export's clients on the server "
            "(/etc/exports, then exportfs -ra).",
        )
    if "no such file or directory" in low or "stale file handle" in low:
        return ShareNotFoundError(
            f"{where} is not exported or does not exist ({words}).",
            hint=f"Check the path (showmount -e {loc.host_in_url} lists NFSv3 exports).",
        )
    unreachable = (
        "connection refused", "no route to host", "timed out", "network is unreachable",
        "failed to resolve", "name or service not known", "unable to connect",
    )  # fmt: skip
    if any(w in low for w in unreachable):
        return ServerUnreachableError(
            f"Could not reach the NFS server {loc.host_in_url} ({words}).",
            hint="Check the address, that the NFS server runs (port 2049), the firewall "
            "and the network.",
        )
    if "no such device" in low or "unknown filesystem type" in low:
        return ClientMissingError(
            f"This system cannot mount NFS exports ({words}).",
            hint="The kernel lacks NFS client support (the rescue live system has it).",
        )
    if is_version_refused(said):
        return DialectRefusedError(
            f"The NFS server {loc.host_in_url} took none of the versions "
            f"{', '.join(tried)} ({words}).",
            hint="Name the version it speaks with ?vers=3 (or 4.0) in the URL.",
        )
    return ShareError(f"mount.nfs could not mount {where}: {words}")
