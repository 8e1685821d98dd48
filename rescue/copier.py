"""The data pipelines: used blocks → partclone stream → seekable zstd → volumes, and back.

Capture reads in a thread (large ``pread`` spans that cover several used runs
when the gaps between them are small), checksums and frames in the calling
thread, and compresses frames on all cores in :class:`SeekableZstdWriter`'s
pool; every stage is bounded, so memory stays flat whatever the disk size.
Restore decompresses frames in parallel and writes each run of used blocks
with one ``pwrite``.
"""

from __future__ import annotations

import os
import queue
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rescue.blockio import binary
from rescue.errors import DeviceError, ImageDamagedError
from rescue.filesystems.base import Allocation
from rescue.image.manifest import StoredFile
from rescue.image.partclone import BlockEncoder, PartcloneHeader, StreamReader, stream_prefix
from rescue.image.seekable import SeekableZstdWriter, iter_decompressed, iter_decompressed_gzip
from rescue.image.volumes import VolumeReader, VolumeWriter, volume_paths
from rescue.progress import ProgressReporter, check_cancel

MiB = 1 << 20
READ_SPAN = 8 * MiB
"""Largest single read; big enough for full disk speed, small enough to keep memory low."""
GAP_READ_THROUGH = 256 * 1024
"""Free gaps up to this size are read and dropped rather than skipped with a new read."""
QUEUE_DEPTH = 4


@dataclass(frozen=True)
class CompressionOptions:
    level: int = 3
    frame_size: int = 4 * MiB
    threads: int = 0
    split: int | None = None


@dataclass(frozen=True)
class StreamResult:
    files: tuple[StoredFile, ...]
    stream_bytes: int


def _read_error(path: str, offset: int, exc: OSError) -> DeviceError:
    return DeviceError(f"Read error on {path} at byte {offset}: {exc.strerror or exc}.")


