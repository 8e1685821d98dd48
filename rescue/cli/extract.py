"""`rescue extract`: copy files or folders out of an image without restoring it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rescue.browse.extract import describe_failures, describe_left_out
from rescue.browse.session import BrowseSession
from rescue.cli.image_key import add_image_key_argument, unlock_if_encrypted
from rescue.cli.keys import add_volume_arguments, secret_for_image
from rescue.cli.locations import add_share_arguments, image_location
from rescue.cli.progress import reporter
from rescue.errors import EXIT_FAILED


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "extract", help="copy files or folders out of an image (no restore needed)"
    )
    p.add_argument("image_dir", help="image folder, or a share URL (smb://, nfs://, ssh://)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="paths inside the partition")
    p.add_argument("--partition", type=int, metavar="N", help="partition number")
    p.add_argument("--to", type=Path, required=True, metavar="DIR", help="destination folder")
    p.add_argument(
        "--no-special",
        action="store_true",
        help="drop set-uid/set-gid bits and file capabilities; create no device node, "
        "FIFO or socket (each one listed)",
    )
    p.add_argument("--json", action="store_true", help="JSON progress lines on stdout")
    add_volume_arguments(p)
    add_image_key_argument(p)
    add_share_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with image_location(args.image_dir, args, read_only=True) as local:
        return _extract_from(args, local)


def _extract_from(args: argparse.Namespace, local: Path) -> int:
    unlock_if_encrypted(local, args)
    secret = secret_for_image(args, local, args.partition)
    with (
        reporter(args.json) as progress,
        BrowseSession(
            local, args.partition, progress=progress, volume=args.volume, secret=secret
        ) as session,
    ):
        result = session.extract(args.paths, args.to, progress=progress, no_special=args.no_special)
    specials = f", {result.specials} special file(s)" if result.specials else ""
    summary = (
        f"{result.files} file(s), {result.folders} folder(s), {result.symlinks} symlink(s)"
        f"{specials}, {result.bytes} bytes copied to {args.to}."
    )
    if left_out := describe_left_out(result):
        print(left_out)
    if not result.ok:
        print(f"rescue: extract INCOMPLETE: {len(result.failed)} item(s) could not be copied:")
        print(describe_failures(result))
        print(summary)
        return EXIT_FAILED
    print(summary)
    return 0
