"""Seekable zstd: independent frames plus a seek table, still a plain ``.zst``.

The writer cuts its input into frames of ``frame_size`` bytes, compresses them
on every core (python-zstandard releases the GIL) and appends the seek table of
the Zstandard Seekable Format in a skippable frame. ``zstd -d`` decodes such a
file like any other; we can also read it at random. Each frame carries its
content size and content checksum; the table's per-frame checksum is that same
value (the low 32 bits of the frame's XXH64), so no second hash is computed.

Readers accept any zstd file: with a seek table, frames are decoded in parallel;
without one (Clonezilla's streams), sequentially. Either way a truncated or
corrupt file raises :class:`ImageDamagedError`, never a short read.
"""

from __future__ import annotations

import bisect
import collections
import gzip
import os
import queue
import struct
import threading
import zlib
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

import zstandard

from rescue.errors import ImageDamagedError

MiB = 1 << 20
ZSTD_MAGIC = 0xFD2FB528
SKIPPABLE_MIN, SKIPPABLE_MAX = 0x184D2A50, 0x184D2A5F
SEEKTABLE_SKIPPABLE = 0x184D2A5E
SEEKABLE_MAGIC = 0x8F92EAB1
FOOTER_SIZE = 9
_MAX_FRAMES = 1 << 27


def _threads(threads: int) -> int:
    return threads if threads > 0 else (os.cpu_count() or 1)


_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    """One compressor per thread (they are not thread-safe) and per level."""
    cache: dict[int, zstandard.ZstdCompressor] | None = getattr(_local, "cctx", None)
    if cache is None:
        cache = {}
        _local.cctx = cache
    if level not in cache:
        cache[level] = zstandard.ZstdCompressor(
            level=level, write_checksum=True, write_content_size=True
        )
    return cache[level]


def _compress_frame(level: int, pieces: list[bytes | bytearray | memoryview], size: int) -> bytes:
    """One zstd frame from ``pieces`` (content size and checksum included), without the GIL."""
    frame = b"".join(pieces)  # CPython drops the GIL while joining this much
    if len(frame) != size:
        raise ValueError("frame size mismatch")
    return _compressor(level).compress(frame)


_RAW_BLOCK = 128 * 1024
_RAW_FHD = 0xE4  # 8-byte content size, single segment, content checksum, no dictionary


def content_checksum(data: bytes | bytearray | memoryview) -> int:
    """The low 32 bits of XXH64 of ``data``, as a zstd frame records them.

    zstandard exposes no XXH64 of its own, so a fast compression of ``data``
    with a checksum is made and its last four bytes are taken.
    """
    frame = zstandard.ZstdCompressor(level=1, write_checksum=True).compress(bytes(data))
    (x,) = struct.unpack_from("<I", frame, len(frame) - 4)
    return int(x)


