"""The passphrase of an encrypted image on the command line: ``--image-passphrase-file``.

Every command that opens an image takes ``--image-passphrase-file FILE`` (the
first line of FILE, without its line end); on a terminal, an encrypted image
without one is asked for with a hidden prompt. ``rescue capture --encrypt`` makes
an encrypted image: the passphrase comes from the same option, or is typed twice.
The passphrase is never an argument itself, so it never shows in a process list,
and it is never written anywhere.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from rescue.cli.keys import first_line_of
from rescue.containers.keys import Secret, SecretKind
from rescue.errors import BadInputError, WrongKeyError
from rescue.image.sealing import is_encrypted, unlock_image


def add_image_key_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image-passphrase-file", type=Path, metavar="FILE",
                   help="open an encrypted image with the first line of FILE "
                   "(on a terminal you are asked when it is not given)")  # fmt: skip


def _from_file(path: Path) -> Secret:
    return Secret(SecretKind.PASSPHRASE, first_line_of(path, "--image-passphrase-file"))


def _asked(prompt: str) -> bytes:
    try:
        return getpass.getpass(prompt).encode()
    except EOFError:
        return b""


def new_image_key(args: argparse.Namespace) -> Secret | None:
    """The passphrase of a new encrypted image (``--encrypt``), or None for a plain one
    (and for ``--resume``: the interrupted capture's folder says whether it is)."""
    if args.resume is not None:
        return None
    if not getattr(args, "encrypt", False):
        if args.image_passphrase_file is not None:
            raise BadInputError(
                "--image-passphrase-file without --encrypt: a new image is encrypted only "
                "with --encrypt."
            )
        return None
    if args.image_passphrase_file is not None:
        return _from_file(args.image_passphrase_file)
    if not sys.stdin.isatty():
        raise BadInputError(
            "--encrypt needs a passphrase: give --image-passphrase-file FILE, or run on a "
            "terminal to type it."
        )
    first = _asked("Passphrase for the new image: ")
    if not first:
        raise BadInputError("An encrypted image needs a passphrase; none was typed.")
    if _asked("The same passphrase again: ") != first:
        raise BadInputError("The two passphrases differ; nothing was written.")
    return Secret(SecretKind.PASSPHRASE, first)


def image_key_for(folder: Path, args: argparse.Namespace) -> Secret | None:
    """The passphrase for the existing image in ``folder``: from the option, or asked on a
    terminal when the image is encrypted (None: not encrypted, or nobody to ask)."""
    path = getattr(args, "image_passphrase_file", None)
    if path is not None:
        return _from_file(path)
    if not folder.is_dir() or not is_encrypted(folder) or not sys.stdin.isatty():
        return None
    value = _asked(f"Passphrase of the encrypted image {folder}: ")
    return Secret(SecretKind.PASSPHRASE, value) if value else None


def unlock_if_encrypted(folder: Path, args: argparse.Namespace) -> Secret | None:
    """Open an encrypted image with its passphrase before a command reads it; returns the
    passphrase when it was opened. A plain image needs nothing; an encrypted one with no
    passphrase stays locked (the command then says how to give one)."""
    if not folder.is_dir() or not is_encrypted(folder):
        return None
    key = image_key_for(folder, args)
    if key is None:
        return None
    try:
        unlock_image(folder, key.value)
    except WrongKeyError:
        raise WrongKeyError(
            f"The passphrase does not open the encrypted image {folder}; nothing was read "
            "or written.",
            hint="Check the passphrase (the first line of --image-passphrase-file is used).",
        ) from None
    return key
