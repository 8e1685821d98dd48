"""Random access to any partition stream, with an index built once where needed.

Our own streams carry a seek table: nothing to build, a partition opens at once.
Streams written by Clonezilla (``zstd -T0``: one frame for the whole stream;
gzip) or ours with a damaged seek table cannot be read at random as they are.
For those an index is built once, with progress, and kept:

- zstd made of many small frames that record their sizes: a seek table found by
  walking the frame headers (no decompression), kept as ``NAME.seektable``;
- anything else: a seekable zstd copy of the decompressed stream, kept as
  ``NAME.seekable.zst`` (as large as the stream, built at decompression speed).

The index goes beside the image, in a hidden folder ``.rescue-index`` that
Clonezilla's file patterns never match; when the image folder cannot be written
(a read-only share) or lacks room, it goes to a cache folder instead
(``/var/cache/rescue/index``, or ``$RESCUE_CACHE_DIR``). Each index records the
names, sizes and times of the files it was built from and is rebuilt when
they change.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
from pathlib import Path

from rescue.blockio import binary
from rescue.errors import BadInputError, ImageDamagedError, RescueError
from rescue.image.manifest import DATA_STREAMS, StoredAs
from rescue.image.names import INDEX_DIR
from rescue.image.random_access import PartitionReader
from rescue.image.seekable import MiB, SeekableZstdWriter, SeekTable
from rescue.image.streams import open_stream_chunks, stream_error
from rescue.image.view import ImagePart
from rescue.image.volumes import VolumeReader, volume_paths
from rescue.imagedev.spec import ServerSpec
from rescue.progress import NullProgress, ProgressReporter, check_cancel

log = logging.getLogger(__name__)

DEFAULT_CACHE = Path("/var/cache/rescue/index")
MAX_FRAME = 64 * MiB
"""A frame larger than this makes every random read too slow: such streams get a copy."""


def cache_root() -> Path:
    return Path(os.environ.get("RESCUE_CACHE_DIR") or DEFAULT_CACHE)


def _identity(stream: Path) -> list[list[object]]:
    """Name, size and modification time of every file of the stream."""
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in volume_paths(stream)]


def _own_table(stream: Path) -> SeekTable | None:
    """The stream's own seek table; None when it has none or a damaged one."""
    with VolumeReader(volume_paths(stream)) as v:
        try:
            return SeekTable.read_from(binary(v))
        except ImageDamagedError as exc:
            log.warning("%s: %s; an index will be built instead.", stream.name, exc.message)
            return None


def _candidate_dirs(stream: Path) -> list[Path]:
    key = hashlib.sha256(str(stream.resolve()).encode()).hexdigest()[:16]
    return [stream.parent / INDEX_DIR, cache_root() / key]


def _meta_path(folder: Path, stream: Path) -> Path:
    return folder / f"{stream.name}.index.json"


def find_index(stream: Path) -> tuple[str, Path] | None:
    """("table" or "copy", file) of a valid index already built for ``stream``."""
    ident = _identity(stream)
    for folder in _candidate_dirs(stream):
        meta = _meta_path(folder, stream)
        try:
            doc = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        target = folder / str(doc.get("file", ""))
        if doc.get("source") == ident and doc.get("kind") in ("table", "copy") and target.is_file():
            return str(doc["kind"]), target
        log.info("the index in %s is out of date; it will be rebuilt", folder)
    return None


def _writable_dir(
    candidates: list[Path], need: int, what: str = "the index this image needs"
) -> Path:
    for folder in candidates:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError:
            continue
        if shutil.disk_usage(folder).free >= need + 64 * MiB:
            return folder
    places = " or ".join(str(c) for c in candidates)
    raise BadInputError(
        f"No room to keep {what} ({need // MiB} MiB) in {places}.",
        hint="Free some space there, or set RESCUE_CACHE_DIR to a folder with room.",
    )


def scratch_dir(stream: Path, need: int) -> Path:
    """A writable folder with ``need`` bytes free near the image (for an overlay's writes)."""
    return _writable_dir(_candidate_dirs(stream), need, "the scratch space for resizing")


def _scan_table(stream: Path) -> SeekTable | None:
    """A seek table from the frame headers, when every frame is small and sized."""
    with VolumeReader(volume_paths(stream)) as v:
        try:
            table = SeekTable.scan(binary(v))
        except ImageDamagedError:
            return None
    if table.frames == 0 or max(table.decompressed) > MAX_FRAME:
        return None
    return table


