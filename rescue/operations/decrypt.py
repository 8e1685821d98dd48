"""``rescue decrypt``: an encrypted image turned back into a plain Clonezilla image.

The image must be unlocked (:func:`rescue.image.sealing.unlock_image`) first.
Every sealed file is opened (each chunk authenticated) and written under its
plain name into a new folder; each stream is copied as its plain bytes, split
as it was. The new folder's manifest (written last, as a capture writes it)
lists the plain files with their own hashes: the result restores with rescue or
stock Clonezilla, and nothing of the key is in it.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from pathlib import Path

from rescue.blockio import write_durable
from rescue.errors import BadInputError, ImageLockedError
from rescue.image.folder import sealed_folder
from rescue.image.manifest import (
    Manifest,
    PartitionRecord,
    StoredFile,
    read_manifest,
    write_manifest,
)
from rescue.image.names import MANIFEST_NAME
from rescue.image.regions import regions_name
from rescue.image.sealing import SUFFIX, folder_sealer, is_encrypted
from rescue.image.volumes import VolumeReader, VolumeWriter, volume_paths
from rescue.operations.capture import layout_file_hashes
from rescue.progress import NullProgress, ProgressReporter, check_cancel

_COPY = 8 << 20


def decrypt(
    folder: Path,
    out: Path,
    *,
    progress: ProgressReporter | None = None,
    cancel: threading.Event | None = None,
) -> Manifest:
    """Write the plain image the encrypted one in ``folder`` holds into the new folder ``out``."""
    progress = progress or NullProgress()
    if not is_encrypted(folder):
        raise BadInputError(f"{folder} is not an encrypted image: there is nothing to decrypt.")
    if folder_sealer(folder) is None:
        raise ImageLockedError(
            f"{folder} is encrypted: decrypting it needs its passphrase.",
            hint="Give it with --image-passphrase-file FILE, or on a terminal to be asked.",
        )
    manifest = read_manifest(folder)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BadInputError(f"{out} exists and is not an empty folder.")
    if out.resolve() == folder.resolve():
        raise BadInputError("The plain copy goes into a new folder, not into the image itself.")
    out.mkdir(parents=True, exist_ok=True)
    stored_streams = {f.name for p in manifest.partitions for f in p.stored}
    for name in sorted(os.listdir(folder)):
        check_cancel(cancel)
        if name in stored_streams or not name.endswith(SUFFIX) or name.startswith("."):
            continue
        plain = name[: -len(SUFFIX)]
        if plain == MANIFEST_NAME:
            continue
        write_durable(out / plain, _open_sealed(folder, plain), new=True)
    total = 0
    for part in manifest.partitions:
        if part.stream is not None:
            with VolumeReader(volume_paths(folder / part.stream)) as reader:
                total += reader.size
    progress.phase(f"Decrypting {folder}", total or None)
    records = []
    split = manifest.compression.get("split")
    for part in manifest.partitions:
        if part.stream is None:
            records.append(part)
            continue
        records.append(_copy_stream(folder, out, part, split, progress=progress, cancel=cancel))
    result = dataclasses.replace(
        manifest, partitions=tuple(records), files=layout_file_hashes(out, records)
    )
    check_cancel(cancel)
    write_manifest(out, result)
    return result


def _open_sealed(folder: Path, name: str) -> bytes:
    handler = sealed_folder(folder)
    assert handler is not None
    return handler.read(folder, name, 64 << 20, "a sealed file")


def _copy_stream(
    folder: Path,
    out: Path,
    part: PartitionRecord,
    split: object,
    *,
    progress: ProgressReporter,
    cancel: threading.Event | None,
) -> PartitionRecord:
    assert part.stream is not None
    size = split if isinstance(split, int) and split > 0 else None
    files = copy_volumes(folder, out, part.stream, size, progress=progress, cancel=cancel)
    regions: tuple[StoredFile, ...] = ()
    if part.regions:
        regions = copy_volumes(folder, out, regions_name(part.name), None, cancel=cancel)
    return dataclasses.replace(part, files=files, regions=regions)


def copy_volumes(
    folder: Path,
    out: Path,
    name: str,
    split: int | None,
    *,
    progress: ProgressReporter | None = None,
    cancel: threading.Event | None,
) -> tuple[StoredFile, ...]:
    """The plain bytes of the sealed stream ``name`` as a new (split) file in ``out``."""
    writer = VolumeWriter(out / name, split)
    try:
        with VolumeReader(volume_paths(folder / name)) as reader:
            while chunk := reader.read(_COPY):
                check_cancel(cancel)
                writer.write(chunk)
                if progress is not None:
                    progress.advance(len(chunk))
        writer.close(fsync=True)
    except BaseException:
        writer.close(fsync=False)
        raise
    return tuple(StoredFile(p.name, n, digest) for p, n, digest in writer.files)
