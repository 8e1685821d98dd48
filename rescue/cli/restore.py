"""`rescue restore IMAGE_DIR TARGET [--yes]`: write an image back, after typed confirmation.

Before asking, it prints what will be written where (the target, the image, each
partition's planned place: :func:`rescue.operations.plan_text.describe_plan`).
With ``--verify-first`` (the default for an image rescue did not write) the
whole image is verified before the first byte is written. Without an image
folder it lists the images found on the mounted drives (where the UI looks,
:mod:`rescue.operations.finding`) and refuses: nothing is written.
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
from pathlib import Path
from typing import Any, NoReturn

from rescue.cli.columns import Column, Row, print_table, terminal_width
from rescue.cli.image_key import add_image_key_argument, unlock_if_encrypted
from rescue.cli.locations import add_share_arguments, image_location
from rescue.cli.progress import reporter
from rescue.devices.safety import confirm
from rescue.errors import BadInputError
from rescue.image.view import find_images
from rescue.operations.finding import FoundImage, describe_found, search_roots
from rescue.operations.plan_text import (
    default_verify_first,
    describe_plan,
    restore_checked,
)
from rescue.operations.restore import LAYOUTS, RestorePlan, plan_restore
from rescue.text import shown
from rescue.units import human_size


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "restore", help="write an image onto a disk or partition (destroys what is there)"
    )
    p.add_argument("image_dir", nargs="?",
                   help="the image folder or a share URL (smb://, nfs://, ssh://; none: list "
                   "the images on the drives)")  # fmt: skip
    p.add_argument("target", nargs="?",
                   help="disk (whole-disk image) or partition (partition image)")  # fmt: skip
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
    p.add_argument("--verify-first", action=argparse.BooleanOptionalAction, default=None,
                   help="read and check the whole image before writing anything, and write "
                   "nothing if it is damaged (default: on for an image rescue did not write, "
                   "such as Clonezilla's; off for rescue's own, whose files' sizes are "
                   "checked; --no-verify-first skips it)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="JSON progress lines on stdout")
    add_image_key_argument(p)
    add_share_arguments(p)
    p.set_defaults(func=run)


def confirm_on_terminal(plan: RestorePlan, *, yes: bool, verify_first: bool | None = None) -> None:
    """Print what will be written where, then ask the technician to type the target's name;
    ``--yes`` answers for scripts."""
    width = terminal_width()
    for section in describe_plan(plan, verify_first=verify_first):
        print(wrapped(f"{section.title}:", width, "", "  "), file=sys.stderr)
        for line in section.lines:
            print(wrapped(line, width, "  ", "      "), file=sys.stderr)
    confirm(plan.target.path, yes=yes)


_SIZE = re.compile(r"(\d) (B|KiB|MiB|GiB|TiB|PiB)\b")


def wrapped(line: str, width: int | None, indent: str, more: str) -> str:
    """One fact, indented, folded between words to ``width`` (None: as it is); the lines
    it continues on are indented by ``more``. A path, a name or a size is never broken."""
    if width is None:
        return f"{indent}{line}"
    kept = _SIZE.sub("\\1\N{NO-BREAK SPACE}\\2", line)  # textwrap does not break there
    text = textwrap.fill(
        kept, max(width, 40), initial_indent=indent, subsequent_indent=more,
        break_long_words=False, break_on_hyphens=False,
    )  # fmt: skip
    return text.replace("\N{NO-BREAK SPACE}", " ")


FOUND_COLUMNS = (
    Column("image folder", whole=True),
    Column("made"),
    Column("source"),
    Column("size"),
    Column("data"),
)


def found_rows(found: list[FoundImage]) -> list[Row]:
    """A row per image; one that cannot be restored says why under it."""
    rows = []
    for f in found:
        made = f.made.astimezone().strftime("%Y-%m-%d %H:%M") if f.made else "?"
        size = human_size(f.size) if f.size is not None else "?"
        used = human_size(f.used) if f.used is not None else "?"
        note = f"not usable: {f.problem}" if f.problem else ""
        cells = (shown(f.folder), made, shown(f.source or "?"), size, used)
        rows.append(Row(cells, note=shown(note)))
    return rows


def list_found() -> NoReturn:
    """The images on the drives, then a refusal saying how to name one."""
    roots = search_roots()
    found = [describe_found(folder) for folder in find_images(roots)]
    if not found:
        where = ", ".join(str(r) for r in roots) or "no folder"
        raise BadInputError(
            f"Give the image folder to restore: none was found on the drives ({where}).",
            hint="Mount the drive holding the image, or name its folder: "
            "rescue restore IMAGE_DIR TARGET",
        )
    print_table(FOUND_COLUMNS, found_rows(found))
    raise BadInputError(
        f"Give the image folder to restore ({len(found)} found on the drives, above).",
        hint="Name one: rescue restore IMAGE_DIR TARGET (rescue list shows the disks).",
    )


def run(args: argparse.Namespace) -> int:
    if args.image_dir is None:
        list_found()
    if args.target is None:
        raise BadInputError(
            f"Give the disk or partition to write {args.image_dir} onto.",
            hint=f"Name it: rescue restore {args.image_dir} TARGET (rescue list shows the disks).",
        )
    with image_location(args.image_dir, args, read_only=True) as local:
        return _restore_from(args, local)


def _restore_from(args: argparse.Namespace, local: Path) -> int:
    unlock_if_encrypted(local, args)
    with reporter(args.json) as progress:
        plan = plan_restore(
            local,
            args.target,
            args.layout,
            new_ids=args.new_ids,
            grow=args.grow,
            progress=progress,
        )
    verify_first = args.verify_first
    if verify_first is None:
        verify_first = default_verify_first(plan.image)
    confirm_on_terminal(plan, yes=args.yes, verify_first=verify_first)
    with reporter(args.json) as progress:
        restore_checked(plan, confirmed=True, verify_first=verify_first, progress=progress)
    if not args.json:
        print(f"Restore complete: {shown(args.image_dir)} → {shown(plan.target.path)}.")
    return 0
