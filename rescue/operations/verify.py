"""Verify: read every byte of an image and check every checksum it carries."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from rescue.errors import ImageDamagedError
from rescue.image.chain import ChainReader
from rescue.image.folder import has_member, sealed_folder
from rescue.image.hashing import sha256_file
from rescue.image.manifest import (
    DATA_STREAMS,
    OuterManifest,
    StoredAs,
    StoredFile,
    read_outer_manifest,
)
from rescue.image.names import MANIFEST_NAME
from rescue.image.partclone import StreamReader
from rescue.image.sealing import is_encrypted
from rescue.image.streams import ChunkFile, open_stream_chunks, stream_error
from rescue.image.view import ImagePart, ImageView, check_all_present, check_present, open_image
from rescue.image.volumes import VolumeReader, volume_paths
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
    """Raise ImageDamagedError naming the file (and offset) at the first damage found.

    An encrypted image opened with its passphrase is checked completely (every
    chunk of every file authenticated as it is read); a locked one, by the size
    and hash of every sealed file (``rescue.json`` lists them).
    """
    progress = progress or NullProgress()
    report = _verify_one(folder, progress=progress, cancel=cancel)
    if is_locked(folder):  # checked by its sealed files' hashes; never incremental
        return report
    image = open_image(folder)
    for part in image.parts:  # the chain fits together: every region held by one image
        if part.links:
            ChainReader(part.links, part.region_size, size=part.size or None).close()
    for base in image.bases:  # each checked against its child's record by open_image
        progress.note(f"Checking {base.name}, which {folder.name} builds on")
        below = _verify_one(base, progress=progress, cancel=cancel)
        report.files_checked += below.files_checked
        report.streams_checked += below.streams_checked
        report.stream_bytes += below.stream_bytes
        report.notes.extend(below.notes)
    if image.bases:
        report.notes.append(
            f"Incremental image: checked with the {len(image.bases)} image(s) it builds on ("
            + ", ".join(b.name for b in image.bases)
            + ")."
        )
    return report


def _verify_one(
    folder: Path, *, progress: ProgressReporter, cancel: threading.Event | None
) -> VerifyReport:
    """One image of a chain: its own files and streams."""
    outer = read_outer_manifest(folder) if has_member(folder, MANIFEST_NAME) else None
    if outer is not None and sealed_folder(folder) is None:
        return _verify_sealed(folder, outer, progress, cancel)
    image = open_image(folder)
    report = VerifyReport(folder)
    if outer is not None:
        _check_outer(folder, outer, image, report=report, progress=progress, cancel=cancel)
    manifest = image.manifest
    if manifest is None:
        report.notes.append(
            "Written by Clonezilla (no rescue.json): checked the streams' own checksums only."
        )
    else:
        lost = sum(n for p in manifest.partitions for _, n in p.unreadable)
        if lost:
            report.notes.append(
                f"This is an image of a damaged disk: {lost} bytes of used data could not be "
                "read from the source and are zeros in the image (listed in rescue.json). "
                "That is not damage to the image itself."
            )
        check_all_present(image)  # sizes first: a truncated or missing file is named at once
        for f in (*manifest.files, *(r for p in manifest.partitions for r in p.regions)):
            _check_file(folder, f)
            report.files_checked += 1
    recorded = (
        {f.name: f for p in manifest.partitions for f in p.files} if manifest is not None else {}
    )
    held = image.used_bytes
    if manifest is not None and manifest.base is not None:  # its streams hold what changed
        held = sum(r.used_bytes for r in manifest.partitions)
    progress.phase("Decoding streams", held or None)
    for part in image.parts:
        if part.stream is None or part.stored_as not in DATA_STREAMS:
            continue
        # one read of each file: hashed as it is decoded
        reader = VolumeReader(volume_paths(part.stream), hashing=True)
        try:
            report.stream_bytes += _check_stream(part, reader, progress, cancel)
            for name, size, digest in reader.digests():
                stored = recorded.get(name)
                if stored is not None:
                    if stored.sha256 != digest or stored.size != size:
                        raise ImageDamagedError(
                            f"{name} does not match its SHA-256 in the manifest."
                        )
                    report.files_checked += 1
        except ImageDamagedError as exc:
            raise _pinpoint(folder, part, recorded, exc) from exc
        finally:
            reader.close()
        report.streams_checked += 1
    return report


def is_locked(folder: Path) -> bool:
    """``folder`` holds an encrypted image this process has no key for."""
    return is_encrypted(folder) and sealed_folder(folder) is None


def _verify_sealed(
    folder: Path,
    outer: OuterManifest,
    progress: ProgressReporter,
    cancel: threading.Event | None,
) -> VerifyReport:
    """A locked encrypted image: every stored file has the size and SHA-256 recorded."""
    report = VerifyReport(folder)
    report.notes.append(
        "Encrypted image checked without its passphrase: every sealed file has its size and "
        "SHA-256; with the passphrase (--image-passphrase-file) every chunk is authenticated "
        "and every stream decoded."
    )
    for f in outer.files:  # sizes first: a missing or cut file is named at once
        check_present(folder, f)
    progress.phase("Hashing the sealed files", sum(f.size for f in outer.files) or None)
    for f in outer.files:
        check_cancel(cancel)
        _check_file(folder, f)
        progress.advance(f.size)
        report.files_checked += 1
    return report


def _check_outer(
    folder: Path,
    outer: OuterManifest,
    image: ImageView,
    *,
    report: VerifyReport,
    progress: ProgressReporter,
    cancel: threading.Event | None,
) -> None:
    """The files an unlocked encrypted image lists outside its sealed manifest (the sealed
    manifest itself): the streams and layout files are checked with the rest."""
    inner = set()
    if image.manifest is not None:
        inner = {f.name for f in image.manifest.files}
        inner |= {f.name for p in image.manifest.partitions for f in p.stored}
    for f in outer.files:
        if f.name not in inner:
            check_cancel(cancel)
            _check_file(folder, f)
            report.files_checked += 1


def _pinpoint(
    folder: Path, part: ImagePart, recorded: dict[str, StoredFile], exc: ImageDamagedError
) -> ImageDamagedError:
    """Name the damaged volume(s) exactly, from their hashes when the manifest has them."""
    assert part.stream is not None
    bad = []
    for path in volume_paths(part.stream):
        stored = recorded.get(path.name)
        if stored is not None and sha256_file(path)[1] != stored.sha256:
            bad.append(path.name)
    if bad:
        return ImageDamagedError(
            f"{', '.join(bad)} damaged (SHA-256 differs from the manifest); "
            f"decoding stopped with: {exc.message}"
        )
    return stream_error(part.stream.name, exc)


def _check_stream(
    part: ImagePart,
    reader: VolumeReader,
    progress: ProgressReporter,
    cancel: threading.Event | None,
) -> int:
    assert part.stream is not None
    chunks = open_stream_chunks(part.stream, part.compression, reader=reader)
    name = part.stream.name
    if part.stored_as == StoredAs.DD:
        total = 0
        for chunk in chunks:
            check_cancel(cancel)
            total += len(chunk)
            progress.advance(len(chunk))
        if total != part.size:
            raise ImageDamagedError(f"{name} holds {total} bytes; the partition has {part.size}.")
        return total
    stream = StreamReader(ChunkFile(chunks))
    blocks = 0
    bs = stream.header.block_size
    for _first, _pieces, n in stream.iter_pieces():
        check_cancel(cancel)
        blocks += n // bs
        progress.advance(n)
    expected = stream.header.used_blocks
    if blocks != expected:
        raise ImageDamagedError(f"{name} holds {blocks} blocks; its header promises {expected}.")
    return blocks * bs