def _write_meta(
    folder: Path, stream: Path, kind: str, name: str, ident: list[list[object]]
) -> None:
    meta = _meta_path(folder, stream)
    tmp = meta.with_suffix(".tmp")
    tmp.write_text(json.dumps({"kind": kind, "file": name, "source": ident}))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, meta)


def build_index(
    part: ImagePart, progress: ProgressReporter, cancel: threading.Event | None = None
) -> tuple[str, Path]:
    """Build and keep an index for ``part``'s stream; returns (kind, file)."""
    stream = part.stream
    assert stream is not None
    ident = _identity(stream)
    stored = sum(int(str(i[1])) for i in ident)
    if part.compression == "zst" and (table := _scan_table(stream)) is not None:
        folder = _writable_dir(_candidate_dirs(stream), 64 * MiB)
        name = f"{stream.name}.seektable"
        tmp = folder / (name + ".tmp")
        doc = {"compressed": table.compressed, "decompressed": table.decompressed}
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, folder / name)
        _write_meta(folder, stream, "table", name, ident)
        return "table", folder / name
    folder = _writable_dir(_candidate_dirs(stream), stored)
    name = f"{stream.name}.seekable.zst"
    target = folder / name
    tmp = folder / (name + ".tmp")
    progress.phase(f"Indexing {stream.name} (once, for random access)", stored)
    reader = VolumeReader(volume_paths(stream))
    done = 0
    try:
        with open(tmp, "wb") as out:
            writer = SeekableZstdWriter(out, level=1)
            try:
                for chunk in open_stream_chunks(stream, part.compression, reader=reader):
                    check_cancel(cancel)
                    writer.write(chunk)
                    pos = reader.tell()
                    progress.advance(pos - done)
                    done = pos
            except BaseException:
                writer.abort()
                raise
            writer.close()
            out.flush()
            os.fsync(out.fileno())
    except ImageDamagedError as exc:
        tmp.unlink(missing_ok=True)
        raise stream_error(stream.name, exc) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        reader.close()
    os.replace(tmp, target)
    _write_meta(folder, stream, "copy", name, ident)
    return "copy", target


def prepare(
    part: ImagePart,
    progress: ProgressReporter | None = None,
    cancel: threading.Event | None = None,
) -> ServerSpec:
    """What a server needs to serve ``part``, building its index first if it needs one."""
    progress = progress or NullProgress()
    if part.stream is None or part.stored_as not in DATA_STREAMS:
        what = "swap space" if part.stored_as == StoredAs.SWAP else "no stored data"
        raise BadInputError(f"Partition {part.name} holds {what}: there is nothing to browse.")
    spec = ServerSpec(
        stream=part.stream,
        raw=part.stored_as == StoredAs.DD,
        size=part.size or None,
        tail=part.tail,
        tail_offset=part.tail_offset,
    )
    if part.compression == "zst" and _own_table(part.stream) is not None:
        return spec
    found = find_index(part.stream) or build_index(part, progress, cancel)
    kind, path = found
    if kind == "table":
        return ServerSpec(**{**spec.__dict__, "table": path})
    return ServerSpec(**{**spec.__dict__, "copy": path})


class VirtualPartition:
    """The served bytes: the stream's partition, its tail, zeros up to the partition size."""

    def __init__(self, spec: ServerSpec) -> None:
        table = None
        if spec.table is not None:
            try:
                doc = json.loads(spec.table.read_text())
                table = SeekTable.build(doc["compressed"], doc["decompressed"], None)
            except (ValueError, KeyError, TypeError) as exc:
                raise ImageDamagedError(f"The index {spec.table} is damaged; delete it.") from exc
        source = spec.copy or spec.stream
        try:
            self._reader = PartitionReader(
                source, raw=spec.raw, size=spec.size, table=table, cache_frames=32
            )
        except ImageDamagedError as exc:
            raise stream_error(spec.stream.name, exc) from exc
        self.size = self._reader.size
        self._tail = spec.tail or b""
        self._tail_offset = spec.tail_offset

    def pread(self, offset: int, length: int) -> bytes:
        data = self._reader.pread(offset, length)
        t0, t1 = self._tail_offset, self._tail_offset + len(self._tail)
        end = offset + len(data)
        if self._tail and offset < t1 and end > t0:
            buf = bytearray(data)
            a, b = max(offset, t0), min(end, t1)
            buf[a - offset : b - offset] = self._tail[a - t0 : b - t0]
            data = bytes(buf)
        return data

    def close(self) -> None:
        self._reader.close()


def open_reader(spec: ServerSpec) -> VirtualPartition:
    try:
        return VirtualPartition(spec)
    except OSError as exc:
        raise RescueError(f"Cannot open {spec.stream}: {exc.strerror or exc}.") from exc
