"""`rescue consolidate IMAGE_DIR OUT_DIR`: a full image from an incremental one and its bases."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rescue.cli.progress import reporter
from rescue.operations.consolidate import consolidate
from rescue.text import shown


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "consolidate",
        help="write the full image an incremental one stands for (needs no source disk)",
    )
    p.add_argument("image_dir", type=Path, help="the incremental image (its bases beside it)")
    p.add_argument("out_dir", type=Path, help="a new folder for the full image")
    p.add_argument("--json", action="store_true", help="JSON progress lines on stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with reporter(args.json) as progress:
        manifest = consolidate(args.image_dir, args.out_dir, progress=progress)
    if not args.json:
        print(
            f"Full image written: {shown(args.out_dir)} ({len(manifest.partitions)} "
            f"partition(s), {manifest.used_bytes} used bytes); it restores alone, with rescue "
            "or stock Clonezilla."
        )
    return 0
