"""`rescue restore IMAGE_DIR TARGET [--yes]`: write an image back, after typed confirmation."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from rescue.cli.progress import reporter
from rescue.devices.safety import confirm
from rescue.operations.restore import LAYOUTS, RestorePlan, plan_restore, restore


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "restore", help="write an image onto a disk or partition (destroys what is there)"
    )
    p.add_argument("image_dir", type=Path)
    p.add_argument("target", help="disk (whole-disk image) or partition (partition image)")
    p.add_argument("--yes", action="store_true",
                   help="do not ask: for scripts that already chose the target")  # fmt: skip
    p.add_argument("--layout", choices=LAYOUTS, default="auto",
                   help="keep: the partitions as they were; grow: the last one fills a larger "
                   "disk; fit: partitions and filesystems shrink onto a smaller disk "
                   "(auto: grow on a larger disk, fit on a smaller one)")  # fmt: skip
    p.add_argument("--grow", type=int, metavar="N",
                   help="on a larger disk, partition N takes the new room instead of the last "
                   "one (the partitions after it move to the end of the disk)")  # fmt: skip
    p.add_argument("--new-ids", action="store_true",
                   help="new disk GUID, partition GUIDs and filesystem UUIDs (fstab updated): "
                   "for a clone next to the original")  # fmt: skip
    p.add_argument("--json", action="store_true", help="JSON progress lines on stdout")
    p.set_defaults(func=run)


def confirm_on_terminal(plan: RestorePlan, *, yes: bool) -> None:
    """Ask the technician to type the target's name; ``--yes`` answers for scripts."""

    print(plan.summary, file=sys.stderr)
    confirm(plan.target.path, yes=yes)


def run(args: argparse.Namespace) -> int:
    with reporter(args.json) as progress:
        plan = plan_restore(
            args.image_dir,
            args.target,
            args.layout,
            new_ids=args.new_ids,
            grow=args.grow,
            progress=progress,
        )
    confirm_on_terminal(plan, yes=args.yes)
    with reporter(args.json) as progress:
        restore(plan, confirmed=True, progress=progress)
    if not args.json:
        print(f"Restore complete: {args.image_dir} → {plan.target.path}.")
    return 0
