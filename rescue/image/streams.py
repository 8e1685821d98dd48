"""The read side of stored streams: decompressed chunks of a stream, split or not.

Verify, restore, browse and the image model read streams through here; the
capture pipeline (:mod:`rescue.copier`) only writes them. Every stream file is
opened as a file of its image folder (:mod:`rescue.image.folder`), and every
decoder here works in bounded pieces whatever the stream claims
(docs/FORMAT.md, "What a reader enforces").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from rescue.blockio import binary
from rescue.errors import ImageDamagedError, ImageError, UnsupportedImageError
from rescue.filesystems import registry
from rescue.image.partclone import (
    HEADER_SIZE,
    PartcloneHeader,
    named,
    read_bitmap,
)
from rescue.image.seekable import (
    SeekableZstdReader,
    SeekTable,
    iter_decompressed,
    iter_decompressed_gzip,
)
from rescue.image.volumes import VolumeReader, volume_paths

MiB = 1 << 20
COMPRESSIONS = ("zst", "gz", "uncomp")


class ChunkFile:
    """A minimal readable file over an iterator of byte chunks (for StreamReader).

    ``name`` (the stream's file name, taken from the chunks when they carry
    one) goes into the errors of the reader on top.
    """

    def __init__(self, chunks: Iterator[bytes], name: str | None = None) -> None:
        self._chunks = chunks
        self._buf = memoryview(b"")
        self._pos = 0
        self.name = name or getattr(chunks, "name", None)

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            rest = [bytes(self._buf), *self._chunks]
            self._buf = memoryview(b"")
            data = b"".join(rest)
            self._pos += len(data)
            return data
        if len(self._buf) >= n:
            out = bytes(self._buf[:n])
            self._buf = self._buf[n:]
            self._pos += n
            return out
        parts = [bytes(self._buf)]
        have = len(self._buf)
        self._buf = memoryview(b"")
        for chunk in self._chunks:
            if have + len(chunk) >= n:
                need = n - have
                parts.append(chunk[:need])
                self._buf = memoryview(chunk)[need:]
                have = n
                break
            parts.append(chunk)
            have += len(chunk)
        data = b"".join(parts)
        self._pos += len(data)
        return data

    def read_pieces(self, n: int) -> list[memoryview]:
        """The next ``n`` bytes (fewer only where the chunks end) as views of the chunks:
        nothing is copied. A view keeps its chunk alive only as long as it is held."""
        out: list[memoryview] = []
        have = 0
        while have < n:
            if not self._buf:
                chunk = next(self._chunks, None)
                if chunk is None:
                    break
                self._buf = memoryview(chunk).cast("B")
                continue
            take = min(n - have, len(self._buf))
            out.append(self._buf[:take])
            self._buf = self._buf[take:]
            have += take
        self._pos += have
        return out

    def tell(self) -> int:
        return self._pos


class StreamChunks:
    """The decompressed chunks of one stream (an iterator), with the stream's name."""

    def __init__(self, chunks: Iterator[bytes], name: str) -> None:
        self._chunks = chunks
        self.name = name

    def __iter__(self) -> StreamChunks:
        return self

    def __next__(self) -> bytes:
        return next(self._chunks)

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()


def _decoder(f: BinaryIO, compression: str, name: str, threads: int = 0) -> Iterator[bytes]:
    if compression == "zst":
        return iter_decompressed(f, threads=threads)
    if compression == "gz":
        return iter_decompressed_gzip(f)
    if compression == "uncomp":
        return iter(lambda: f.read(4 * MiB), b"")
    raise UnsupportedImageError(f"{name}: compression {compression!r} is not supported.")


def open_stream_chunks(
    out_base: Path, compression: str, *, threads: int = 0, reader: VolumeReader | None = None
) -> StreamChunks:
    """Decompressed chunks of a stored stream (split or not, any supported compression),
    each of at most a frame (4 MiB for rescue's streams, 64 MiB at most for any)."""
    owned = reader is None
    reader = reader or VolumeReader(volume_paths(out_base))
    try:
        chunks = _decoder(binary(reader), compression, out_base.name, threads)
    except BaseException:
        if owned:
            reader.close()
        raise
    return StreamChunks(_named_errors(chunks, out_base.name, reader, close=owned), out_base.name)


def _named_errors(
    chunks: Iterator[bytes], name: str, reader: VolumeReader, *, close: bool
) -> Iterator[bytes]:
    """Say which stream (and which split volume) a decoding error is in."""
    try:
        yield from chunks
    except ImageDamagedError as exc:
        volume = reader.volume_at(exc.offset) if exc.offset is not None else None
        raise stream_error(name, exc, volume or reader.current_volume()) from exc
    except ImageError as exc:
        raise named(exc, name) from exc
    finally:
        if close:
            reader.close()


