"""Image locations on the command line: a local folder or a share URL, mounted for the command.

Any command that takes an image folder takes a URL too, in three steps::

    add_share_arguments(p)                     # --password-file, --identity, --host-key
    p.add_argument("image_dir")                # a str: Path() would fold the URL's //
    ...
    with image_location(args.image_dir, args, read_only=True) as folder:
        ...                                    # folder: a local Path inside the mounted share

The share is mounted in a private folder for the command and taken down when the
block ends, also on an error or Ctrl-C. A password comes from the first line of
``--password-file`` or, on a terminal, a hidden prompt; never from an argument.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import getpass
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from rescue.cli.keys import first_line_of
from rescue.cli.report import report
from rescue.errors import BadInputError, RescueError
from rescue.shares.errors import ConnectionDroppedError
from rescue.shares.hostkeys import HostKey, describe
from rescue.shares.location import ShareLocation, looks_like_url, parse_location
from rescue.shares.mounts import Credentials, private_share, writing_error


def add_share_arguments(p: argparse.ArgumentParser) -> None:
    """The options that log in to a share (``--password-file`` is not ``--passphrase-file``)."""
    p.add_argument("--password-file", type=Path, metavar="FILE",
                   help="the share's password: the first line of FILE (SMB, SSH)")  # fmt: skip
    p.add_argument("--identity", type=Path, metavar="FILE",
                   help="SSH: log in with this private key instead of a password")  # fmt: skip
    p.add_argument("--host-key", metavar="SHA256:...",
                   help="SSH: the server key's fingerprint, for a server rescue does not "
                   "know yet (on a terminal it is shown to confirm instead)")  # fmt: skip


def _password_from(path: Path) -> bytes:
    return first_line_of(path, "--password-file")


def _confirm_on_terminal(entry: str, keys: list[HostKey]) -> bool:
    print(
        f"The SSH server {entry} is not known yet. Its keys:\n{describe(keys)}\n"
        "Compare with the server's own (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub).",
        file=sys.stderr,
    )
    answer = input("Is this the server? Type yes to go on: ")
    return answer.strip().lower() == "yes"


def credentials_from(args: argparse.Namespace, loc: ShareLocation) -> Credentials:
    """The log-in for ``loc`` from the parsed options, asking on a terminal what is missing."""
    file = getattr(args, "password_file", None)
    identity = getattr(args, "identity", None)
    host_key = getattr(args, "host_key", None)
    if loc.scheme != "ssh" and (identity or host_key):
        raise BadInputError("--identity and --host-key are for ssh:// locations only.")
    if loc.scheme == "nfs" and file:
        raise BadInputError("NFS shares take no password (the server trusts by address).")
    if file and identity:
        raise BadInputError("Give --password-file or --identity, not both.")
    if identity is not None and not identity.is_file():
        raise BadInputError(f"--identity: {identity} is not a file.")
    terminal = sys.stdin.isatty()
    password = _password_from(file) if file else None
    if password is None and identity is None and loc.user is not None and terminal:
        hint = " (empty: use SSH keys)" if loc.scheme == "ssh" else ""
        typed = getpass.getpass(f"Password for {loc.user} on {loc.host_in_url}{hint}: ")
        password = typed.encode() if typed else None
    if password is None and loc.scheme == "smb" and loc.user is not None and not terminal:
        raise BadInputError(
            f"{loc}: no password given.",
            hint="Give --password-file FILE (its first line), or leave the user out of "
            "the URL for guest access.",
        )
    return Credentials(
        password=password, identity=identity, host_key=host_key,
        confirm_host_key=_confirm_on_terminal if terminal else None,
    )  # fmt: skip


def is_share(where: str | Path) -> bool:
    return isinstance(where, str) and looks_like_url(where)


@contextlib.contextmanager
def image_location(where: str, args: argparse.Namespace, *, read_only: bool) -> Iterator[Path]:
    """``where`` as a local path: itself, or the image folder inside its mounted share.

    The share's folder that holds the image is what gets mounted (read-only for
    a source), so a capture's new folder can be made there.
    """
    if not is_share(where):
        yield Path(where)
        return
    loc = parse_location(where)
    holder, name = loc.split_image()
    creds = credentials_from(args, loc)
    with private_share(holder, creds, read_only=read_only, on_stuck=_give_up(where, args)) as f:
        yield f / name


def _give_up(where: str, args: argparse.Namespace) -> Callable[[], None]:
    """How a command ends when its share's server went away and the kernel does not give
    back the read or write that waits on it (cifs waits for the server's credits until the
    process ends): the message that read or write would have given, then the end."""

    def give_up() -> None:
        gone = OSError(errno.EHOSTDOWN, os.strerror(errno.EHOSTDOWN))
        error: RescueError
        if args.command == "capture":
            error = writing_error(gone, source=args.source, image=where)
        else:
            error = ConnectionDroppedError(
                f"The server of {where} stopped answering: rescue {args.command} did not finish.",
                hint="Once it answers again (check the network and the server), run the "
                "same command again.",
            )
        print(file=sys.stderr)  # off a progress line
        report(error)
        # the only way out of the kernel's wait; the next command takes the mount down
        os._exit(error.exit_code)

    return give_up
