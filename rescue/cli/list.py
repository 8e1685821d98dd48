"""`rescue list`: every disk as the rest of the tool sees it."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from rescue.devices import list_disks, to_json, udev_running
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
    table = Table("device", "size", "model / file", "transport", "table", "filesystem",
                  "label", "mounted on", "flags", box=None, header_style="bold")  # fmt: skip
    for d in disks:
        ident = d.model or d.backing_file or ""
        if d.serial:
            ident += f" ({d.serial})"
        table.add_row(
            f"[bold]{d.path}[/]", human_size(d.size), ident, d.transport or "",
            d.partition_table or "-", d.fstype or "", "", " ".join(d.mountpoints),
            f"[red]{' '.join(d.flags)}[/]",
        )  # fmt: skip
        for p in d.partitions:
            table.add_row(
                f"  {p.path}", human_size(p.size), p.partlabel or "", "", "",
                p.fstype or "", p.label or "", " ".join(p.mountpoints),
                f"[red]{' '.join(p.flags)}[/]",
            )  # fmt: skip
    Console().print(table)
    return 0
