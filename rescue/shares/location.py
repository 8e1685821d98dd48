"""Image locations on network shares: ``smb://``, ``nfs://`` and ``ssh://`` URLs, checked.

The forms (percent-encoding, e.g. ``%20``, is allowed in names and paths)::

    smb://[DOMAIN;]USER@HOST[:PORT]/SHARE/PATH   a Windows or Samba share
    smb://HOST[:PORT]/SHARE/PATH                 the same as guest
    nfs://HOST[:PORT]/EXPORT/PATH[?vers=3]       NFSv4 (4.2, 4.1, 4.0) unless vers= says
    ssh://USER@HOST[:PORT]/PATH                  sshfs; PATH is absolute, /~/PATH is in
                                                 the user's home

HOST is a name, an IPv4 address or an IPv6 address in brackets (``[fe80::1]``).
A password never goes into a URL (it would show in process lists and shell
histories): ``user:pass@`` is refused. Every part that ends up in a mount
option is checked here, so that no name can smuggle in an option of its own.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace
from urllib.parse import quote, unquote

from rescue.errors import BadInputError

SCHEMES = ("smb", "nfs", "ssh")

FORMS = (
    "smb://[DOMAIN;]USER@HOST/SHARE/PATH (or smb://HOST/SHARE/PATH as guest)",
    "nfs://HOST/EXPORT/PATH (NFSv4; add ?vers=3 for NFSv3)",
    "ssh://USER@HOST[:PORT]/PATH (an absolute path; /~/PATH is in the user's home)",
)

SMB_VERSIONS = ("3.1.1", "3.0", "2.1")
"""Tried in this order; ``?vers=`` names one (also 3.02, 2.0 or default)."""
SMB_ASKED = (*SMB_VERSIONS, "3.02", "2.0", "default")
NFS_VERSIONS = ("4.2", "4.1", "4.0")
"""Tried in this order; ``?vers=3`` (or 4, 4.0, 4.1, 4.2) names one."""
NFS_ASKED = ("3", "4", *NFS_VERSIONS)

_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<rest>.*)", re.DOTALL)
_AUTHORITY = re.compile(
    r"(?:(?P<userinfo>[^@/]*)@)?"
    r"(?P<host>\[[^\]/]*\]|[A-Za-z0-9_][A-Za-z0-9._-]*)"
    r"(?::(?P<port>[0-9]{1,5}))?"
)
# names that reach mount options or an ssh destination: nothing that separates options
_NAME = re.compile(r"[A-Za-z0-9_.$][A-Za-z0-9_.$@ -]*")


def looks_like_url(text: str) -> bool:
    """``text`` is meant as a URL (``scheme://``), not a local path."""
    return _URL.fullmatch(text) is not None


def _bad(text: str, why: str) -> BadInputError:
    return BadInputError(
        f"{_shown(text)!r} is not a share location rescue can use: {why}.",
        hint="Valid forms:\n  " + "\n  ".join(FORMS),
    )


@dataclass(frozen=True)
class ShareLocation:
    """A checked share URL, its parts decoded."""

    scheme: str
    host: str
    """A name or an address; an IPv6 address without its brackets."""
    path: tuple[str, ...]
    """Decoded folder names: for SMB the share first; for NFS the export's path and below."""
    user: str | None = None
    domain: str | None = None
    port: int | None = None
    version: str | None = None
    """The protocol version asked for with ``?vers=``; None: rescue's fallback order."""
    home_relative: bool = False
    """SSH: the path is under the user's home (``/~/``)."""

    @property
    def host_in_url(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def share(self) -> str:
        """SMB: the share's name."""
        return self.path[0]

    @property
    def name(self) -> str:
        return self.path[-1] if self.path else ""

    def url(self) -> str:
        """The URL back, normalised (never holds a secret: none was accepted)."""
        who = ""
        if self.user is not None:
            who = quote(self.user, safe="")
            if self.domain:
                who = f"{quote(self.domain, safe='')};{who}"
            who += "@"
        port = f":{self.port}" if self.port is not None else ""
        lead = "/~" if self.home_relative else ""
        path = "/".join(quote(p, safe="") for p in self.path)
        query = f"?vers={self.version}" if self.version else ""
        return f"{self.scheme}://{who}{self.host_in_url}{port}{lead}/{path}{query}"

    def __str__(self) -> str:
        return self.url()

    def child(self, name: str) -> ShareLocation:
        return replace(self, path=(*self.path, name))

    def split_image(self) -> tuple[ShareLocation, str]:
        """(the folder that holds the image, the image folder's name): the folder is mounted."""
        least = {"smb": 2, "nfs": 2, "ssh": 1}[self.scheme]
        if len(self.path) < least:
            what = {"smb": "the share", "nfs": "the export"}.get(self.scheme, "the server")
            raise _bad(self.url(), f"name the image folder inside {what}")
        return replace(self, path=self.path[:-1]), self.path[-1]


def _decoded(text: str, part: str, raw: str) -> str:
    value = unquote(raw, errors="strict")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise _bad(text, f"the {part} holds a control character")
    return value


def _check_name(text: str, part: str, value: str) -> str:
    if not _NAME.fullmatch(value):
        raise _bad(
            text,
            f"the {part} {value!r} may hold only letters, digits, spaces and . _ - $ @ "
            "(and not start with a space or -)",
        )
    return value


def _host(text: str, raw: str) -> str:
    if raw.startswith("["):
        inner = raw[1:-1]
        try:
            return str(ipaddress.IPv6Address(inner))
        except ValueError:
            raise _bad(text, f"{inner!r} in brackets is not an IPv6 address") from None
    if raw.replace(".", "").isdigit():
        try:
            return str(ipaddress.IPv4Address(raw))
        except ValueError:
            raise _bad(text, f"{raw!r} is not an IPv4 address") from None
    if raw.startswith(("-", ".")) or ".." in raw:
        raise _bad(text, f"{raw!r} is not a host name")
    return raw


def _version(text: str, scheme: str, query: str) -> str | None:
    if not query:
        return None
    key, sep, value = query.partition("=")
    allowed = {"smb": SMB_ASKED, "nfs": NFS_ASKED}.get(scheme, ())
    if not allowed:
        raise _bad(text, "ssh:// URLs take no options after '?'")
    if key != "vers" or not sep or "&" in value:
        raise _bad(text, f"the only option is ?vers= (one of {', '.join(allowed)})")
    if value not in allowed:
        raise _bad(text, f"vers={value} is not one of {', '.join(allowed)}")
    return value


def parse_location(text: str, *, server_only: bool = False) -> ShareLocation:
    """``text`` as a share location, or a BadInputError that shows the valid forms.

    ``server_only``: an smb:// URL may stop at the host (to list its shares)."""
    m = _URL.fullmatch(text)
    if m is None:
        raise _bad(text, "it does not start with smb://, nfs:// or ssh://")
    scheme = m["scheme"].lower()
    if scheme not in SCHEMES:
        raise _bad(text, f"{scheme}:// is not supported (only smb, nfs and ssh)")
    rest = m["rest"]
    if "#" in rest:
        raise _bad(text, "a URL for a share has no '#' part")
    rest, _, query = rest.partition("?")
    authority, slash, raw_path = rest.partition("/")
    if not slash and not (server_only and scheme == "smb"):
        raise _bad(text, "the host is not followed by a path")
    a = _AUTHORITY.fullmatch(authority)
    if a is None:
        if "@" in authority.rpartition("@")[0]:
            raise _bad(text, "it holds more than one '@' before the host")
        raise _bad(text, f"{authority!r} is not [USER@]HOST[:PORT]")
    user = domain = None
    info = a["userinfo"]
    if info is not None:
        if ":" in info:
            raise BadInputError(
                f"{_redacted(text)}: a password does not go into the URL "
                "(it would show in process lists and shell histories).",
                hint="Put it on the first line of a file readable only by root and give "
                "--password-file FILE, or leave it out to be asked for it.",
            )
        if ";" in info:
            if scheme != "smb":
                raise _bad(text, "only smb:// URLs take a DOMAIN; before the user")
            raw_domain, _, info = info.partition(";")
            domain = _check_name(text, "domain", _decoded(text, "domain", raw_domain))
        user = _check_name(text, "user name", _decoded(text, "user name", info))
    elif scheme == "ssh":
        raise _bad(text, "ssh:// needs the user name (ssh://USER@HOST/PATH)")
    host = _host(text, a["host"])
    port = None
    if a["port"] is not None:
        port = int(a["port"])
        if not 0 < port < 65536:
            raise _bad(text, f"port {port} is not between 1 and 65535")
    home_relative = False
    segments = raw_path.split("/")
    if scheme == "ssh" and segments[:1] == ["~"]:
        home_relative = True
        segments = segments[1:]
    parts: list[str] = []
    for raw in segments:
        if not raw:
            continue
        value = _decoded(text, "path", raw)
        if value in (".", "..") or "/" in value or "\\" in value:
            raise _bad(text, f"the path may not hold {value!r}")
        parts.append(value)
    if scheme == "smb":
        if not parts and not server_only:
            raise _bad(text, "smb:// needs the share's name after the host")
        if parts:
            _check_name(text, "share name", parts[0])
    if scheme == "nfs" and not parts:
        raise _bad(text, "nfs:// needs the export's path after the host")
    return ShareLocation(
        scheme=scheme, host=host, path=tuple(parts), user=user, domain=domain, port=port,
        version=_version(text, scheme, query), home_relative=home_relative,
    )  # fmt: skip


def _shown(text: str) -> str:
    """``text`` as it may be shown: redacted if something before the host looks like a password."""
    m = _URL.fullmatch(text)
    if m is None:
        return text
    authority = m["rest"].partition("/")[0]
    return _redacted(text) if ":" in authority.rpartition("@")[0] else text


def _redacted(text: str) -> str:
    """``text`` with whatever sits between ``//`` and ``@`` hidden: it may be a password."""
    m = _URL.fullmatch(text)
    if m is None:
        return "the location"
    authority = m["rest"].partition("/")[0]
    if "@" not in authority:
        return m["scheme"] + "://..."
    return f"{m['scheme']}://***@{authority.rpartition('@')[2]}/..."
