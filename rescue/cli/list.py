"""`rescue list`: every disk as the rest of the tool sees it."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from rescue.cli.columns import Cell, Column, Row, format_table, print_table
from rescue.devices import Disk, list_disks, to_json, udev_running
from rescue.units import human_size


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("list", help="list disks and partitions")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    disks = list_disks()
    probed = [d.name for d in disks if not d.from_udev]
    if probed:
        print(
            "rescue: udev has no data for "
            + ", ".join(probed)
            + (" (no udev daemon runs)" if not udev_running() else "")
            + ": filesystem types were probed from the disks; labels and UUIDs are unknown.",
            file=sys.stderr,
        )
    if args.json:
        print(to_json(disks))
        return 0
    print_table(COLUMNS, disk_rows(disks))
    return 0


COLUMNS = (
    Column("device", whole=True),
    Column("size", whole=True),
    Column("model / file", whole=True),
    Column("bus"),
    Column("table"),
    Column("fs"),
    Column("label"),
    Column("mounted on"),
    Column("flags", style="red"),
)
"""A device's path and model are never cut: the other columns wrap, as lsblk's do."""


def disk_rows(disks: list[Disk]) -> list[Row]:
    """A row per disk, then one per partition (its path indented)."""
    rows = []
    for d in disks:
        # the model (or the disk file) is one piece, never broken: the serial may go below it
        ident = (d.model or d.backing_file or "", f"({d.serial})" if d.serial else "")
        cells: tuple[Cell, ...] = (
            d.path, human_size(d.size), ident, d.transport or "", d.partition_table or "-",
            d.fstype or "", "", " ".join(d.mountpoints), " ".join(d.flags),
        )  # fmt: skip
        rows.append(Row(cells, styles=("bold",)))
        for p in d.partitions:
            label = tuple((p.partlabel or "").split())  # a partition's name wraps between words
            cells = (f"  {p.path}", human_size(p.size), label, "", "", p.fstype or "",
                     p.label or "", " ".join(p.mountpoints), " ".join(p.flags))  # fmt: skip
            rows.append(Row(cells))
    return rows


def format_disks(disks: list[Disk], width: int) -> str:
    """The table ``rescue list`` prints, as plain text for ``width`` columns."""
    return format_table(COLUMNS, disk_rows(disks), width)