def stream_error(name: str, exc: ImageDamagedError, volume: str | None = None) -> ImageDamagedError:
    """``exc`` with the stream's file name in front, once."""
    if name in exc.message:
        return exc
    where = f"{name} (volume {volume})" if volume and volume != name else name
    return ImageDamagedError(f"{where}: {exc.message}", hint=exc.hint, offset=exc.offset)


# --- checking a stream before a restore writes anything ----------------------------------


def check_stream(
    stream_base: Path,
    compression: str,
    *,
    partition_size: int | None,
    expect_fstype: str | None = None,
) -> PartcloneHeader:
    """The partclone header of a stream, checked without decoding its blocks.

    Opens every volume (regular files inside the folder only), checks a seek
    table against the file (frame count, sizes adding up to where the table
    starts, no frame larger than a reader takes) and against the header (the
    stream is exactly as long as the header says), checks the header's fields
    against each other and against ``partition_size`` (the size of the
    partition the stream was taken from, as the manifest or the partition
    table says; None when nothing says it) and, when ``expect_fstype`` (a blkid
    name) is given, that the header is of that filesystem; then reads the
    bitmap and checks its length, CRC32 and count of used blocks. Only the
    header and the bitmap are decoded (a few frames for a seekable stream; the
    first bytes of a Clonezilla stream, in bounded pieces).

    Raises :class:`ImageDamagedError` (exit 1) for any damage or mismatch,
    :class:`UnsupportedImageError` or :class:`NotAnImageError` (exit 2) for a
    stream rescue does not read; every message starts with the stream's name.
    """
    name = stream_base.name
    try:
        with VolumeReader(volume_paths(stream_base)) as volumes:
            f = binary(volumes)
            table = SeekTable.read_from(f) if compression == "zst" else None
            if table is not None:
                reader = SeekableZstdReader(f, table, cache_frames=2)
                header = _checked_prefix(
                    _Reads(reader.pread),
                    partition_size=partition_size,
                    stream_size=table.size,
                )
                if header.stream_size != table.size:
                    raise ImageDamagedError(
                        f"The partclone header describes a stream of {header.stream_size} "
                        f"bytes; its seek table holds {table.size}."
                    )
            else:
                chunks = StreamChunks(_decoder(f, compression, name), name)
                try:
                    header = _checked_prefix(ChunkFile(chunks).read, partition_size=partition_size)
                finally:
                    chunks.close()
    except ImageError as exc:
        raise named(exc, name) from exc
    if expect_fstype is not None:
        _check_fstype(name, header, expect_fstype)
    return header


def check_raw_stream(stream_base: Path, compression: str, *, partition_size: int | None) -> int:
    """For a raw (dd) stream: its volumes and, with a seek table, that table against the
    file and against ``partition_size``; returns the decoded size when the table gives it
    (0 otherwise). Nothing is decoded. Raises as :func:`check_stream`."""
    name = stream_base.name
    try:
        with VolumeReader(volume_paths(stream_base)) as volumes:
            table = SeekTable.read_from(binary(volumes)) if compression == "zst" else None
    except ImageError as exc:
        raise named(exc, name) from exc
    if table is None:
        return 0
    if partition_size is not None and table.size != partition_size:
        raise ImageDamagedError(
            f"{name}: the raw stream holds {table.size} bytes; the partition has {partition_size}."
        )
    return table.size


class _Reads:
    """``read(n)`` in order over ``pread(offset, n)``."""

    def __init__(self, pread: Callable[[int, int], bytes]) -> None:
        self._pread = pread
        self._pos = 0

    def __call__(self, n: int) -> bytes:
        data = self._pread(self._pos, n)
        self._pos += len(data)
        return data


def _checked_prefix(
    read: Callable[[int], bytes], *, partition_size: int | None, stream_size: int | None = None
) -> PartcloneHeader:
    head = read(HEADER_SIZE)
    if len(head) < HEADER_SIZE:
        raise ImageDamagedError(
            f"The partclone header is truncated ({len(head)} of {HEADER_SIZE} bytes)."
        )
    header = PartcloneHeader.unpack(head)
    header.check(partition_size=partition_size, stream_size=stream_size)
    read_bitmap(read, header, keep=False)
    return header


def _check_fstype(name: str, header: PartcloneHeader, fstype: str) -> None:
    fs = registry.get(fstype)
    expected = fs.partclone_name if fs is not None else None
    if expected is None:
        return  # a filesystem rescue does not image: nothing to compare with
    if not header.fs.upper().startswith(expected.upper()):
        raise ImageDamagedError(
            f"{name}: the stream holds a partclone image of {header.fs!r}, "
            f"not of the {fstype} filesystem the image lists."
        )
