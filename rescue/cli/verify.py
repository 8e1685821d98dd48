"""`rescue verify IMAGE_DIR`: read every byte and check every checksum."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rescue.cli.image_key import add_image_key_argument, unlock_if_encrypted
from rescue.cli.locations import add_share_arguments, image_location
from rescue.cli.progress import reporter
from rescue.image.view import ImageView, open_image
from rescue.operations.verify import is_locked, verify
from rescue.text import shown
from rescue.units import human_size


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("verify", help="check an image completely")
    p.add_argument("image_dir", help="image folder, or a share URL (smb://, nfs://, ssh://)")
    add_share_arguments(p)
    p.add_argument("--json", action="store_true", help="JSON progress lines on stdout")
    add_image_key_argument(p)
    p.set_defaults(func=run)


def checked_lines(image: ImageView) -> list[str]:
    """What is checked: a line per partition, its names shown safely."""
    lines = [f"Checking {shown(image.folder)} ({image.kind} image):"]
    for p in image.parts:
        label = f" label {shown(repr(p.label))}" if p.label else ""
        lines.append(
            f"  {shown(p.name)} {shown(p.fstype or 'raw')}{label}, {human_size(p.size)}, "
            f"stored as {shown(p.stored_as)}"
        )
    return lines


def run(args: argparse.Namespace) -> int:
    with image_location(args.image_dir, args, read_only=True) as local:
        return _verify(args, local)


def _verify(args: argparse.Namespace, local: Path) -> int:
    unlock_if_encrypted(local, args)
    if not args.json and not is_locked(local):
        for line in checked_lines(open_image(local)):
            print(line)
    with reporter(args.json) as progress:
        report = verify(local, progress=progress)
    if not args.json:
        for note in report.notes:
            print(f"note: {shown(note)}")
        print(
            f"Image intact: {report.files_checked} file(s) hashed, "
            f"{report.streams_checked} stream(s) decoded."
        )
    return 0
