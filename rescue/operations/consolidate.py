"""Consolidate: the full image an incremental one stands for (a "synthetic full").

The new folder is what a full capture of the disk at the time of the newest image
would have written, stream for stream: each partition stored as a difference is
composed from its chain (:func:`rescue.image.chain.chain_chunks`) and compressed
again, with the newest image's compression settings; a partition stored whole
is copied. Stock Clonezilla can restore it. No source disk is needed.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

from rescue.blockio import binary
from rescue.errors import BadInputError
from rescue.image import layout as layout_mod
from rescue.image.manifest import (
    FORMAT_VERSION,
    Manifest,
    PartitionRecord,
    StoredFile,
    fsync_dir,
    write_manifest,
)
from rescue.image.names import INCOMPLETE_MARKER, stream_name
from rescue.image.seekable import SeekableZstdWriter
from rescue.image.view import ImagePart, ImageView, open_image, part_chunks
from rescue.image.volumes import VolumeWriter
from rescue.operations.capture import layout_file_hashes
from rescue.operations.decrypt import copy_volumes
from rescue.progress import NullProgress, ProgressReporter, check_cancel


def consolidate(
    folder: Path,
    out: Path,
    *,
    progress: ProgressReporter | None = None,
    cancel: threading.Event | None = None,
) -> Manifest:
    """Write into the new folder ``out`` the full image the incremental image ``folder``
    and its bases stand for; returns its manifest."""
    progress = progress or NullProgress()
    image = open_image(folder)
    manifest = image.manifest
    if manifest is None or manifest.base is None:
        raise BadInputError(
            f"{folder} is a full image already: there is nothing to consolidate.",
            hint="Copy the folder as it is.",
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BadInputError(f"{out} exists and is not an empty folder.")
    if out.absolute().resolve() in (folder.resolve(), *(b.resolve() for b in image.bases)):
        raise BadInputError("The full image goes into a new folder, not into one of the chain.")
    out.mkdir(parents=True, exist_ok=True)
    marker = out / INCOMPLETE_MARKER
    marker.write_text(f"rescue is consolidating {folder.name} here; without rescue.json this "
                      "image is incomplete.\n")  # fmt: skip
    for f in manifest.files:  # the layout as the newest capture found it
        check_cancel(cancel)
        copy_volumes(folder, out, f.name, None, cancel=cancel)
    layout_mod.write_lists(
        out,
        manifest.source.name if manifest.source.kind == "disk" else None,
        [r.name for r in manifest.partitions],
    )
    progress.phase(f"Consolidating {folder.name}", image.used_bytes or None)
    records = [
        _partition(image, part, record, out, progress=progress, cancel=cancel)
        for part, record in zip(image.parts, manifest.partitions, strict=True)
    ]
    full = dataclasses.replace(
        manifest,
        partitions=tuple(records),
        files=layout_file_hashes(out, records),
        format_version=FORMAT_VERSION,
        base=None,
        extra={
            **manifest.extra,
            "consolidated_from": [folder.name, *(b.name for b in image.bases)],
        },
    )
    check_cancel(cancel)
    write_manifest(out, full)
    marker.unlink()
    fsync_dir(out)
    return full


def _partition(
    image: ImageView,
    part: ImagePart,
    record: PartitionRecord,
    out: Path,
    *,
    progress: ProgressReporter,
    cancel: threading.Event | None,
) -> PartitionRecord:
    split = image.manifest.compression.get("split") if image.manifest else None
    split = split if isinstance(split, int) and split > 0 else None
    if record.stream is None:
        return record
    regions = tuple(
        f
        for r in record.regions
        for f in copy_volumes(image.folder, out, r.name, None, cancel=cancel)
    )
    if record.delta is None:
        files = copy_volumes(
            image.folder, out, record.stream, split, progress=progress, cancel=cancel
        )
        return dataclasses.replace(record, files=files, regions=regions)
    assert record.fstype is not None
    name = stream_name(record.name, record.fstype)
    files, size = _compress(image, part, out / name, split, progress=progress, cancel=cancel)
    return dataclasses.replace(
        record,
        stream=name,
        used_blocks=record.delta.used_blocks,
        used_bytes=record.delta.used_bytes,
        stream_bytes=size,
        files=files,
        regions=regions,
        delta=None,
    )


def _compress(
    image: ImageView,
    part: ImagePart,
    path: Path,
    split: int | None,
    *,
    progress: ProgressReporter,
    cancel: threading.Event | None,
) -> tuple[tuple[StoredFile, ...], int]:
    """The partition's stream composed from its chain, compressed as a capture does."""
    comp = image.manifest.compression if image.manifest else {}
    volumes = VolumeWriter(path, split)  # a chain is never encrypted
    writer = SeekableZstdWriter(
        binary(volumes), level=int(comp.get("level", 3)),
        frame_size=int(comp.get("frame_size", 4 << 20)),
    )  # fmt: skip
    try:
        for chunk in part_chunks(part):
            check_cancel(cancel)
            writer.write(chunk)
            progress.advance(len(chunk))
        writer.close()
        volumes.close(fsync=True)
    except BaseException:
        writer.abort()
        volumes.close(fsync=False)
        raise
    files = tuple(StoredFile(p.name, n, digest) for p, n, digest in volumes.files)
    return files, writer.bytes_in
