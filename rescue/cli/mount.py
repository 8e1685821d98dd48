"""`rescue mount` and `rescue unmount`: an image partition as a read-only folder."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rescue.browse import mounts
from rescue.cli.image_key import add_image_key_argument, unlock_if_encrypted
from rescue.cli.keys import add_volume_arguments, secret_for_image
from rescue.cli.progress import reporter
from rescue.errors import BadInputError
from rescue.operations.plan_text import shown
from rescue.shares import mounts as share_mounts


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "mount", help="mount a partition of an image read-only (no restore needed)"
    )
    p.add_argument("image_dir", type=Path)
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
    unlock_if_encrypted(args.image_dir, args)
    secret = secret_for_image(args, args.image_dir, args.partition)
    with reporter(args.json) as progress:
        mounted = mounts.mount_image(
            args.image_dir, args.mountpoint, partition=args.partition, progress=progress,
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
    return 0
