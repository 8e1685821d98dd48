"""Keys that open encrypted layers, kept out of every file, log and message.

A :class:`Secret` holds the bytes a technician gave for one partition: a
passphrase (the first line of a file, or typed at a prompt) or a key file's
exact bytes. Its ``repr`` and ``str`` never show them, so a secret that ends up
in a log line, an exception or ``--debug`` output shows only its kind. Tools
that need one read it from a pipe, never from their arguments.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class SecretKind(enum.StrEnum):
    PASSPHRASE = "passphrase"  # noqa: S105 (the name of a kind, not a secret)
    """Typed or the first line of a file: a LUKS passphrase, a BitLocker password or
    recovery password (48 digits in groups of six)."""
    KEY_FILE = "key file"
    """Exact bytes: a LUKS key file, a BitLocker startup key (``.bek``)."""


@dataclass(frozen=True)
class Secret:
    kind: SecretKind
    value: bytes = field(repr=False)

    def __str__(self) -> str:
        return f"<{self.kind}>"

    def __repr__(self) -> str:
        return f"Secret({self.kind.value!r}, <hidden>)"


def passphrase_from_file(data: bytes) -> bytes:
    """The first line of a passphrase file, without its line ending."""
    return data.split(b"\n", 1)[0].rstrip(b"\r")


def encode_for_pipe(secret: Secret | None) -> bytes:
    """``secret`` framed for another process's standard input (kind, newline, bytes)."""
    if secret is None:
        return b"none\n"
    return secret.kind.value.encode() + b"\n" + secret.value


def decode_from_pipe(data: bytes) -> Secret | None:
    """The secret :func:`encode_for_pipe` framed (None when none was given)."""
    kind, _, value = data.partition(b"\n")
    if kind == b"none":
        return None
    return Secret(SecretKind(kind.decode("ascii", errors="replace")), value)
