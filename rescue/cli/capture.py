"""`rescue capture SOURCE IMAGE_DIR`: image a disk, a partition or a raw disk file.

A folder holding an interrupted capture is refused with the command that goes on
with it (``--resume``): the two are never mixed up. IMAGE_DIR may be a share's URL
(``rescue/cli/locations.py``); a connection that drops names the resume command.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rescue.cli.image_key import (
    add_image_key_argument,
    new_image_key,
    unlock_if_encrypted,
)
from rescue.cli.keys import add_key_arguments, ask_for_missing, secrets_from
from rescue.cli.locations import add_share_arguments, image_location, is_share
from rescue.cli.progress import reporter
from rescue.cli.sizes import parse_size
from rescue.copier import CompressionOptions, ReadOptions
from rescue.errors import EXIT_UNREADABLE, BadInputError, DeviceError
from rescue.operations.capture import capture, refuse_a_complete_image
from rescue.operations.capture_map import CaptureMap, describe, resumable
from rescue.operations.unlock import encrypted_partitions
from rescue.shares.mounts import writing_error
from rescue.text import shown


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "capture", help="image a disk or partition (only the used blocks)"
    )
    p.add_argument("source", nargs="?", help="disk, partition, or a file holding a raw disk")
    p.add_argument("image_dir", nargs="?",
                   help="new folder for the image, or a share URL (smb://, nfs://, ssh://)"
                   )  # fmt: skip
    p.add_argument("--resume", metavar="IMAGE_DIR",
                   help="go on with an interrupted capture in IMAGE_DIR (same source disk)"
                   )  # fmt: skip
    p.add_argument("--level", type=int, default=3, choices=range(1, 20), metavar="N",
                   help="zstd level 1-19 (default 3)")  # fmt: skip
    p.add_argument("--split", type=parse_size, default=None, metavar="SIZE",
                   help="split streams into volumes of SIZE (e.g. 4G); automatic on FAT"
                   )  # fmt: skip
    p.add_argument("--retries", type=int, default=1, metavar="N",
                   help="extra attempts at each sector still unreadable (default 1)")  # fmt: skip
    p.add_argument("--stop-on-error", action="store_true",
                   help="stop at the first read error instead of going on around it")  # fmt: skip
    p.add_argument("--json", action="store_true", help="JSON progress lines on stdout")
    p.add_argument("--encrypt", action="store_true",
                   help="encrypt the image (AES-256-GCM, a passphrase typed twice or from "
                   "--image-passphrase-file); stock Clonezilla cannot read it")  # fmt: skip
    p.add_argument("--base", metavar="BASE_DIR",
                   help="an earlier image of the same disk, in the same folder as the new one: "
                   "store only what changed since (an incremental image)")  # fmt: skip
    add_image_key_argument(p)
    add_key_arguments(p)
    add_share_arguments(p)
    p.set_defaults(func=run)


def base_path(base: str | None, image_dir: Path) -> Path | None:
    """``--base``: a folder, or a plain name of a folder beside the new image (which is how
    it is given for an image on a share)."""
    if base is None:
        return None
    if "/" not in base:
        return image_dir.parent / base
    return Path(base)


def refuse_an_interrupted_capture(source: str, image_dir: Path) -> None:
    """A new capture into the folder of an interrupted one: say how to go on with it instead."""
    state = resumable(image_dir)
    if state is None:
        return
    was = state.source.get("path")
    renamed = (
        f" (or rescue capture {source} --resume {image_dir} if {was} has a new name now: "
        "its size and serial are checked)"
        if source != was
        else ""
    )
    raise BadInputError(
        f"{image_dir} holds {describe(state)}. A new capture does not go there: "
        "this one can be resumed.",
        hint=f"Go on with it: rescue capture --resume {image_dir}{renamed}. "
        "For a new image, give a new folder.",
    )


def run(args: argparse.Namespace) -> int:
    where = args.resume if args.resume is not None else args.image_dir
    if where is None or (args.resume is None and args.source is None):
        raise BadInputError("Give the disk to capture and a new folder for the image.")
    with image_location(where, args, read_only=False) as folder:
        args.image_dir = folder
        if args.resume is not None:
            args.resume = folder
        try:
            return _capture_into(args, where)
        except DeviceError as exc:
            if is_share(where) and isinstance(exc.__cause__, OSError):
                raise writing_error(exc.__cause__, source=args.source, image=where) from exc
            raise
        except OSError as exc:
            if is_share(where):
                raise writing_error(exc, source=args.source, image=where) from exc
            raise


def _capture_into(args: argparse.Namespace, where: str) -> int:
    options = CompressionOptions(level=args.level, split=args.split)
    reading = ReadOptions(keep_going=not args.stop_on_error, retries=max(0, args.retries))
    image_key = new_image_key(args)
    if args.resume is not None:
        args.image_dir = args.resume
        # an encrypted capture's map is sealed: opened before it is read
        image_key = unlock_if_encrypted(args.resume, args) or image_key
        refuse_a_complete_image(args.resume)
        if args.source is None:
            args.source = CaptureMap.load(args.resume).source["path"]
    elif args.source is None or args.image_dir is None:
        raise BadInputError("Give the disk to capture and a new folder for the image.")
    else:
        refuse_an_interrupted_capture(args.source, args.image_dir)
    secrets = ask_for_missing(secrets_from(args), encrypted_partitions(args.source))
    with reporter(args.json) as progress:
        manifest = capture(
            args.source, args.image_dir, options=options, reading=reading, progress=progress,
            resume=args.resume is not None, secrets=secrets, image_key=image_key,
            base=None if args.resume is not None else base_path(args.base, Path(args.image_dir)),
        )  # fmt: skip
    lost = [(p.name, off, n) for p in manifest.partitions for off, n in p.unreadable]
    if not args.json:
        stored = ""
        if manifest.base is not None:
            held = sum(p.used_bytes for p in manifest.partitions)
            stored = f"; incremental on {shown(manifest.base.name)}, {held} bytes of it stored"
        print(
            f"Image complete: {shown(where)} ({len(manifest.partitions)} partition(s), "
            f"{manifest.used_bytes} used bytes{stored})."
        )
        if lost:
            total = sum(n for _, _, n in lost)
            print(
                f"WARNING: {total} bytes of used data in {len(lost)} range(s) could not be read "
                "from the source; the image holds zeros there (listed in rescue.json):"
            )
            for name, off, n in lost[:20]:
                print(f"  {shown(name)}: bytes {off}-{off + n - 1}")
            if len(lost) > 20:
                print(f"  ... and {len(lost) - 20} more")
            print("Files holding unreadable sectors (also in damage-report.txt):")
            for p in manifest.partitions:
                for f in p.damaged_files:
                    print(f"  {shown(p.name)}: {shown(f)}")  # names from the disk
    return EXIT_UNREADABLE if lost else 0