class _Reader(threading.Thread):
    """Reads the used bytes of a partition in order and hands them over in chunks."""

    def __init__(
        self,
        fd: int,
        path: str,
        base: int,
        alloc: Allocation,
        cancel: threading.Event | None,
    ) -> None:
        super().__init__(name="rescue-reader", daemon=True)
        self.fd = fd
        self.path = path
        self.base = base
        self.alloc = alloc
        self.cancel = cancel
        self.out: queue.Queue[bytes | bytearray | BaseException | None] = queue.Queue(QUEUE_DEPTH)
        self.sparse = stat.S_ISREG(os.fstat(fd).st_mode)
        """A regular file: its holes read as zeros without touching the disk."""
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()
        # unblock a put() waiting on a full queue
        while True:
            try:
                self.out.get_nowait()
            except queue.Empty:
                break

    def _put(self, item: bytes | bytearray | BaseException | None) -> None:
        while not self._stop_event.is_set():
            try:
                self.out.put(item, timeout=0.2)
            except queue.Full:
                continue
            return

    def run(self) -> None:
        try:
            for chunk in self._chunks():
                if self._stop_event.is_set() or (self.cancel is not None and self.cancel.is_set()):
                    break
                self._put(chunk)
            self._put(None)
        except BaseException as exc:  # noqa: BLE001  (handed to the consumer, raised there)
            self._put(exc)

    def _chunks(self) -> Iterator[bytes | bytearray]:
        bs = self.alloc.block_size
        span_lo = span_hi = -1
        pieces: list[tuple[int, int]] = []  # (offset, length) inside the span
        for first, count in self.alloc.runs():
            lo = first * bs
            hi = min((first + count) * bs, self.alloc.device_size)
            while lo < hi:
                if (
                    span_lo >= 0
                    and lo - span_hi <= GAP_READ_THROUGH
                    and lo + 1 - span_lo <= READ_SPAN
                ):
                    take = min(hi, span_lo + READ_SPAN) - lo
                    pieces.append((lo - span_lo, take))
                    span_hi = lo + take
                else:
                    if span_lo >= 0:
                        yield self._read_span(span_lo, span_hi, pieces)
                    take = min(hi - lo, READ_SPAN)
                    span_lo, span_hi = lo, lo + take
                    pieces = [(0, take)]
                lo += take
        if span_lo >= 0:
            yield self._read_span(span_lo, span_hi, pieces)

    def _read_span(self, lo: int, hi: int, pieces: list[tuple[int, int]]) -> bytes | bytearray:
        buf = bytearray(hi - lo)  # zero-filled: holes of a sparse disk file need no read
        view = memoryview(buf)
        for a, b in self._data_ranges(self.base + lo, self.base + hi):
            self._read_into(view[a - self.base - lo : b - self.base - lo], a)
        if len(pieces) == 1 and pieces[0] == (0, len(buf)):
            return buf
        return b"".join(view[o : o + n] for o, n in pieces)

    def _data_ranges(self, lo: int, hi: int) -> Iterator[tuple[int, int]]:
        """Parts of ``[lo, hi)`` that hold data: all of it on a disk, skipping a file's holes."""
        if not self.sparse:
            yield lo, hi
            return
        pos = lo
        while pos < hi:
            try:
                pos = os.lseek(self.fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: nothing but a hole up to the end of the file
                return
            if pos >= hi:
                return
            end = min(os.lseek(self.fd, pos, os.SEEK_HOLE), hi)
            yield pos, end
            pos = end

    def _read_into(self, view: memoryview, offset: int) -> None:
        got = 0
        while got < len(view):
            try:
                n = os.preadv(self.fd, [view[got:]], offset + got)
            except OSError as exc:
                raise _read_error(self.path, offset + got, exc) from exc
            if n == 0:
                raise DeviceError(
                    f"{self.path} ended at byte {offset + got}, inside the filesystem: "
                    "the disk is smaller than its partition table or filesystem says."
                )
            got += n


@dataclass(frozen=True)
class Extent:
    """A byte range of an open disk or file: where a partition is read or written."""

    fd: int
    path: str
    base: int
    size: int


def write_stream(
    src: Extent,
    alloc: Allocation,
    out_base: Path,
    options: CompressionOptions,
    *,
    progress: ProgressReporter,
    cancel: threading.Event | None,
) -> StreamResult:
    """Store the used blocks of ``src`` as a stream: partclone, or raw bytes for a dd stream."""
    raw = alloc.fstype == "dd"
    encoder = None
    prefix = b""
    if not raw:
        prefix = stream_prefix(alloc)
        encoder = BlockEncoder(PartcloneHeader.unpack(prefix[:110]))
    reader = _Reader(src.fd, src.path, src.base, alloc, cancel)
    volumes = VolumeWriter(out_base, options.split)
    zw = SeekableZstdWriter(
        binary(volumes), level=options.level, frame_size=options.frame_size, threads=options.threads
    )
    reader.start()
    try:
        zw.write(prefix)
        while (item := reader.out.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            check_cancel(cancel)
            if encoder:
                zw.write_pieces(encoder.encode_pieces(item))
            else:
                zw.write(item)
            progress.advance(len(item))
        check_cancel(cancel)
        if encoder:
            zw.write(encoder.finish())
        zw.close()
        volumes.close(fsync=True)
    except BaseException:
        zw.abort()
        volumes.close(fsync=False)
        raise
    finally:
        reader.stop()
        reader.join()
    if raw and zw.bytes_in != alloc.device_size:
        raise DeviceError(
            f"{src.path}: read {zw.bytes_in} bytes of a {alloc.device_size}-byte partition."
        )
    return StreamResult(
        files=tuple(StoredFile(p.name, size, digest) for p, size, digest in volumes.files),
        stream_bytes=zw.bytes_in,
    )


class ChunkFile:
    """A minimal readable file over an iterator of byte chunks (for StreamReader)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = memoryview(b"")
        self._pos = 0

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

    def tell(self) -> int:
        return self._pos


def open_stream_chunks(
    out_base: Path, compression: str, *, threads: int = 0, reader: VolumeReader | None = None
) -> Iterator[bytes]:
    """Decompressed chunks of a stored stream (split or not, any supported compression)."""
    owned = reader is None
    reader = reader or VolumeReader(volume_paths(out_base))
    chunks: Iterator[bytes]
    if compression == "zst":
        chunks = iter_decompressed(binary(reader), threads=threads)
    elif compression == "gz":
        chunks = iter_decompressed_gzip(binary(reader))
    elif compression == "uncomp":
        chunks = iter(lambda: reader.read(4 * MiB), b"")
    else:
        raise ImageDamagedError(f"{out_base.name}: compression {compression!r} is not supported.")
    return _named_errors(chunks, out_base.name, reader, close=owned)


def _named_errors(
    chunks: Iterator[bytes], name: str, reader: VolumeReader, *, close: bool
) -> Iterator[bytes]:
    """Say which stream (and which split volume) a decoding error is in."""
    try:
        yield from chunks
    except ImageDamagedError as exc:
        volume = reader.volume_at(exc.offset) if exc.offset is not None else None
        raise stream_error(name, exc, volume or reader.current_volume()) from exc
    finally:
        if close:
            reader.close()


def stream_error(name: str, exc: ImageDamagedError, volume: str | None = None) -> ImageDamagedError:
    """``exc`` with the stream's file name in front, once."""
    if name in exc.message:
        return exc
    where = f"{name} (volume {volume})" if volume and volume != name else name
    return ImageDamagedError(f"{where}: {exc.message}", hint=exc.hint)


def restore_partclone_stream(
    chunks: Iterator[bytes],
    dst: Extent,
    *,
    progress: ProgressReporter,
    cancel: threading.Event | None,
) -> PartcloneHeader:
    """Write the used blocks of a partclone stream into ``dst``."""
    reader = StreamReader(ChunkFile(chunks))
    header = reader.header
    fs_bytes = header.total_blocks * header.block_size
    if fs_bytes > dst.size:
        raise DeviceError(
            f"The filesystem in the image needs {fs_bytes} bytes but {dst.path} "
            f"has room for {dst.size} bytes."
        )
    bs = header.block_size
    for first, data in reader.iter_runs():
        check_cancel(cancel)
        _pwrite_all(dst.fd, dst.path, data, dst.base + first * bs)
        progress.advance(len(data))
    return header


def restore_raw_stream(
    chunks: Iterator[bytes],
    dst: Extent,
    *,
    progress: ProgressReporter,
    cancel: threading.Event | None,
) -> int:
    """Write a dd stream into ``dst``; returns the bytes written."""
    pos = 0
    for chunk in chunks:
        check_cancel(cancel)
        if pos + len(chunk) > dst.size:
            raise DeviceError(
                f"The raw partition in the image is larger than {dst.path}'s {dst.size} bytes."
            )
        _pwrite_all(dst.fd, dst.path, chunk, dst.base + pos)
        pos += len(chunk)
        progress.advance(len(chunk))
    return pos


def _pwrite_all(fd: int, path: str, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    done = 0
    while done < len(view):
        try:
            done += os.pwrite(fd, view[done:], offset + done)
        except OSError as exc:
            raise DeviceError(
                f"Write error on {path} at byte {offset + done}: {exc.strerror or exc}."
            ) from exc
