"""`rescue decrypt IMAGE_DIR OUT_DIR`: a plain Clonezilla image from an encrypted one."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rescue.cli.image_key import add_image_key_argument, unlock_if_encrypted
from rescue.cli.progress import reporter
from rescue.operations.decrypt import decrypt
from rescue.text import shown


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "decrypt", help="write a plain (Clonezilla-readable) copy of an encrypted image"
    )
    p.add_argument("image_dir", type=Path, help="the encrypted image")
    p.add_argument("out_dir", type=Path, help="a new folder for the plain copy")
    p.add_argument("--json", action="store_true", help="JSON progress lines on stdout")
    add_image_key_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    unlock_if_encrypted(args.image_dir, args)  # decrypt says what is missing, if anything
    with reporter(args.json) as progress:
        manifest = decrypt(args.image_dir, args.out_dir, progress=progress)
    if not args.json:
        print(
            f"Plain image written: {shown(args.out_dir)} ({len(manifest.partitions)} "
            "partition(s)); it restores with rescue or stock Clonezilla and holds no key."
        )
    return 0
