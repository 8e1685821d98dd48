"""`rescue mount-share URL MNT`: a network share as a folder, for scripts;
`rescue list-shares smb://[DOMAIN;]USER@HOST`: the shares an SMB server offers.

``rescue unmount MNT`` takes a mounted share down again (see ``rescue/cli/mount.py``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rescue.cli.locations import add_share_arguments, credentials_from
from rescue.errors import BadInputError
from rescue.shares.location import FORMS, parse_location
from rescue.shares.mounts import mount_share
from rescue.shares.smb import list_shares
from rescue.text import shown


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "mount-share",
        help="mount a network share (smb://, nfs://, ssh://) at a folder",
        description="Mount a network share at MNT. URL forms: " + "; ".join(FORMS) + ".",
    )
    p.add_argument("url", metavar="URL")
    p.add_argument("mountpoint", type=Path, metavar="MNT", help="an empty folder (made if missing)")
    p.add_argument("--read-only", action="store_true", help="mount it read-only")
    add_share_arguments(p)
    p.set_defaults(func=run)

    ls: argparse.ArgumentParser = sub.add_parser(
        "list-shares", help="the shares an SMB server offers (where it lists them)"
    )
    ls.add_argument("url", metavar="smb://[DOMAIN;]USER@HOST")
    add_share_arguments(ls)
    ls.set_defaults(func=run_list)


def run_list(args: argparse.Namespace) -> int:
    loc = parse_location(args.url, server_only=True)
    if loc.scheme != "smb":
        raise BadInputError("Only SMB servers list their shares: give smb://[USER@]HOST.")
    creds = credentials_from(args, loc)
    found = list_shares(loc, creds.password)
    base = loc.url().rstrip("/")
    for name, comment in found:
        print(f"{shown(base)}/{shown(name)}" + (f"  ({shown(comment)})" if comment else ""))
    if not found:
        print(f"{shown(loc.host_in_url)} lists no shares to this user.")
    return 0


def run(args: argparse.Namespace) -> int:
    loc = parse_location(args.url)
    mounted = mount_share(
        loc, args.mountpoint, credentials_from(args, loc), read_only=args.read_only
    )
    mode = "read-only" if args.read_only else "read-write"
    print(
        f"Mounted {shown(mounted.url)} {mode} at {shown(mounted.mountpoint)}.\n"
        f"When done: rescue unmount {shown(mounted.mountpoint)}"
    )
    return 0