def raw_frame_size(size: int) -> int:
    blocks = max(1, -(-size // _RAW_BLOCK))
    return 4 + 1 + 8 + 3 * blocks + size + 4


def raw_frame(data: bytes | bytearray | memoryview) -> bytes:
    """A zstd frame that stores ``data`` in raw (uncompressed) blocks.

    Its size depends only on ``len(data)``, so the frame can be rewritten in
    place with other content of the same length: how a capture fills in data it
    recovers from a failing disk after the first pass.
    """
    view = memoryview(data).cast("B")
    out = bytearray(struct.pack("<IBQ", ZSTD_MAGIC, _RAW_FHD, len(view)))
    pos = 0
    while True:
        n = min(_RAW_BLOCK, len(view) - pos)
        last = pos + n >= len(view)
        out += (int(last) | (n << 3)).to_bytes(3, "little")
        out += view[pos : pos + n]
        pos += n
        if last:
            break
    out += struct.pack("<I", content_checksum(view))
    return bytes(out)


def raw_frame_content(frame: bytes | bytearray) -> bytes:
    """The data of a frame made by :func:`raw_frame` (other frames are refused)."""
    magic, fhd, size = struct.unpack_from("<IBQ", frame)
    if magic != ZSTD_MAGIC or fhd != _RAW_FHD or len(frame) != raw_frame_size(size):
        raise ImageDamagedError("Not a raw-block frame where one was written.")
    out = bytearray()
    pos = 13
    while True:
        v = int.from_bytes(frame[pos : pos + 3], "little")
        last, btype, n = v & 1, (v >> 1) & 3, v >> 3
        if btype != 0:
            raise ImageDamagedError("Not a raw-block frame where one was written.")
        out += frame[pos + 3 : pos + 3 + n]
        pos += 3 + n
        if last:
            break
    return bytes(out)


def _raw_frame_of(pieces: list[bytes | bytearray | memoryview], size: int) -> bytes:
    frame = b"".join(pieces)
    if len(frame) != size:
        raise ValueError("frame size mismatch")
    return raw_frame(frame)


def _decompressor() -> zstandard.ZstdDecompressor:
    d: zstandard.ZstdDecompressor | None = getattr(_local, "dctx", None)
    if d is None:
        d = zstandard.ZstdDecompressor()
        _local.dctx = d
    return d


class SeekableZstdWriter:
    """A write-only file object producing seekable zstd into ``out``."""

    def __init__(
        self,
        out: BinaryIO,
        *,
        level: int = 3,
        frame_size: int = 4 * MiB,
        threads: int = 0,
        resume: tuple[list[tuple[int, int, int]], list[int]] | None = None,
    ) -> None:
        """``resume``: the (entries, raw frame indexes) of frames already in ``out``."""
        self._out = out
        self._level = level
        self._frame_size = frame_size
        self._workers = _threads(threads)
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="rescue-zstd")
        self._queue: queue.Queue[tuple[int, Future[bytes]] | None] = queue.Queue(2 * self._workers)
        self._error: BaseException | None = None
        self._writer = threading.Thread(target=self._write_frames, name="rescue-out", daemon=True)
        self._writer.start()
        self._pieces: list[bytes | bytearray | memoryview] = []
        self._held = 0  # bytes in _pieces
        self.entries: list[tuple[int, int, int]] = []
        """(compressed size, decompressed size, checksum) of every frame written."""
        self._raw_ranges: list[tuple[int, int]] = []
        self._frame_start = 0
        self._cut_count = 0
        self.raw_frames: list[int] = []
        """Indexes of the frames stored raw (see :meth:`mark_raw`)."""
        self.bytes_in = 0
        self.bytes_out = 0
        self._closed = False
        if resume is not None:
            entries, raw = resume
            self.entries = list(entries)
            self.raw_frames = list(raw)
            self.bytes_in = self._frame_start = sum(d for _, d, _ in entries)
            self.bytes_out = sum(c for c, _, _ in entries)
            self._cut_count = len(entries)

    @property
    def frames(self) -> int:
        return len(self.entries)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Take ``data`` (kept by reference until its frame is cut: do not modify it)."""
        n = len(data)
        self.bytes_in += n
        view = memoryview(data).cast("B")
        fs = self._frame_size
        while len(view):
            take = min(len(view), fs - self._held)
            self._pieces.append(view[:take])
            self._held += take
            view = view[take:]
            if self._held == fs:
                self._cut()
        return n

    def write_pieces(self, pieces: list[bytes | memoryview]) -> None:
        for piece in pieces:
            self.write(piece)

    def mark_raw(self, lo: int, hi: int) -> None:
        """Store the frames holding input bytes ``[lo, hi)`` raw, to be rewritten later.

        Bytes already cut into a frame are left as they were stored.
        """
        lo = max(lo, self._frame_start)  # earlier bytes are in frames already written
        if hi > lo:
            self._raw_ranges.append((lo, hi))

    def _is_raw(self, start: int, size: int) -> bool:
        end = start + size
        keep = [(lo, hi) for lo, hi in self._raw_ranges if hi > end]
        raw = any(lo < end and hi > start for lo, hi in self._raw_ranges)
        self._raw_ranges = keep
        return raw

    def _cut(self) -> None:
        """Hand the pieces of one frame to a worker; they are never joined in Python."""
        pieces, size = self._pieces, self._held
        self._pieces = []
        self._held = 0
        start = self._frame_start
        self._frame_start += size
        index = self._cut_count
        self._cut_count += 1
        if self._raw_ranges and self._is_raw(start, size):
            self.raw_frames.append(index)
            fut = self._pool.submit(_raw_frame_of, pieces, size)
        else:
            fut = self._pool.submit(_compress_frame, self._level, pieces, size)
        self._check_writer()
        self._queue.put((size, fut))  # blocks when enough frames are in flight

    def _check_writer(self) -> None:
        if self._error is not None:
            raise self._error

    def _write_frames(self) -> None:
        """Writer thread: compressed frames to ``out`` in order (the output is hashed there)."""
        try:
            while (item := self._queue.get()) is not None:
                size, fut = item
                compressed = fut.result()
                self._out.write(compressed)
                (checksum,) = struct.unpack_from("<I", compressed, len(compressed) - 4)
                self.entries.append((len(compressed), size, checksum))
                self.bytes_out += len(compressed)
        except BaseException as exc:  # noqa: BLE001  (raised in the caller's thread)
            self._error = exc
            while self._queue.get() is not None:  # let the producer finish or fail
                pass

    def close(self) -> None:
        """Compress what is left, write the seek table; ``out`` stays open."""
        if self._closed:
            return
        try:
            if self._held:
                self._cut()
            self._queue.put(None)
            self._writer.join()
            self._check_writer()
            table = seek_table_bytes(self.entries)
            self._out.write(table)
            self.bytes_out += len(table)
        finally:
            self._closed = True
            self._pool.shutdown(wait=True, cancel_futures=True)

    def abort(self) -> None:
        """Stop without writing anything more (on error or cancel)."""
        if self._closed:
            return
        self._closed = True
        self._error = self._error or OSError("aborted")
        self._queue.put(None)
        self._writer.join()
        self._pool.shutdown(wait=True, cancel_futures=True)


def seek_table_bytes(entries: list[tuple[int, int, int]]) -> bytes:
    """The skippable frame holding the seek table, with per-frame checksums."""
    body = b"".join(struct.pack("<III", c, d, x) for c, d, x in entries)
    footer = struct.pack("<IBI", len(entries), 0x80, SEEKABLE_MAGIC)
    payload = body + footer
    return struct.pack("<II", SEEKTABLE_SKIPPABLE, len(payload)) + payload


@dataclass(frozen=True)
class SeekTable:
    compressed: tuple[int, ...]
    decompressed: tuple[int, ...]
    checksums: tuple[int, ...] | None
    c_offsets: tuple[int, ...]
    """File offset of each frame (plus one entry: the end of the last frame)."""
    d_offsets: tuple[int, ...]
    """Decompressed offset of each frame (plus the total size)."""

    @property
    def size(self) -> int:
        return self.d_offsets[-1]

    @property
    def frames(self) -> int:
        return len(self.compressed)

    @classmethod
    def build(
        cls, compressed: list[int], decompressed: list[int], checksums: list[int] | None
    ) -> SeekTable:
        c_off = [0]
        d_off = [0]
        for c, d in zip(compressed, decompressed, strict=True):
            c_off.append(c_off[-1] + c)
            d_off.append(d_off[-1] + d)
        return cls(
            tuple(compressed),
            tuple(decompressed),
            tuple(checksums) if checksums is not None else None,
            tuple(c_off),
            tuple(d_off),
        )

    @classmethod
    def read_from(cls, f: BinaryIO) -> SeekTable | None:
        """The table at the end of ``f``, or None when the file has none."""
        end = f.seek(0, os.SEEK_END)
        if end < FOOTER_SIZE + 8:
            return None
        f.seek(end - FOOTER_SIZE)
        count, desc, magic = struct.unpack("<IBI", f.read(FOOTER_SIZE))
        if magic != SEEKABLE_MAGIC:
            return None
        if desc & 0x7C or count > _MAX_FRAMES:
            raise ImageDamagedError("The zstd seek table is damaged (bad descriptor or count).")
        has_sum = bool(desc & 0x80)
        esize = 12 if has_sum else 8
        payload = count * esize + FOOTER_SIZE
        start = end - payload - 8
        if start < 0:
            raise ImageDamagedError("The zstd seek table is larger than the file.")
        f.seek(start)
        head = f.read(8)
        magic2, size = struct.unpack("<II", head)
        if magic2 != SEEKTABLE_SKIPPABLE or size != payload:
            raise ImageDamagedError("The zstd seek table's frame header is damaged.")
        body = f.read(count * esize)
        comp, decomp, sums = [], [], []
        for i in range(count):
            if has_sum:
                c, d, x = struct.unpack_from("<III", body, i * 12)
                sums.append(x)
            else:
                c, d = struct.unpack_from("<II", body, i * 8)
            comp.append(c)
            decomp.append(d)
        table = cls.build(comp, decomp, sums if has_sum else None)
        if table.c_offsets[-1] != start:
            raise ImageDamagedError(
                f"The zstd seek table describes {table.c_offsets[-1]} bytes of frames, "
                f"but the frames end at byte {start} (the file was truncated or altered)."
            )
        return table

    @classmethod
    def scan(cls, f: BinaryIO) -> SeekTable:
        """Build a table by walking frame and block headers (no decompression)."""
        comp: list[int] = []
        decomp: list[int] = []
        for _offset, csize, dsize, is_data in walk_frames(f):
            if not is_data:
                continue
            if dsize is None:
                raise ImageDamagedError(
                    "A zstd frame does not record its size; the stream must be indexed "
                    "by decompressing it."
                )
            comp.append(csize)
            decomp.append(dsize)
        return cls.build(comp, decomp, None)


def walk_frames(f: BinaryIO) -> Iterator[tuple[int, int, int | None, bool]]:
    """(offset, compressed size, content size or None, is a data frame) of each frame."""
    end = f.seek(0, os.SEEK_END)
    pos = 0
    while pos < end:
        f.seek(pos)
        head = f.read(18)
        if len(head) < 8:
            raise ImageDamagedError(f"Truncated zstd frame header at byte {pos}.")
        (magic,) = struct.unpack_from("<I", head)
        if SKIPPABLE_MIN <= magic <= SKIPPABLE_MAX:
            (size,) = struct.unpack_from("<I", head, 4)
            yield pos, 8 + size, 0, False
            pos += 8 + size
            continue
        if magic != ZSTD_MAGIC:
            raise ImageDamagedError(f"No zstd frame at byte {pos} (bad magic).")
        try:
            hsize = zstandard.frame_header_size(head)
            params = zstandard.get_frame_parameters(head)
        except zstandard.ZstdError as exc:
            raise ImageDamagedError(f"Damaged zstd frame header at byte {pos}: {exc}.") from exc
        p = pos + hsize
        while True:
            f.seek(p)
            bh = f.read(3)
            if len(bh) < 3:
                raise ImageDamagedError(f"The zstd frame at byte {pos} is truncated.")
            v = bh[0] | bh[1] << 8 | bh[2] << 16
            last, btype, bsize = v & 1, (v >> 1) & 3, v >> 3
            if btype == 3:
                raise ImageDamagedError(f"Damaged zstd block at byte {p}.")
            p += 3 + (1 if btype == 1 else bsize)
            if last:
                break
        if params.has_checksum:
            p += 4
        if p > end:
            raise ImageDamagedError(f"The zstd frame at byte {pos} is truncated.")
        size = params.content_size
        yield pos, p - pos, (None if size == zstandard.CONTENTSIZE_UNKNOWN else size), True
        pos = p


def _decode_frame(frame: bytes, expected: int, where: int) -> bytes:
    try:
        out = _decompressor().decompress(frame, max_output_size=expected)
    except zstandard.ZstdError as exc:
        raise ImageDamagedError(
            f"Damaged zstd frame at byte {where}: {exc}.", offset=where
        ) from exc
    if len(out) != expected:
        raise ImageDamagedError(
            f"The zstd frame at byte {where} holds {len(out)} bytes, not {expected}.", offset=where
        )
    return out


class SeekableZstdReader:
    """Random access to the decompressed bytes of a seekable zstd file."""

    def __init__(self, f: BinaryIO, table: SeekTable, cache_frames: int = 8) -> None:
        self._f = f
        self.table = table
        self._cache: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        self._cache_frames = cache_frames
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        return self.table.size

    def _frame(self, i: int) -> bytes:
        with self._lock:
            data = self._cache.get(i)
            if data is not None:
                self._cache.move_to_end(i)
                return data
            t = self.table
            self._f.seek(t.c_offsets[i])
            raw = self._f.read(t.compressed[i])
            if len(raw) != t.compressed[i]:
                raise ImageDamagedError(f"The zstd frame at byte {t.c_offsets[i]} is truncated.")
            data = _decode_frame(raw, t.decompressed[i], t.c_offsets[i])
            self._cache[i] = data
            if len(self._cache) > self._cache_frames:
                self._cache.popitem(last=False)
            return data

    def pread(self, offset: int, length: int) -> bytes:

        end = min(offset + length, self.size)
        out = []
        pos = offset
        d_off = self.table.d_offsets
        while pos < end:
            i = bisect.bisect_right(d_off, pos) - 1
            frame = self._frame(i)
            start = pos - d_off[i]
            take = min(end - pos, len(frame) - start)
            out.append(frame[start : start + take])
            pos += take
        return b"".join(out)


def iter_decompressed(f: BinaryIO, *, threads: int = 0) -> Iterator[bytes]:
    """The decompressed content of any zstd file, in order, in frame-sized chunks."""
    table = SeekTable.read_from(f)
    if table is None:
        yield from _iter_sequential(f)
        return
    workers = _threads(threads)
    pending: collections.deque[Future[bytes]] = collections.deque()
    with ThreadPoolExecutor(workers, thread_name_prefix="rescue-unzstd") as pool:
        try:
            f.seek(0)
            for i in range(table.frames):
                raw = f.read(table.compressed[i])
                where = table.c_offsets[i]
                if len(raw) != table.compressed[i]:
                    raise ImageDamagedError(
                        f"The zstd frame at byte {where} is truncated.", offset=where
                    )
                if table.checksums is not None and len(raw) >= 4:
                    (x,) = struct.unpack_from("<I", raw, len(raw) - 4)
                    if x != table.checksums[i]:
                        raise ImageDamagedError(
                            f"The zstd frame at byte {where} does not match its seek-table entry.",
                            offset=where,
                        )
                pending.append(pool.submit(_decode_frame, raw, table.decompressed[i], where))
                while len(pending) > 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for fut in pending:
                fut.cancel()


def _iter_sequential(f: BinaryIO, chunk: int = 4 * MiB) -> Iterator[bytes]:
    """Frame after frame with a streaming decoder; a frame cut short is an error."""
    f.seek(0)
    dctx = zstandard.ZstdDecompressor()
    obj = None
    buf = b""
    offset = 0  # file offset of buf[0]
    frame_start = 0
    while True:
        data = f.read(chunk)
        if not data and not buf:
            break
        buf += data
        while buf:
            if obj is None:
                if len(buf) < 8 and data:
                    break  # read more
                if len(buf) < 4:
                    raise ImageDamagedError(f"Trailing garbage at byte {offset} of the zstd file.")
                (magic,) = struct.unpack_from("<I", buf)
                if SKIPPABLE_MIN <= magic <= SKIPPABLE_MAX:
                    if len(buf) < 8:
                        raise ImageDamagedError(f"Truncated skippable frame at byte {offset}.")
                    (size,) = struct.unpack_from("<I", buf, 4)
                    if len(buf) < 8 + size:
                        if not data:
                            raise ImageDamagedError(f"Truncated skippable frame at byte {offset}.")
                        break
                    buf = buf[8 + size :]
                    offset += 8 + size
                    continue
                if magic != ZSTD_MAGIC:
                    raise ImageDamagedError(f"No zstd frame at byte {offset} (bad magic).")
                obj = dctx.decompressobj()
                frame_start = offset
            try:
                out = obj.decompress(buf)
            except zstandard.ZstdError as exc:
                raise ImageDamagedError(
                    f"Damaged zstd frame starting at byte {frame_start}: {exc}.",
                    offset=frame_start,
                ) from exc
            if out:
                yield out
            if obj.eof:
                rest = obj.unused_data
                offset += len(buf) - len(rest)
                buf = rest
                obj = None
            else:
                offset += len(buf)
                buf = b""
        if not data:
            break
    if obj is not None:
        raise ImageDamagedError(
            f"The zstd frame starting at byte {frame_start} is truncated (the file ends early)."
        )


def iter_decompressed_gzip(f: BinaryIO, chunk: int = 4 * MiB) -> Iterator[bytes]:
    """Clonezilla's gzip streams (possibly several members), with truncation detected."""
    f.seek(0)
    try:
        with gzip.GzipFile(fileobj=f, mode="rb") as g:
            while data := g.read(chunk):
                yield data
    except (OSError, EOFError, zlib.error) as exc:
        raise ImageDamagedError(f"The gzip stream is damaged or truncated: {exc}.") from exc
