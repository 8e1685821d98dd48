"""Random access to any partition stream, with an index built once where needed.

Our own streams carry a seek table: nothing to build, a partition opens at once.
Streams written by Clonezilla (``zstd -T0``: one frame for the whole stream;
gzip) or a zstd stream that lost its seek table cannot be read at random as
they are. For those an index is built once, with progress, and kept:

- zstd made of many small frames that record their sizes: a seek table found by
  walking the frame headers (no decompression), kept as ``NAME.seektable``;
- anything else: a seekable zstd copy of the decompressed stream, kept as
  ``NAME.seekable.zst`` (as large as the stream, built at decompression speed).

The index goes inside the image folder, in a hidden folder ``.rescue-index``
that Clonezilla's file patterns never match (never through a symbolic link:
such an ``.rescue-index`` is passed over); when the image folder cannot be
written (a read-only share) or lacks room, it goes to rescue's cache folder
instead (``/var/cache/rescue/index``, or ``$RESCUE_CACHE_DIR``). Nowhere else:
a stream is a file directly inside its image folder, or it is refused. Each
index records the names, sizes and times of the files it was built from and is
rebuilt when they change; an index found in an image is checked like the
stream itself before it is used.

Before anything is built or served, the stream is checked as a restore checks
it (:func:`check_part`): a hostile header or seek table is refused in words.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import stat
import threading
from dataclasses import replace
from pathlib import Path

from rescue.blockio import binary, write_all
from rescue.errors import BadInputError, ImageDamagedError, ImageError, RescueError
from rescue.image.chain import ChainReader, Link
from rescue.image.folder import read_member, sealed_folder
from rescue.image.manifest import DATA_STREAMS, StoredAs
from rescue.image.names import INDEX_DIR
from rescue.image.partclone import named
from rescue.image.random_access import PartitionReader
from rescue.image.seekable import MAX_FRAME_CONTENT, MiB, SeekableZstdWriter, SeekTable
from rescue.image.streams import check_raw_stream, check_stream, open_stream_chunks, stream_error
from rescue.image.view import ImagePart
from rescue.image.volumes import VolumeReader, volume_paths
from rescue.imagedev.spec import ServerSpec
from rescue.progress import NullProgress, ProgressReporter, check_cancel

log = logging.getLogger(__name__)

DEFAULT_CACHE = Path("/var/cache/rescue/index")
MAX_FRAME = MAX_FRAME_CONTENT
"""A frame larger than this makes every random read too slow: such streams get a copy."""
INDEX_VERSION = 2
"""Version of the index records (1, with JSON seek tables, is rebuilt)."""
MAX_META = 64 * 1024
"""An index record (``STREAM.index.json``) is small: names, sizes and times of the volumes."""

FRAME_CACHE_MAX = 256 * MiB
"""The most decoded frames a server keeps (less on a machine with little memory free):
64 frames of 4 MiB, the largest memory of any rescue process, whatever the disk size."""
PREFETCH_FRAMES = 2
"""Frames decoded ahead, in background threads, of reads that follow each other."""


def cache_root() -> Path:
    return Path(os.environ.get("RESCUE_CACHE_DIR") or DEFAULT_CACHE)


def _identity(stream: Path) -> list[list[object]]:
    """Name, size and modification time of every file of the stream."""
    out: list[list[object]] = []
    for p in volume_paths(stream):
        st = os.lstat(p)
        out.append([p.name, st.st_size, st.st_mtime_ns])
    return out


def _own_table(stream: Path) -> SeekTable | None:
    """The stream's own seek table (None when it has none)."""
    with VolumeReader(volume_paths(stream)) as v:
        return SeekTable.read_from(binary(v))


def _candidate_dirs(stream: Path) -> list[Path]:
    """Where an index of ``stream`` may live: inside its image folder, or in rescue's cache.

    ``stream`` names a file directly inside its image folder (the volume
    reader refuses anything else), so its parent is the image folder.
    """
    volume_paths(stream)
    key = hashlib.sha256(str(stream.resolve()).encode()).hexdigest()[:16]
    if sealed_folder(stream.parent) is not None:  # nothing plain goes into an encrypted image
        return [cache_root() / key]
    return [stream.parent / INDEX_DIR, cache_root() / key]


