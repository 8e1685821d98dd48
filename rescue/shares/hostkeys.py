"""An SSH server's key, checked before anything is sent to the server.

rescue keeps its own ``known_hosts`` (host keys are public, not secrets) and
asks ssh for strict checking against it alone. A server not in it yet is
scanned (``ssh-keyscan``, bounded in time) and its keys' SHA256 fingerprints
(``ssh-keygen -l``) are matched against the one given with ``--host-key`` or
shown to the technician to confirm. Without either, the key is refused: a key is
never taken blindly.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rescue import system
from rescue.shares.errors import HostKeyError, ServerUnreachableError

SCAN_SECONDS = 8
"""How long ssh-keyscan waits for the server's answer."""

_FINGERPRINT = re.compile(r"SHA256:[A-Za-z0-9+/]{43}")


@dataclass(frozen=True)
class HostKey:
    line: str
    """The key as a known_hosts line."""
    fingerprint: str
    """``SHA256:...`` as ``ssh-keygen -l`` shows it."""
    kind: str
    """ED25519, ECDSA, RSA..."""


def host_entry(host: str, port: int | None) -> str:
    """The host's name in known_hosts: ``host`` on port 22, ``[host]:port`` otherwise."""
    if port in (None, 22):
        return host
    return f"[{host}]:{port}"


def normalised_fingerprint(text: str) -> str:
    """``SHA256:...`` from what a technician typed (the prefix may be left out)."""
    value = text.strip()
    if not value.startswith("SHA256:"):
        value = "SHA256:" + value
    value = value.rstrip("=")
    if not _FINGERPRINT.fullmatch(value):
        raise HostKeyError(
            f"{text!r} is not an SSH key fingerprint.",
            hint="Give it as ssh-keygen -l shows it: --host-key SHA256:<43 characters>.",
        )
    return value


def fingerprint(line: str) -> HostKey | None:
    """The fingerprint of one known_hosts line (None if it holds no key)."""
    res = system.run(["ssh-keygen", "-l", "-E", "sha256", "-f", "-"], input=line.encode() + b"\n",
                     check=False, timeout=10)  # fmt: skip
    out = res.stdout.decode(errors="replace").strip()
    m = _FINGERPRINT.search(out)
    if res.returncode != 0 or m is None:
        return None
    kind = out.rsplit("(", 1)[-1].rstrip(")") if out.endswith(")") else "?"
    return HostKey(line=line, fingerprint=m.group(0), kind=kind)


def known_keys(known_hosts: Path, host: str, port: int | None) -> list[HostKey]:
    """The keys ``known_hosts`` holds for the server."""
    if not known_hosts.exists():
        return []
    res = system.run(
        ["ssh-keygen", "-F", host_entry(host, port), "-f", str(known_hosts)],
        check=False, timeout=10,
    )  # fmt: skip
    lines = [ln for ln in res.stdout.decode(errors="replace").splitlines() if ln and ln[0] != "#"]
    return [k for k in (fingerprint(ln) for ln in lines) if k is not None]


def scan(host: str, port: int | None) -> list[HostKey]:
    """The server's keys as it offers them now, or ServerUnreachableError."""
    system.require("ssh-keyscan", "openssh-client")
    argv = ["ssh-keyscan", "-T", str(SCAN_SECONDS), "-p", str(port or 22), "--", host]
    res = system.run(argv, check=False, timeout=SCAN_SECONDS * 3)
    lines = [ln for ln in res.stdout.decode(errors="replace").splitlines() if ln and ln[0] != "#"]
    keys = [k for k in (fingerprint(ln) for ln in lines) if k is not None]
    if not keys:
        said = res.stderr.decode(errors="replace").strip().splitlines()
        why = said[-1] if said else "no answer"
        raise ServerUnreachableError(
            f"The SSH server {host_entry(host, port)} did not answer ({why}).",
            hint="Check the address and port, that the server runs sshd, and the network "
            "(cable, address from DHCP, firewall).",
        )
    return keys


def describe(keys: list[HostKey]) -> str:
    return "\n".join(f"  {k.kind} {k.fingerprint}" for k in keys)


def ensure_known(
    known_hosts: Path,
    host: str,
    port: int | None,
    *,
    expected: str | None,
    confirm: Callable[[str, list[HostKey]], bool] | None,
) -> None:
    """Have the server's key in ``known_hosts``: matched, confirmed, or refused.

    ``expected`` is a ``SHA256:`` fingerprint the technician gave; ``confirm``
    asks them (None in scripts: an unknown key is refused).
    """
    want = normalised_fingerprint(expected) if expected else None
    entry = host_entry(host, port)
    known = known_keys(known_hosts, host, port)
    if known:
        if want is not None and all(k.fingerprint != want for k in known):
            raise HostKeyError(
                f"The key rescue already knows for {entry} is not {want}:\n{describe(known)}",
                hint="Check the fingerprint on the server (ssh-keygen -lf /etc/ssh/"
                "ssh_host_ed25519_key.pub).",
            )
        return
    offered = scan(host, port)
    if want is not None:
        chosen = [k for k in offered if k.fingerprint == want]
        if not chosen:
            raise HostKeyError(
                f"The SSH server {entry} offers none of the key {want}; it offers:\n"
                f"{describe(offered)}",
                hint="This may be another machine pretending to be the server. Check the "
                "fingerprint on the server itself (ssh-keygen -lf /etc/ssh/"
                "ssh_host_ed25519_key.pub).",
            )
    elif confirm is not None and confirm(entry, offered):
        chosen = offered
    else:
        raise HostKeyError(
            f"The SSH server {entry} is not known to rescue. Its keys:\n{describe(offered)}",
            hint="Check the fingerprint on the server (ssh-keygen -lf /etc/ssh/"
            "ssh_host_ed25519_key.pub), then give it: --host-key SHA256:...",
        )
    known_hosts.parent.mkdir(parents=True, exist_ok=True)
    with known_hosts.open("a") as f:
        for k in chosen:
            f.write(k.line + "\n")
