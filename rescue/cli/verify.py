"""`rescue verify IMAGE_DIR`: read every byte and check every checksum."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rescue.cli.progress import reporter
from rescue.operations.verify import verify


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("verify", help="check an image completely")
    p.add_argument("image_dir", type=Path)
    p.add_argument("--json", action="store_true", help="JSON progress lines on stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with reporter(args.json) as progress:
        report = verify(args.image_dir, progress=progress)
    if not args.json:
        for note in report.notes:
            print(f"note: {note}")
        print(
            f"Image intact: {report.files_checked} file(s) hashed, "
            f"{report.streams_checked} stream(s) decoded."
        )
    return 0
