"""`rescue mount` and `rescue unmount`: an image partition as a read-only folder.

The image may be on a share (``rescue mount smb://.../IMAGE MNT``): its folder
on the share is mounted read-only first, in rescue's own folder, recorded as held
for the image mount, and taken down when ``rescue unmount MNT`` takes the image
down (or when the image mount fails).
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Any

from rescue.browse import mounts
from rescue.cli.image_key import add_image_key_argument, unlock_if_encrypted
from rescue.cli.keys import add_volume_arguments, secret_for_image
from rescue.cli.locations import add_share_arguments, credentials_from, is_share
from rescue.cli.progress import reporter
from rescue.errors import BadInputError, RescueError
from rescue.shares import mounts as share_mounts
from rescue.shares.location import parse_location
from rescue.text import shown


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "mount", help="mount a partition of an image read-only (no restore needed)"
    )
    p.add_argument("image_dir", help="the image folder, or its smb://, nfs:// or ssh:// URL")
    p.add_argument("mountpoint", type=Path, help="an empty folder (made if missing)")
    p.add_argument(
        "--partition",
        type=int,
        metavar="N",
        help="partition number (needed when the image holds several)",
    )
    p.add_argument("--json", action="store_true", help="JSON progress lines on stdout")
    add_volume_arguments(p)
    add_image_key_argument(p)
    add_share_arguments(p)
    p.set_defaults(func=run_mount)

    u: argparse.ArgumentParser = sub.add_parser(
        "unmount",
        help="unmount an image mounted by rescue mount (or a share by rescue mount-share), "
        "leaving nothing behind",
    )
    u.add_argument("mountpoint", type=Path, nargs="?")
    u.add_argument("--all", action="store_true", help="unmount every image rescue has mounted")
    u.set_defaults(func=run_unmount)


def run_mount(args: argparse.Namespace) -> int:
    if not is_share(args.image_dir):
        return _mount_folder(Path(args.image_dir), args)
    loc = parse_location(args.image_dir)
    holder, name = loc.split_image()
    creds = credentials_from(args, loc)
    share = share_mounts.mount_share(
        holder, share_mounts.holder_folder(), creds, read_only=True,
        holds_for=args.mountpoint.absolute(),
    )  # fmt: skip
    try:
        return _mount_folder(Path(share.mountpoint) / name, args)
    except BaseException:
        with contextlib.suppress(RescueError, OSError):
            share_mounts.unmount_share(share.mountpoint)
        raise


def _mount_folder(folder: Path, args: argparse.Namespace) -> int:
    unlock_if_encrypted(folder, args)
    secret = secret_for_image(args, folder, args.partition)
    with reporter(args.json) as progress:
        mounted = mounts.mount_image(
            folder, args.mountpoint, partition=args.partition, progress=progress,
            volume=args.volume, secret=secret,
        )  # fmt: skip
    rec = mounted.record
    if not args.json:
        print(
            f"Mounted {shown(mounted.part.name)} ({shown(rec.fstype)}) of {shown(args.image_dir)} "
            f"read-only at {shown(rec.mountpoint)}.\n"
            f"When done: rescue unmount {shown(rec.mountpoint)}"
        )
    return 0


def run_unmount(args: argparse.Namespace) -> int:
    if args.all:
        done = mounts.unmount_all()
        swept = mounts.sweep()
        for share in share_mounts.records():
            if share.holds_for is not None:
                share_mounts.unmount_share(share.mountpoint)
        print(f"Unmounted {len(done) + len(swept)} image(s).")
        return 0
    if args.mountpoint is None:
        raise BadInputError("Name the folder to unmount, or use --all.")
    if share_mounts.find(args.mountpoint) is not None:
        share = share_mounts.unmount_share(args.mountpoint)
        print(f"Unmounted {shown(share.url)} from {shown(share.mountpoint)}.")
        return 0
    try:
        rec = mounts.unmount(args.mountpoint)
    except BadInputError:
        raise BadInputError(
            f"Neither an image (rescue mount) nor a share (rescue mount-share) is mounted "
            f"at {args.mountpoint} by rescue: rescue unmount leaves other mounts alone.",
            hint="Unmount it with the tool that mounted it (umount, fusermount3 -u).",
        ) from None
    print(f"Unmounted {shown(rec.image)} from {shown(rec.mountpoint)}.")
    for share in share_mounts.held_for(rec.mountpoint):
        share_mounts.unmount_share(share.mountpoint)
        print(f"Unmounted the share {shown(share.url)} it was read from.")
    return 0
