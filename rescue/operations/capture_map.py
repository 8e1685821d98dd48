"""The map of a capture in progress: what is safely on disk, so a killed capture goes on.

Kept in the image folder as ``.rescue-capture-map.json`` (hidden: never part of
the image's file list) and replaced atomically (write a new file, fsync,
rename, fsync the folder) at every checkpoint. It records the source's identity,
the compression options, the partitions already stored (their manifest
records) and, for the partition being stored, the last checkpoint of its
stream (:class:`rescue.copier.Checkpoint`) with a digest of its allocation map:
a resume reads the maps again and refuses to go on if they changed. An
encrypted capture keeps it sealed (``.rescue-capture-map.json.sealed``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rescue.copier import Checkpoint
from rescue.errors import BadInputError, ImageLockedError
from rescue.image.folder import MAX_MANIFEST, read_stored
from rescue.image.manifest import PartitionRecord, fsync_dir
from rescue.image.names import CAPTURE_MAP, MANIFEST_NAME
from rescue.image.sealing import folder_sealer, sealed_name, sealed_size, write_sealed_member
from rescue.units import human_size

VERSION = 1


def bitmap_digest(bitmap: bytes) -> str:
    return hashlib.sha256(bitmap).hexdigest()


@dataclass
class CaptureMap:
    source: dict[str, Any]
    options: dict[str, Any]
    done: list[PartitionRecord] = field(default_factory=list)
    current: str | None = None
    """Name of the partition being stored."""
    current_bitmap: str | None = None
    checkpoint: Checkpoint | None = None

    def save(self, folder: Path) -> None:
        doc = {
            "version": VERSION,
            "source": self.source,
            "options": self.options,
            "done": [dataclasses.asdict(r) for r in self.done],
            "current": self.current,
            "current_bitmap": self.current_bitmap,
            "checkpoint": self.checkpoint.to_dict() if self.checkpoint else None,
        }
        sealer = folder_sealer(folder)
        if sealer is not None:  # an encrypted capture: the map names partitions and labels
            write_sealed_member(folder, CAPTURE_MAP, json.dumps(doc).encode(), sealer)
            fsync_dir(folder)
            return
        tmp = folder / (CAPTURE_MAP + ".tmp")
        with open(tmp, "w") as f:
            json.dump(doc, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, folder / CAPTURE_MAP)
        fsync_dir(folder)

    @classmethod
    def load(cls, folder: Path) -> CaptureMap:
        path = folder / CAPTURE_MAP
        try:
            if (folder / sealed_name(CAPTURE_MAP)).is_file():
                doc = json.loads(_open_sealed_map(folder))
            else:
                doc = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise BadInputError(
                f"{folder} holds no capture to resume (no {CAPTURE_MAP}).",
                hint="Start a new capture into an empty folder.",
            ) from exc
        except ValueError as exc:
            raise BadInputError(f"The capture map in {folder} is damaged: {exc}.") from exc
        if doc.get("version") != VERSION:
            raise BadInputError(f"The capture map in {folder} is of another rescue version.")
        point = doc.get("checkpoint")
        return cls(
            source=dict(doc["source"]),
            options=dict(doc["options"]),
            done=[PartitionRecord.from_dict(r) for r in doc.get("done", [])],
            current=doc.get("current"),
            current_bitmap=doc.get("current_bitmap"),
            checkpoint=Checkpoint.from_dict(point) if point else None,
        )

    def remove(self, folder: Path) -> None:
        self.discard(folder)

    @staticmethod
    def discard(folder: Path) -> None:
        """Remove the map (plain or sealed) from ``folder``, if there is one."""
        (folder / CAPTURE_MAP).unlink(missing_ok=True)
        (folder / sealed_name(CAPTURE_MAP)).unlink(missing_ok=True)


def _open_sealed_map(folder: Path) -> bytes:
    sealer = folder_sealer(folder)
    if sealer is None:
        raise ImageLockedError(
            f"{folder} holds an interrupted capture of an encrypted image: it goes on only "
            "with the image's passphrase.",
            hint=f"rescue capture SOURCE --resume {folder} --image-passphrase-file FILE "
            "(or on a terminal, to be asked)",
        )
    name = sealed_name(CAPTURE_MAP)
    raw = read_stored(folder, name, sealed_size(MAX_MANIFEST), "the capture map")
    return sealer.open_bytes(CAPTURE_MAP, raw, f"{folder}/{name}")


def has_capture_map(folder: Path) -> bool:
    return (folder / CAPTURE_MAP).is_file() or (folder / sealed_name(CAPTURE_MAP)).is_file()


def resumable(image_dir: Path) -> CaptureMap | None:
    """The map of the interrupted capture in ``image_dir``; None when there is none to go on with.

    A folder holds one when its capture map is there and its manifest is not
    (a finished capture removes the map). A damaged map or one of another
    version is an error (:meth:`CaptureMap.load`), never a reason to start over.
    """
    if not has_capture_map(image_dir) or (image_dir / MANIFEST_NAME).exists():
        return None
    return CaptureMap.load(image_dir)


def describe_resumable(image_dir: Path) -> str | None:
    """What :func:`resumable` found, in words (:func:`describe`); None when nothing."""
    state = resumable(image_dir)
    return describe(state) if state is not None else None


def describe(state: CaptureMap) -> str:
    """``an interrupted capture of /dev/sdb (SanDisk Ultra 4C53, 32.0 GiB): 1 partition(s) ...``"""
    src = state.source
    size = src.get("size")
    ident = ", ".join(
        x
        for x in (
            " ".join(str(v) for v in (src.get("model"), src.get("serial")) if v),
            human_size(size) if isinstance(size, int) else "",
        )
        if x
    )
    done = f"{len(state.done)} partition(s) stored"
    if state.current:
        done += f", {state.current} in progress"
    return f"an interrupted capture of {src.get('path')}{f' ({ident})' if ident else ''}: {done}"
