"""`rescue capture SOURCE IMAGE_DIR`: image a disk, a partition or a raw disk file."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rescue.cli.progress import reporter
from rescue.cli.sizes import parse_size
from rescue.copier import CompressionOptions
from rescue.operations.capture import capture


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "capture", help="image a disk or partition (only the used blocks)"
    )
    p.add_argument("source", help="disk, partition, or a file holding a raw disk")
    p.add_argument("image_dir", type=Path, help="new folder for the image")
    p.add_argument("--level", type=int, default=3, choices=range(1, 20), metavar="N",
                   help="zstd level 1-19 (default 3)")  # fmt: skip
    p.add_argument("--split", type=parse_size, default=None, metavar="SIZE",
                   help="split streams into volumes of SIZE (e.g. 4G); automatic on FAT"
                   )  # fmt: skip
    p.add_argument("--json", action="store_true", help="JSON progress lines on stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    options = CompressionOptions(level=args.level, split=args.split)
    with reporter(args.json) as progress:
        manifest = capture(args.source, args.image_dir, options=options, progress=progress)
    if not args.json:
        print(
            f"Image complete: {args.image_dir} ({len(manifest.partitions)} partition(s), "
            f"{manifest.used_bytes} used bytes)."
        )
    return 0
