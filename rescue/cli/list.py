"""`rescue list`: every disk as the rest of the tool sees it."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from rescue.cli.columns import Cell, Column, Row, format_table, print_table, terminal_width
from rescue.devices import Disk, list_disks, to_json, udev_running
from rescue.text import shown
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
    print_table(*layout_for(disks, terminal_width()))
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
        ident = (shown(d.model or d.backing_file or ""), f"({shown(d.serial)})" if d.serial else "")
        cells: tuple[Cell, ...] = (
            shown(d.path), human_size(d.size), ident, shown(d.transport or ""),
            shown(d.partition_table or "-"), shown(d.fstype or ""), "", _mounts(d.mountpoints),
            " ".join(d.flags),
        )  # fmt: skip
        rows.append(Row(cells, styles=("bold",)))
        for p in d.partitions:
            # a partition's name wraps between words
            label = tuple(shown(p.partlabel or "").split())
            cells = (f"  {shown(p.path)}", human_size(p.size), label, "", "",
                     shown(p.fstype or ""), shown(p.label or ""), _mounts(p.mountpoints),
                     " ".join(p.flags))  # fmt: skip
            rows.append(Row(cells))
    return rows


STACKED = (
    Column("device", whole=True),
    Column("size", whole=True),
    Column("bus"),
    Column("table"),
    Column("fs"),
    Column("label"),
    Column("flags", style="red"),
)
"""When the table cannot fit: the long fields go under each device, one line each."""


def stacked_rows(disks: list[Disk]) -> list[Row]:
    """A row per device, its model (or disk file) and mount points on lines of their own."""
    rows = []
    for d in disks:
        ident = f"model: {shown(d.model)}" if d.model else ""
        if d.serial:
            ident += f" (serial {shown(d.serial)})" if ident else f"serial: {shown(d.serial)}"
        if d.backing_file:
            ident = f"file: {shown(d.backing_file)}"
        mounted = "mounted on: " + _mounts(d.mountpoints) if d.mountpoints else ""
        cells: tuple[Cell, ...] = (
            shown(d.path), human_size(d.size), shown(d.transport or ""),
            shown(d.partition_table or "-"), shown(d.fstype or ""), "", " ".join(d.flags),
        )  # fmt: skip
        rows.append(Row(cells, styles=("bold",), note=(ident, mounted), note_style=""))
        for p in d.partitions:
            name = f"name: {shown(p.partlabel)}" if p.partlabel else ""
            mounted = "mounted on: " + _mounts(p.mountpoints) if p.mountpoints else ""
            cells = (f"  {shown(p.path)}", human_size(p.size), "", "", shown(p.fstype or ""),
                     shown(p.label or ""), " ".join(p.flags))  # fmt: skip
            rows.append(
                Row(
                    cells,
                    note=(f"  {name}" if name else "", f"  {mounted}" if mounted else ""),
                    note_style="",
                )
            )
    return rows


def _mounts(points: tuple[str, ...]) -> str:
    return " ".join(shown(m) for m in points)


def layout_for(disks: list[Disk], width: int | None) -> tuple[tuple[Column, ...], list[Row]]:
    """The full table where it fits ``width`` (None: no limit), else the stacked one."""
    rows = disk_rows(disks)
    if width is None or max(map(len, format_table(COLUMNS, rows, width).splitlines())) <= width:
        return COLUMNS, rows
    return STACKED, stacked_rows(disks)


def format_disks(disks: list[Disk], width: int) -> str:
    """What ``rescue list`` prints, as plain text for ``width`` columns."""
    return format_table(*layout_for(disks, width), width)
