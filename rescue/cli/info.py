"""`rescue info IMAGE_DIR [--json]`: what an image holds."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from rescue.cli.image_key import add_image_key_argument, unlock_if_encrypted
from rescue.cli.locations import add_share_arguments, image_location
from rescue.containers.base import LayerInfo
from rescue.image.manifest import Manifest, read_manifest
from rescue.image.sealing import is_encrypted
from rescue.image.view import ImagePart, open_image
from rescue.text import shown
from rescue.units import human_size


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("info", help="show what an image holds")
    p.add_argument("image_dir", help="image folder, or a share URL (smb://, nfs://, ssh://)")
    add_share_arguments(p)
    add_image_key_argument(p)
    p.add_argument("--json", action="store_true", help="the manifest as JSON")
    p.set_defaults(func=run)


def safe(text: object) -> str:
    """Text from an image for rich's markup: control characters and brackets escaped."""
    return escape(shown(text))


def run(args: argparse.Namespace) -> int:
    with image_location(args.image_dir, args, read_only=True) as local:
        return _info(args, local)


def _info(args: argparse.Namespace, local: Path) -> int:
    unlock_if_encrypted(local, args)
    image = open_image(local)
    if args.json:
        if image.manifest is not None:
            data: dict[str, Any] = json.loads(image.manifest.to_json())
            if image.bases:
                data["chain"] = [_link(f) for f in (local, *image.bases)]
        else:
            data = {
                "format": "clonezilla",
                "kind": image.kind,
                "disk": image.disk_name,
                "partitions": [
                    {**asdict(p), "stream": p.stream.name if p.stream else None}
                    for p in image.parts
                ],
            }
        print(json.dumps(data, indent=2))
        return 0
    console = Console()
    m = image.manifest
    folder = safe(args.image_dir)
    if m is not None:
        src = m.source
        ident = ", ".join(safe(x) for x in (src.model, src.serial) if x) or "no model/serial"
        table_kind = safe(src.partition_table or "none")
        console.print(f"[bold]{folder}[/]: {safe(src.kind)} image of {safe(src.path)} ({ident}), "
                      f"{human_size(src.size)}, table {table_kind}")  # fmt: skip
        console.print(f"made {safe(m.created)} by {safe(m.tool)}, format {m.format_version}")
        if is_encrypted(local):
            console.print("encrypted (AES-256-GCM, every file sealed): stock Clonezilla cannot "
                          "read it; rescue decrypt makes a plain copy")  # fmt: skip
        if image.bases:
            console.print(
                f"incremental: it holds what changed since {safe(image.bases[0].name)}; "
                "restoring it reads the whole chain (rescue consolidate makes a full image)"
            )
            for link in (_link(f) for f in (local, *image.bases)):
                console.print(
                    f"  {safe(link['folder'])}: made {safe(link['created'])}, "
                    f"{human_size(link['stored_bytes'])} stored"
                    + (", a full image" if link["full"] else "")
                )
    else:
        console.print(f"[bold]{folder}[/]: image written by Clonezilla "
                      f"({image.kind} {safe(image.disk_name or '')})")  # fmt: skip
    table = Table("partition", "start", "size", "filesystem", "label", "stored as", "used")
    for p in image.parts:
        table.add_row(
            Text(shown(p.name)),
            str(p.start),
            human_size(p.size),
            Text(shown(p.fstype or "-")),
            Text(shown(p.label or "")),
            Text(_stored_as(p, m)),
            human_size(p.used_bytes) if p.used_bytes else "-",
        )
    console.print(table)
    if m is not None:
        for r in m.partitions:
            for layer in r.layers:
                for line in layer_lines(layer):
                    console.print(f"{safe(r.name)}: {line}")
        for r in m.partitions:
            for w in r.warnings:
                console.print(f"[yellow]note:[/] {safe(r.name)}: {safe(w)}")
    return 0


def _stored_as(part: ImagePart, m: Manifest | None) -> str:
    record = next((r for r in m.partitions if r.name == part.name), None) if m else None
    if record is None or record.delta is None:
        return shown(part.stored_as)
    d = record.delta
    return f"{shown(part.stored_as)}, changes: {d.regions_stored} of {d.regions} regions"


def _link(folder: Path) -> dict[str, Any]:
    """One image of a chain, for info: when it was made, the bytes it stores."""
    m = read_manifest(folder)
    stored = sum(f.size for f in m.files) + sum(f.size for r in m.partitions for f in r.stored)
    return {"folder": folder.name, "created": m.created, "stored_bytes": stored,
            "full": m.base is None}  # fmt: skip


_STATES = {
    LayerInfo.READ: "read inside",
    LayerInfo.LOCKED: "[yellow]locked[/] (no key given: stored whole)",
    LayerInfo.WHOLE: "[yellow]stored whole[/]",
}


def layer_lines(layer: LayerInfo, depth: int = 0) -> list[str]:
    """A layer and what is inside it, indented by depth, for the console (markup safe)."""
    pad = "  " * depth
    uuid = f" UUID {safe(layer.uuid)}" if layer.uuid else ""
    head = f"{pad}{safe(layer.name)}{uuid}, {_STATES.get(layer.state, safe(layer.state))}"
    if layer.metadata_bytes:
        head += f", metadata {human_size(layer.metadata_bytes)}"
    lines = [head]
    lines += [f"{pad}  {safe(k)}: {safe(v)}" for k, v in layer.details]
    for vol in layer.volumes:
        inside = vol.layers[0].name if vol.layers else None
        fs = safe(vol.fstype or inside or "no filesystem read")
        ident = ", ".join(
            f"{k} {safe(v)}" for k, v in (("label", vol.label), ("UUID", vol.uuid)) if v
        )
        line = f"{pad}  {safe(vol.name)}: {human_size(vol.size)}, {fs}"
        line += f" ({ident})" if ident else ""
        line += f", {human_size(vol.used_bytes)} stored"
        lines.append(line)
        if vol.note:
            lines.append(f"{pad}    note: {safe(vol.note)}")
        for inner in vol.layers:
            lines += layer_lines(inner, depth + 2)
    if layer.reason and layer.state == LayerInfo.READ:
        lines.append(f"{pad}  note: {safe(layer.reason)}")
    return lines