def _is_real_dir(folder: Path) -> bool:
    """``folder`` is a folder itself, not a symbolic link to one (or anything else)."""
    try:
        return stat.S_ISDIR(os.lstat(folder).st_mode)
    except OSError:
        return False


def _meta_name(stream: Path) -> str:
    return f"{stream.name}.index.json"


def _index_name(stream: Path, kind: str) -> str:
    return f"{stream.name}.seektable" if kind == "table" else f"{stream.name}.seekable.zst"


def find_index(stream: Path) -> tuple[str, Path] | None:
    """("table" or "copy", file) of a valid index already built for ``stream``.

    An index folder inside an image may have been made by anyone: its record
    is read with a size limit, it must name the file rescue would have made,
    and that file must be a regular file of the index folder.
    """
    ident = _identity(stream)
    for folder in _candidate_dirs(stream):
        if not _is_real_dir(folder):
            continue
        try:
            doc = json.loads(read_member(folder, _meta_name(stream), MAX_META))
        except (RescueError, ValueError, UnicodeDecodeError):
            continue
        if not isinstance(doc, dict) or doc.get("version") != INDEX_VERSION:
            log.info("the index in %s is of another version; it will be rebuilt", folder)
            continue
        kind = doc.get("kind")
        if kind in ("table", "copy") and doc.get("file") == _index_name(stream, str(kind)):
            target = folder / _index_name(stream, str(kind))
            if doc.get("source") == ident and _is_regular(target):
                return str(kind), target
        log.info("the index in %s is out of date; it will be rebuilt", folder)
    return None


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _create(path: Path) -> int:
    """A new file at ``path`` for writing; whatever was there (a link included) is replaced,
    never written through."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)


def _write_file(path: Path, data: bytes) -> None:
    """``data`` in ``path`` (a new file, fsync'ed)."""
    fd = _create(path)
    try:
        write_all(fd, data, path)
        os.fsync(fd)
    finally:
        os.close(fd)


def _usable_dir(folder: Path, in_image: bool) -> bool:
    """``folder`` exists (made if need be) as a folder of its own and can be written."""
    try:
        if in_image:  # directly inside the image folder: never through a link
            with contextlib.suppress(FileExistsError):
                os.mkdir(folder, 0o755)
        else:
            folder.mkdir(parents=True, exist_ok=True)
        if not _is_real_dir(folder):
            log.warning("%s is not a folder of its own; it is not used for the index", folder)
            return False
        probe = folder / f".write-test-{os.getpid()}"
        os.close(_create(probe))
        probe.unlink()
    except OSError:
        return False
    return True


def _writable_dir(
    candidates: list[Path], need: int, what: str = "the index this image needs"
) -> Path:
    for k, folder in enumerate(candidates):
        if not _usable_dir(folder, in_image=k == 0):
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
    if table.frames == 0 or table.max_frame > MAX_FRAME:
        return None
    return table


def _write_meta(
    folder: Path, stream: Path, kind: str, name: str, ident: list[list[object]]
) -> None:
    doc = {"version": INDEX_VERSION, "kind": kind, "file": name, "source": ident}
    meta = folder / _meta_name(stream)
    tmp = meta.with_suffix(".tmp")
    _write_file(tmp, json.dumps(doc).encode())
    os.replace(tmp, meta)


def check_part(part: ImagePart) -> None:
    """The stream of ``part`` checked as a restore checks it first: volumes, seek table,
    partclone header against the partition, bitmap (nothing else is decoded)."""
    assert part.stream is not None
    size = part.size or None
    if part.stored_as == StoredAs.PARTCLONE:
        check_stream(part.stream, part.compression, partition_size=size, expect_fstype=part.fstype)
        for link in part.links[1:]:  # the images an incremental one builds on
            check_stream(link.stream, "zst", partition_size=size, expect_fstype=part.fstype)
    else:
        check_raw_stream(part.stream, part.compression, partition_size=size)


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
        name = _index_name(stream, "table")
        tmp = folder / (name + ".tmp")
        _write_file(tmp, table.to_bytes())
        os.replace(tmp, folder / name)
        _write_meta(folder, stream, "table", name, ident)
        return "table", folder / name
    folder = _writable_dir(_candidate_dirs(stream), stored)
    name = _index_name(stream, "copy")
    target = folder / name
    tmp = folder / (name + ".tmp")
    progress.phase(f"Indexing {stream.name} (once, for random access)", stored)
    reader = VolumeReader(volume_paths(stream))
    done = 0
    try:
        with os.fdopen(_create(tmp), "wb") as out:
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
    check_part(part)
    if part.links:  # rescue's own streams, each with its seek table
        chain = tuple((link.stream, link.regions) for link in part.links)
        return replace(spec, chain=chain, region_size=part.region_size)
    if part.compression == "zst" and _own_table(part.stream) is not None:
        return spec
    found = find_index(part.stream) or build_index(part, progress, cancel)
    kind, path = found
    if kind == "table":
        return ServerSpec(**{**spec.__dict__, "table": path})
    return ServerSpec(**{**spec.__dict__, "copy": path})


def frame_cache_bytes() -> int:
    """How many decoded bytes a server caches: :data:`FRAME_CACHE_MAX`, or an eighth of
    the memory available when that is less (never under 64 MiB)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    return max(64 * MiB, min(FRAME_CACHE_MAX, avail // 8))
    except (OSError, ValueError, IndexError):
        pass
    return 64 * MiB


class VirtualPartition:
    """The served bytes: the stream's partition, its tail, zeros up to the partition size."""

    def __init__(self, spec: ServerSpec) -> None:
        table = None
        if spec.table is not None:
            table = _read_table_index(spec.table, spec.stream)
        source = spec.copy or spec.stream
        try:
            self._reader: PartitionReader | ChainReader
            if spec.chain:
                links = [Link(s, r) for s, r in spec.chain]
                self._reader = ChainReader(
                    links, spec.region_size, size=spec.size, cache_frames=1024,
                    cache_bytes=frame_cache_bytes(), prefetch=PREFETCH_FRAMES,
                )  # fmt: skip
            else:
                self._reader = PartitionReader(
                    source,
                    raw=spec.raw,
                    size=spec.size,
                    table=table,
                    cache_frames=1024,
                    cache_bytes=frame_cache_bytes(),
                    prefetch=PREFETCH_FRAMES,
                )
        except ImageDamagedError as exc:
            raise stream_error(spec.stream.name, exc) from exc
        except ImageError as exc:
            raise named(exc, spec.stream.name) from exc
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

    def pieces(self, offset: int, length: int) -> list[bytes | memoryview]:
        """The bytes of :meth:`pread` as pieces to copy (views into decoded frames)."""
        end = min(offset + length, self.size)
        t0, t1 = self._tail_offset, self._tail_offset + len(self._tail)
        if self._tail and offset < t1 and end > t0:
            return [self.pread(offset, length)]
        return self._reader.pieces(offset, length)

    def close(self) -> None:
        self._reader.close()


def _read_table_index(path: Path, stream: Path) -> SeekTable:
    """A seek table kept as an index, checked against the stream it describes."""
    try:
        with VolumeReader(volume_paths(stream)) as v:
            frames_end = v.size
        with VolumeReader([path]) as f:
            return SeekTable.read_index(binary(f), frames_end)
    except ImageDamagedError as exc:
        raise ImageDamagedError(f"The index {path} is damaged ({exc.message}); delete it.") from exc


def open_reader(spec: ServerSpec) -> VirtualPartition:
    try:
        return VirtualPartition(spec)
    except OSError as exc:
        raise RescueError(f"Cannot open {spec.stream}: {exc.strerror or exc}.") from exc
