"""Verify: read every byte of an image and check every checksum it carries."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from rescue.copier import ChunkFile, open_stream_chunks, stream_error
from rescue.errors import ImageDamagedError
from rescue.image.hashing import sha256_file
from rescue.image.manifest import StoredFile
from rescue.image.partclone import StreamReader
from rescue.operations.image_view import ImagePart, check_present, open_image
from rescue.progress import NullProgress, ProgressReporter, check_cancel


@dataclass
class VerifyReport:
    folder: Path
    files_checked: int = 0
    streams_checked: int = 0
    stream_bytes: int = 0
    notes: list[str] = field(default_factory=list)


def _check_file(folder: Path, stored: StoredFile) -> None:
    path = folder / stored.name
    check_present(folder, stored)
    _size, digest = sha256_file(path)
    if digest != stored.sha256:
        raise ImageDamagedError(f"{path} does not match its SHA-256 in the manifest.")


def verify(
    folder: Path,
    *,
    progress: ProgressReporter | None = None,
    cancel: threading.Event | None = None,
) -> VerifyReport:
    """Raise ImageDamagedError naming the file (and offset) at the first damage found."""
    progress = progress or NullProgress()
    image = open_image(folder)
    report = VerifyReport(folder)
    manifest = image.manifest
    if manifest is None:
        report.notes.append(
            "Written by Clonezilla (no rescue.json): checked the streams' own checksums only."
        )
    else:
        stored = list(manifest.files) + [f for p in manifest.partitions for f in p.files]
        progress.phase("Checking file hashes", sum(f.size for f in stored))
        for f in stored:
            check_cancel(cancel)
            _check_file(folder, f)
            report.files_checked += 1
            progress.advance(f.size)
    progress.phase("Decoding streams", image.used_bytes or None)
    for part in image.parts:
        if part.stream is None or part.stored_as not in ("partclone", "dd"):
            continue
        try:
            report.stream_bytes += _check_stream(part, progress, cancel)
        except ImageDamagedError as exc:
            raise stream_error(part.stream.name, exc) from exc
        report.streams_checked += 1
    return report


def _check_stream(
    part: ImagePart, progress: ProgressReporter, cancel: threading.Event | None
) -> int:
    assert part.stream is not None
    chunks = open_stream_chunks(part.stream, part.compression)
    name = part.stream.name
    if part.stored_as == "dd":
        total = 0
        for chunk in chunks:
            check_cancel(cancel)
            total += len(chunk)
            progress.advance(len(chunk))
        if total != part.size:
            raise ImageDamagedError(f"{name} holds {total} bytes; the partition has {part.size}.")
        return total
    reader = StreamReader(ChunkFile(chunks))
    blocks = 0
    bs = reader.header.block_size
    for _first, data in reader.iter_runs():
        check_cancel(cancel)
        blocks += len(data) // bs
        progress.advance(len(data))
    expected = reader.header.used_blocks
    if blocks != expected:
        raise ImageDamagedError(f"{name} holds {blocks} blocks; its header promises {expected}.")
    return blocks * bs
