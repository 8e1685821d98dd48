"""Keys for encrypted partitions on the command line: ``--passphrase-file`` and ``--key-file``.

``--passphrase-file PART=FILE`` takes the first line of FILE (a LUKS passphrase,
a BitLocker password or recovery password); ``--key-file PART=FILE`` its exact
bytes (a LUKS key file, a BitLocker ``.bek``). PART is the partition's device
path or kernel name. On a terminal, an encrypted partition without one is asked
for with a hidden prompt; an empty answer leaves it locked (stored whole). A key
is never an argument itself, so it never shows in a process list.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from rescue.containers.keys import Secret, SecretKind, passphrase_from_file
from rescue.errors import BadInputError
from rescue.operations.unlock import (
    EncryptedPartition,
    encrypted_image_partition,
    partition_name,
)
from rescue.units import human_size

MAX_KEY_FILE = 1 << 20
"""A key file larger than this is not one (cryptsetup's own default limit is 8 MiB)."""


def add_key_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--passphrase-file", action="append", default=[], metavar="PART=FILE",
                   help="open encrypted partition PART with the first line of FILE "
                   "(LUKS passphrase, BitLocker password or recovery password)"
                   )  # fmt: skip
    p.add_argument("--key-file", action="append", default=[], metavar="PART=FILE",
                   help="open encrypted partition PART with the exact bytes of FILE "
                   "(LUKS key file, BitLocker .bek startup key)"
                   )  # fmt: skip


def _read_key_file(path: Path, option: str) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_KEY_FILE + 1)
    except OSError as exc:
        raise BadInputError(f"{option}: cannot read {path}: {exc.strerror or exc}.") from None
    if len(data) > MAX_KEY_FILE:
        raise BadInputError(f"{option}: {path} is larger than any key file ({MAX_KEY_FILE} bytes).")
    if not data:
        raise BadInputError(f"{option}: {path} is empty.")
    return data


def _given(args: argparse.Namespace) -> list[tuple[str, str, SecretKind]]:
    """Every ``--passphrase-file`` and ``--key-file`` value, with its option and kind."""
    given = [("--passphrase-file", v, SecretKind.PASSPHRASE) for v in args.passphrase_file]
    return given + [("--key-file", v, SecretKind.KEY_FILE) for v in args.key_file]


def first_line_of(path: Path, option: str) -> bytes:
    """The first line of a passphrase or password file (refused when empty or too large)."""
    data = passphrase_from_file(_read_key_file(path, option))
    if not data:
        raise BadInputError(f"{option}: the first line of {path} is empty.")
    return data


def _secret_from(option: str, file: str, kind: SecretKind) -> Secret:
    """The key in ``file``: its first line for a passphrase, its exact bytes otherwise."""
    if kind == SecretKind.PASSPHRASE:
        return Secret(kind, first_line_of(Path(file), option))
    return Secret(kind, _read_key_file(Path(file), option))


def add_volume_arguments(p: argparse.ArgumentParser) -> None:
    """``--volume`` and one key, for commands that open one partition of an image."""
    p.add_argument("--volume", metavar="VG/LV",
                   help="the logical volume to open, when the partition holds several")  # fmt: skip
    p.add_argument("--passphrase-file", action="append", default=[], metavar="[PART=]FILE",
                   help="open an encrypted partition with the first line of FILE")  # fmt: skip
    p.add_argument("--key-file", action="append", default=[], metavar="[PART=]FILE",
                   help="open an encrypted partition with the exact bytes of FILE")  # fmt: skip


def secret_for_image(
    args: argparse.Namespace, image_dir: Path, number: int | None
) -> Secret | None:
    """The one key given for the partition to open (``PART=`` is optional), or asked for.

    On a terminal, an encrypted partition opened without a key asks for one.
    """
    given = _given(args)
    if len(given) > 1:
        raise BadInputError("Give one key: the partition to open is one partition.")
    if given:
        option, value, kind = given[0]
        part, sep, file = value.partition("=")
        if not sep or ("/" in part and not part.startswith("/dev/")):
            file = value
        return _secret_from(option, file, kind)
    what = encrypted_image_partition(image_dir, number)
    if what is None or not sys.stdin.isatty():
        return None
    typed = getpass.getpass(f"{what}. Passphrase or recovery password: ")
    return Secret(SecretKind.PASSPHRASE, typed.encode()) if typed else None


def secrets_from(args: argparse.Namespace) -> dict[str, Secret]:
    """The keys named on the command line, by partition kernel name."""
    out: dict[str, Secret] = {}
    for option, value, kind in _given(args):
        part, sep, file = value.partition("=")
        if not sep or not part or not file:
            raise BadInputError(f"{option} takes PART=FILE (e.g. /dev/sda3=/root/pass.txt).")
        name = partition_name(part)
        if name in out:
            raise BadInputError(f"Two keys were given for {name}: give one.")
        out[name] = _secret_from(option, file, kind)
    return out


def ask_for_missing(
    secrets: dict[str, Secret], encrypted: list[EncryptedPartition]
) -> dict[str, Secret]:
    """On a terminal, ask for the key of each encrypted partition that has none."""
    if not sys.stdin.isatty():
        return secrets
    for part in encrypted:
        if part.name in secrets:
            continue
        typed = getpass.getpass(
            f"{part.name} is {part.what}. Passphrase or recovery password "
            f"(empty: leave it locked and store all {human_size(part.size)} as they are): "
        )
        if typed:
            secrets[part.name] = Secret(SecretKind.PASSPHRASE, typed.encode())
    return secrets
