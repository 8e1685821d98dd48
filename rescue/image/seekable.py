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
import sys
import threading
import zlib
from array import array
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

import zstandard

from rescue.errors import BadInputError, ImageDamagedError, UnsupportedImageError

MiB = 1 << 20
ZSTD_MAGIC = 0xFD2FB528
SKIPPABLE_MIN, SKIPPABLE_MAX = 0x184D2A50, 0x184D2A5F
SEEKTABLE_SKIPPABLE = 0x184D2A5E
SEEKABLE_MAGIC = 0x8F92EAB1
FOOTER_SIZE = 9


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


Pieces = list[bytes | bytearray | memoryview]


def _compress_frame(
    level: int, pieces: Pieces, size: int, release: Callable[[], None] | None = None
) -> bytes:
    """One zstd frame from ``pieces`` (content size and checksum included), without the GIL;
    a frame in one piece is compressed where it lies. ``release`` runs once the input
    is no longer needed."""
    frame = pieces[0] if len(pieces) == 1 else b"".join(pieces)  # join drops the GIL too
    if len(frame) != size:
        raise ValueError("frame size mismatch")
    try:
        return _compressor(level).compress(frame)
    finally:
        if release is not None:
            release()


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


def _raw_frame_of(pieces: Pieces, size: int, release: Callable[[], None] | None = None) -> bytes:
    frame = b"".join(pieces)
    if release is not None:
        release()
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
                self._cut_held()
        return n

    def write_pieces(self, pieces: list[bytes | memoryview]) -> None:
        for piece in pieces:
            self.write(piece)

    @property
    def workers(self) -> int:
        return self._workers

    def write_frame(
        self, frame: bytes | bytearray | memoryview, release: Callable[[], None] | None = None
    ) -> None:
        """Take one whole frame, compressed where it lies (not to be changed until
        ``release`` is called, from a worker thread, once the frame is compressed).
        Frames and :meth:`write` do not mix within a stream."""
        if self._held:
            raise ValueError("a frame after bytes not yet cut into one")
        self.bytes_in += len(frame)
        self._cut([frame], len(frame), release)

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

    def _cut_held(self) -> None:
        pieces, size = self._pieces, self._held
        self._pieces = []
        self._held = 0
        self._cut(pieces, size)

    def _cut(self, pieces: Pieces, size: int, release: Callable[[], None] | None = None) -> None:
        """Hand the pieces of one frame to a worker; they are never joined in Python."""
        if self._cut_count >= MAX_FRAMES:
            raise BadInputError(
                f"The stream needs more than {MAX_FRAMES} frames of {self._frame_size} bytes, "
                "more than a reader of the image format takes (docs/FORMAT.md, section 3).",
                hint="Image this partition in parts, or with a tool made for such sizes.",
            )
        start = self._frame_start
        self._frame_start += size
        index = self._cut_count
        self._cut_count += 1
        if self._raw_ranges and self._is_raw(start, size):
            self.raw_frames.append(index)
            fut = self._pool.submit(_raw_frame_of, pieces, size, release)
        else:
            fut = self._pool.submit(_compress_frame, self._level, pieces, size, release)
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
                self._cut_held()
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


# --- reading: every size a file states is checked before memory is given for it -----------

MAX_FRAME_CONTENT = 64 * MiB
"""The most one frame of a seek table may hold decoded (rescue writes 4 MiB frames; an index
table of a foreign stream takes frames up to this size)."""
MAX_FRAMES = 1 << 22
"""The most frames a seek table may list: 16 TiB of stream in 4 MiB frames, about 100 MB of
table in memory."""
MIN_FRAME = 9
"""The smallest zstd frame: magic, frame header descriptor, one header byte, one empty block."""
MAX_WINDOW = 1 << 27
"""The largest window a frame decoded as a stream may ask for (zstd's own default limit;
``zstd --long`` and level 22 use this much)."""
BLOCK_MAX = 128 * 1024
"""A zstd block never holds (or decodes to) more than this."""
_FEED_BLOCKS = 32
"""Blocks given to the streaming decoder at a time: at most 4 MiB of output per call."""
INFLIGHT = 64 * MiB
"""Decoded bytes of frames in flight (parallel decoding) or kept in a random reader's cache."""


def max_compressed(decompressed: int) -> int:
    """The largest frame a writer can make of ``decompressed`` bytes (zstd's bound, generously;
    a frame of raw blocks included)."""
    return decompressed + (decompressed >> 6) + 1024


def _entry_error(i: int, c: int, d: int) -> ImageDamagedError:
    if d > MAX_FRAME_CONTENT:
        why = f"it would decode to {d} bytes, more than the {MAX_FRAME_CONTENT} a frame may hold"
    elif c < MIN_FRAME:
        why = f"{c} bytes cannot hold a zstd frame"
    else:
        why = f"{c} bytes are more than a frame of {d} bytes can take"
    return ImageDamagedError(f"The zstd seek table is damaged: entry {i} says {c} bytes ({why}).")


class FrameSizes:
    """The sizes of a table's frames, as the differences of its offsets (no list of its own)."""

    __slots__ = ("_offsets",)

    def __init__(self, offsets: array[int]) -> None:
        self._offsets = offsets

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> int:
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self._offsets[i + 1] - self._offsets[i]

    def __iter__(self) -> Iterator[int]:
        off = self._offsets
        return (off[i + 1] - off[i] for i in range(len(off) - 1))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FrameSizes):
            return list(self) == list(other)
        if isinstance(other, (list, tuple)):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]


class _Entries:
    """Accumulates validated (compressed, decompressed[, checksum]) entries into offsets."""

    def __init__(self, has_sum: bool, frames_end: int | None) -> None:
        self.c_offsets = array("Q", [0])
        self.d_offsets = array("Q", [0])
        self.checksums: array[int] | None = array("I") if has_sum else None
        self._frames_end = frames_end

    def add_words(self, words: array[int]) -> None:
        """Entries as 32-bit words: (c, d) or (c, d, checksum) each."""
        step = 2 if self.checksums is None else 3
        cs, ds = words[0::step], words[1::step]
        if self.checksums is not None:
            self.checksums.extend(words[2::step])
        self.add(cs, ds)

    def add(self, cs: Iterable[int], ds: Iterable[int]) -> None:
        c_off, d_off = self.c_offsets, self.d_offsets
        pc, pd = c_off[-1], d_off[-1]
        i = len(c_off) - 1
        end = self._frames_end
        for c, d in zip(cs, ds, strict=True):
            if i >= MAX_FRAMES:
                raise ImageDamagedError(
                    f"The zstd stream has more than {MAX_FRAMES} frames, more than any "
                    "stream rescue reads at random."
                )
            if d > MAX_FRAME_CONTENT or c < MIN_FRAME or c > max_compressed(d):
                raise _entry_error(i, c, d)
            pc += c
            pd += d
            if end is not None and pc > end:
                raise ImageDamagedError(
                    f"The zstd seek table is damaged: its frames go past byte {end}, "
                    "where the frames end."
                )
            c_off.append(pc)
            d_off.append(pd)
            i += 1


@dataclass(frozen=True, eq=False)
class SeekTable:
    """Where each frame of a zstd file is, and how much it decodes to.

    Built only from entries that were checked: every frame can hold its bytes
    (at least :data:`MIN_FRAME`, at most :func:`max_compressed`), decodes to at
    most :data:`MAX_FRAME_CONTENT`, and there are at most :data:`MAX_FRAMES`.
    """

    c_offsets: array[int]
    """File offset of each frame (plus one entry: the end of the last frame)."""
    d_offsets: array[int]
    """Decompressed offset of each frame (plus the total size)."""
    checksums: array[int] | None = None

    @property
    def compressed(self) -> FrameSizes:
        return FrameSizes(self.c_offsets)

    @property
    def decompressed(self) -> FrameSizes:
        return FrameSizes(self.d_offsets)

    @property
    def size(self) -> int:
        return int(self.d_offsets[-1])

    @property
    def frames(self) -> int:
        return len(self.c_offsets) - 1

    @property
    def max_frame(self) -> int:
        return max(self.decompressed, default=0)

    @classmethod
    def build(
        cls,
        compressed: Iterable[int],
        decompressed: Iterable[int],
        checksums: Iterable[int] | None,
        *,
        frames_end: int | None = None,
    ) -> SeekTable:
        entries = _Entries(checksums is not None, frames_end)
        entries.add(compressed, decompressed)
        if checksums is not None:
            assert entries.checksums is not None
            entries.checksums.extend(checksums)
            if len(entries.checksums) != len(entries.c_offsets) - 1:
                raise ValueError("one checksum a frame")
        return cls(entries.c_offsets, entries.d_offsets, entries.checksums)

    @classmethod
    def read_from(cls, f: BinaryIO) -> SeekTable | None:
        """The table at the end of ``f``, or None when the file has none.

        Its count is checked against the file's size before anything is read
        for it, and its entries are read a piece at a time.
        """
        end = f.seek(0, os.SEEK_END)
        footer = _read_footer(f, end, room=None)
        if footer is None:
            return None
        count, has_sum, start = footer
        table = cls._read_entries(f, count, has_sum, start, frames_end=start)
        if table.c_offsets[-1] != start:
            raise ImageDamagedError(
                f"The zstd seek table describes {table.c_offsets[-1]} bytes of frames, "
                f"but the frames end at byte {start} (the file was truncated or altered)."
            )
        return table

    @classmethod
    def read_index(cls, f: BinaryIO, frames_end: int) -> SeekTable:
        """A table kept in a file of its own (an index of a stream whose frames end by
        byte ``frames_end``): the whole file is one seek-table frame."""
        end = f.seek(0, os.SEEK_END)
        footer = _read_footer(f, end, room=frames_end)
        if footer is None or footer[2] != 0:
            raise ImageDamagedError("The index is not a seek table.")
        count, has_sum, _start = footer
        return cls._read_entries(f, count, has_sum, 0, frames_end=frames_end)

    def to_bytes(self) -> bytes:
        """The table as a seek-table frame without checksums (an index file's content)."""
        body = b"".join(
            struct.pack("<II", c, d)
            for c, d in zip(self.compressed, self.decompressed, strict=True)
        )
        footer = struct.pack("<IBI", self.frames, 0, SEEKABLE_MAGIC)
        return struct.pack("<II", SEEKTABLE_SKIPPABLE, len(body) + len(footer)) + body + footer

    @classmethod
    def _read_entries(
        cls, f: BinaryIO, count: int, has_sum: bool, start: int, *, frames_end: int
    ) -> SeekTable:
        esize = 12 if has_sum else 8
        entries = _Entries(has_sum, frames_end)
        left = count
        at = start + 8
        f.seek(at)
        while left:
            n = min(left, 1 << 16)
            words = array("I")
            words.frombytes(_read_exact(f, n * esize, at))
            if sys.byteorder == "big":
                words.byteswap()
            entries.add_words(words)
            left -= n
            at += n * esize
        return cls(entries.c_offsets, entries.d_offsets, entries.checksums)

    @classmethod
    def scan(cls, f: BinaryIO) -> SeekTable:
        """Build a table by walking frame and block headers (no decompression).

        Skippable frames are counted with the data frame after them (decoding
        skips them); any after the last data frame are left out.
        """
        entries = _Entries(False, None)
        frame_start = 0
        for offset, csize, dsize, is_data in walk_frames(f):
            if not is_data:
                continue
            if dsize is None:
                raise ImageDamagedError(
                    "A zstd frame does not record its size; the stream must be indexed "
                    "by decompressing it."
                )
            if dsize > MAX_FRAME_CONTENT:
                raise ImageDamagedError(
                    f"The zstd frame at byte {offset} holds {dsize} bytes, too many to read "
                    "at random; the stream must be indexed by decompressing it."
                )
            entries.add((offset + csize - frame_start,), (dsize,))
            frame_start = offset + csize
        return cls(entries.c_offsets, entries.d_offsets, None)


def _read_footer(f: BinaryIO, end: int, *, room: int | None) -> tuple[int, bool, int] | None:
    """(count, has checksums, start) of the seek-table frame that ends at ``end``; None
    when there is none. The count is checked against the file (and against ``room``, the
    bytes its frames have, when they are elsewhere) before anything is read for it."""
    if end < FOOTER_SIZE + 8:
        return None
    f.seek(end - FOOTER_SIZE)
    count, desc, magic = struct.unpack("<IBI", _read_exact(f, FOOTER_SIZE, end - FOOTER_SIZE))
    if magic != SEEKABLE_MAGIC:
        return None
    if desc & 0x7C:
        raise ImageDamagedError("The zstd seek table is damaged (bad descriptor).")
    has_sum = bool(desc & 0x80)
    esize = 12 if has_sum else 8
    if count > MAX_FRAMES:
        raise ImageDamagedError(
            f"The zstd seek table lists {count} frames, more than any stream rescue reads "
            f"({MAX_FRAMES}): it is damaged."
        )
    payload = count * esize + FOOTER_SIZE
    start = end - payload - 8
    if start < 0:
        raise ImageDamagedError(
            f"The zstd seek table lists {count} frames ({count * esize} bytes of entries), "
            f"more than the file's {end} bytes hold."
        )
    room = start if room is None else room
    if count * MIN_FRAME > room:
        raise ImageDamagedError(
            f"The zstd seek table lists {count} frames, but the {room} bytes of frames "
            f"cannot hold that many (a frame takes at least {MIN_FRAME} bytes)."
        )
    f.seek(start)
    magic2, size = struct.unpack("<II", _read_exact(f, 8, start))
    if magic2 != SEEKTABLE_SKIPPABLE or size != payload:
        raise ImageDamagedError("The zstd seek table's frame header is damaged.")
    return count, has_sum, start


def _read_exact(f: BinaryIO, n: int, at: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ImageDamagedError(
            f"The zstd file ends at byte {at + len(data)}, inside its seek table."
        )
    return data


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
            if pos + 8 + size > end:
                raise ImageDamagedError(f"Truncated skippable frame at byte {pos}.")
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
            if btype == 3 or bsize > BLOCK_MAX:
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


def _skip_skippable(raw: memoryview, where: int) -> memoryview:
    """``raw`` after the skippable frames at its start (an index counts them with a frame)."""
    while len(raw) >= 8:
        magic, size = struct.unpack_from("<II", raw)
        if not SKIPPABLE_MIN <= magic <= SKIPPABLE_MAX:
            break
        if 8 + size > len(raw):
            raise ImageDamagedError(f"Truncated skippable frame at byte {where}.", offset=where)
        raw = raw[8 + size :]
        where += 8 + size
    return raw


def _decode_frame(frame: bytes | bytearray, expected: int, where: int) -> bytes:
    """The ``expected`` bytes the frame at file offset ``where`` holds; any other size is
    damage, found before the output is allocated (a frame's header may declare any size)."""
    if expected > MAX_FRAME_CONTENT:
        raise ImageDamagedError(
            f"The zstd frame at byte {where} is said to hold {expected} bytes, more than "
            f"a frame may ({MAX_FRAME_CONTENT}).",
            offset=where,
        )
    data = _skip_skippable(memoryview(frame), where)
    try:
        declared = zstandard.get_frame_parameters(data).content_size
        if declared not in (zstandard.CONTENTSIZE_UNKNOWN, expected):
            raise ImageDamagedError(
                f"The zstd frame at byte {where} declares {declared} bytes; its seek-table "
                f"entry says {expected}.",
                offset=where,
            )
        out = _decompressor().decompress(
            data, max_output_size=max(expected, 1), allow_extra_data=False
        )
    except zstandard.ZstdError as exc:
        raise ImageDamagedError(
            f"Damaged zstd frame at byte {where}: {exc}.", offset=where
        ) from exc
    if len(out) != expected:
        raise ImageDamagedError(
            f"The zstd frame at byte {where} holds {len(out)} bytes, not {expected}.", offset=where
        )
    return out


class _Decoding:
    """A frame being decoded by one thread; the others that need it wait here."""

    __slots__ = ("data", "done", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.data: bytes | None = None
        self.error: BaseException | None = None


SEQUENTIAL_SLACK = 1 * MiB
"""A read starting this close after where the previous one ended counts as sequential."""


class SeekableZstdReader:
    """Random access to the decompressed bytes of a seekable zstd file.

    Keeps up to ``cache_frames`` decoded frames, and never more than
    ``cache_bytes`` (:data:`INFLIGHT` unless told) of them. The cache is
    consulted under a short lock; a frame is decoded outside it, once, however
    many threads ask for it at the same time. With ``prefetch`` > 0, reads that
    follow each other in the file have the next ``prefetch`` frames decoded
    ahead in background threads.
    """

    def __init__(
        self,
        f: BinaryIO,
        table: SeekTable,
        cache_frames: int = 8,
        *,
        cache_bytes: int = INFLIGHT,
        prefetch: int = 0,
    ) -> None:
        self._f = f
        self.table = table
        self._cache: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        self._cached = 0
        self._cache_frames = cache_frames
        self._cache_bytes = cache_bytes
        self._lock = threading.Lock()
        self._io_lock = threading.Lock()  # the file's seek + read
        # a file that reads at an offset from any thread, and takes read-ahead advice
        self._pread: Callable[[int, int], bytes | bytearray] | None = getattr(f, "pread", None)
        self._advise: Callable[[int, int], None] | None = getattr(f, "willneed", None)
        self._decoding: dict[int, _Decoding] = {}
        self._prefetch = prefetch
        self._pool: ThreadPoolExecutor | None = None
        self._last_end = -1
        self._closed = False

    @property
    def size(self) -> int:
        return self.table.size

    def limit_cache(self, cache_bytes: int) -> None:
        """Keep at most ``cache_bytes`` of decoded frames from now on."""
        with self._lock:
            self._cache_bytes = cache_bytes
            while len(self._cache) > 1 and self._cached > cache_bytes:
                _, old = self._cache.popitem(last=False)
                self._cached -= len(old)

    def _load(self, i: int) -> bytes:
        t = self.table
        at, size = t.c_offsets[i], t.compressed[i]
        raw: bytes | bytearray
        if self._pread is not None:
            raw = self._pread(at, size)
        else:
            with self._io_lock:
                self._f.seek(at)
                raw = self._f.read(size)
        if len(raw) != size:
            raise ImageDamagedError(f"The zstd frame at byte {at} is truncated.", offset=at)
        return _decode_frame(raw, t.decompressed[i], at)

    def _keep(self, i: int, data: bytes) -> None:
        """Cache frame ``i`` (the lock held), dropping the least recently used."""
        self._cache[i] = data
        self._cached += len(data)
        while len(self._cache) > 1 and (
            len(self._cache) > self._cache_frames or self._cached > self._cache_bytes
        ):
            _, old = self._cache.popitem(last=False)
            self._cached -= len(old)

    def _decode(self, i: int, job: _Decoding) -> bytes:
        """Decode frame ``i`` for everyone waiting on ``job``."""
        try:
            data = self._load(i)
        except BaseException as exc:
            job.error = exc
            with self._lock:
                del self._decoding[i]
            job.done.set()
            raise
        with self._lock:
            self._keep(i, data)
            del self._decoding[i]
        job.data = data
        job.done.set()
        return data

    def _frame(self, i: int) -> bytes:
        with self._lock:
            data = self._cache.get(i)
            if data is not None:
                self._cache.move_to_end(i)
                return data
            job = self._decoding.get(i)
            mine = job is None
            if job is None:
                job = self._decoding[i] = _Decoding()
        if mine:
            return self._decode(i, job)
        job.done.wait()
        if job.data is None:  # the decode failed (or was a prefetch that failed): try again
            return self._frame_again(i, job)
        return job.data

    def _frame_again(self, i: int, failed: _Decoding) -> bytes:
        if isinstance(failed.error, ImageDamagedError):
            raise ImageDamagedError(failed.error.message, offset=failed.error.offset)
        return self._frame(i)

    def _prefetch_after(self, i: int) -> None:
        """Start decoding the frames after ``i`` that are neither cached nor being decoded."""
        jobs = []
        with self._lock:
            if self._closed:
                return
            for j in range(i + 1, min(i + 1 + self._prefetch, self.table.frames)):
                if j in self._cache or j in self._decoding:
                    continue
                job = self._decoding[j] = _Decoding()
                jobs.append((j, job))
            if jobs and self._pool is None:
                self._pool = ThreadPoolExecutor(self._prefetch, thread_name_prefix="rescue-ahead")
            pool = self._pool
        t = self.table
        if jobs and self._advise is not None:  # the compressed frames come in meanwhile
            first, last = jobs[0][0], min(jobs[-1][0] + self._prefetch, t.frames - 1)
            start = t.c_offsets[first]
            self._advise(start, t.c_offsets[last] + t.compressed[last] - start)
        for j, job in jobs:
            assert pool is not None
            try:
                pool.submit(self._quiet_decode, j, job)
            except RuntimeError:  # closed meanwhile: whoever waits for the frame decodes it
                with self._lock:
                    del self._decoding[j]
                job.done.set()

    def _quiet_decode(self, i: int, job: _Decoding) -> None:
        try:
            self._decode(i, job)
        except (ImageDamagedError, OSError):
            return  # a read that needs the frame decodes it again, and reports the damage

    def views(self, offset: int, length: int) -> list[memoryview]:
        """The bytes at ``offset`` as views into the cached frames (short only at the end)."""
        end = min(offset + length, self.size)
        out = []
        pos = offset
        d_off = self.table.d_offsets
        i = bisect.bisect_right(d_off, pos) - 1
        if self._prefetch:
            sequential = 0 <= offset - self._last_end <= SEQUENTIAL_SLACK
            self._last_end = end
            if sequential:
                last = bisect.bisect_right(d_off, end - 1) - 1 if end > pos else i
                self._prefetch_after(last)
        while pos < end:
            frame = self._frame(i)
            start = pos - d_off[i]
            take = min(end - pos, len(frame) - start)
            out.append(memoryview(frame)[start : start + take])
            pos += take
            i += 1
        return out

    def pread(self, offset: int, length: int) -> bytes:
        parts = self.views(offset, length)
        if len(parts) == 1:
            return parts[0].tobytes()
        return b"".join(parts)

    def close(self) -> None:
        """Stop decoding ahead (waits for a frame being decoded); the cache stays usable."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)


def iter_decompressed(f: BinaryIO, *, threads: int = 0) -> Iterator[bytes]:
    """The decompressed content of any zstd file, in order, in frame-sized chunks.

    With a seek table, frames are decoded in parallel, with at most
    :data:`INFLIGHT` decoded bytes waiting; without one, as a stream in pieces
    of at most 4 MiB.
    """
    table = SeekTable.read_from(f)
    if table is None:
        yield from _iter_sequential(f)
        return
    workers = _threads(threads)
    pending: collections.deque[tuple[Future[bytes], int]] = collections.deque()
    held = 0
    # the kernel reads ahead of us (the file's next READ_AHEAD bytes), so decoding,
    # hashing and writing never wait for the disk while it could be read
    willneed = getattr(f, "willneed", None)
    advised = 0
    with ThreadPoolExecutor(workers, thread_name_prefix="rescue-unzstd") as pool:
        try:
            f.seek(0)
            for i in range(table.frames):
                size, expected = table.compressed[i], table.decompressed[i]
                where = table.c_offsets[i]
                if willneed is not None and advised - where < READ_AHEAD // 2:
                    start = max(advised, where)
                    advised = where + READ_AHEAD
                    willneed(start, advised - start)
                raw = _read_frame(f, size)
                if len(raw) != size:
                    raise ImageDamagedError(
                        f"The zstd frame at byte {where} is truncated.", offset=where
                    )
                if table.checksums is not None:
                    (x,) = struct.unpack_from("<I", raw, len(raw) - 4)
                    if x != table.checksums[i]:
                        raise ImageDamagedError(
                            f"The zstd frame at byte {where} does not match its seek-table entry.",
                            offset=where,
                        )
                pending.append((pool.submit(_decode_frame, raw, expected, where), size + expected))
                held += size + expected
                while len(pending) > 2 * workers or (len(pending) > 1 and held > INFLIGHT):
                    fut, cost = pending.popleft()
                    held -= cost
                    yield fut.result()
            while pending:
                fut, _ = pending.popleft()
                yield fut.result()
        finally:
            for fut, _ in pending:
                fut.cancel()


READ_AHEAD = 64 * MiB
"""Compressed bytes asked of the kernel ahead of the frame being read."""


def _read_frame(f: BinaryIO, size: int) -> bytes | bytearray:
    """``size`` bytes (fewer only at the end of the file) read straight into their buffer."""
    readinto = getattr(f, "readinto", None)
    if readinto is None:
        return f.read(size)
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = readinto(view[got:])
        if not n:
            break
        got += n
    view.release()
    if got < size:
        del buf[got:]
    return buf


class _Source:
    """Exact sequential reads of a file, with the offset of the next byte."""

    def __init__(self, f: BinaryIO, chunk: int) -> None:
        self._f = f
        self._chunk = chunk
        self._buf = b""
        self._i = 0
        self._at = 0  # file offset of _buf[0]

    @property
    def pos(self) -> int:
        return self._at + self._i

    def _fill(self, n: int) -> bool:
        """At least ``n`` bytes buffered (False: the file ends first)."""
        while len(self._buf) - self._i < n:
            data = self._f.read(max(self._chunk, n - (len(self._buf) - self._i)))
            if not data:
                return False
            self._at += self._i
            self._buf = self._buf[self._i :] + data
            self._i = 0
        return True

    def more(self) -> bool:
        return self._fill(1)

    def peek(self, n: int) -> bytes:
        self._fill(n)
        return self._buf[self._i : self._i + n]

    def take(self, n: int) -> bytes:
        """``n`` bytes, or fewer where the file ends."""
        self._fill(n)
        data = self._buf[self._i : self._i + n]
        self._i += len(data)
        return data

    def skip(self, n: int) -> bool:
        """Pass over ``n`` bytes without keeping them (False: the file ends first)."""
        have = len(self._buf) - self._i
        if n <= have:
            self._i += n
            return True
        target = self.pos + n
        end = self._f.seek(0, os.SEEK_END)
        self._f.seek(min(target, end))
        self._buf, self._i, self._at = b"", 0, min(target, end)
        return target <= end


def _truncated(start: int) -> ImageDamagedError:
    return ImageDamagedError(
        f"The zstd frame starting at byte {start} is truncated (the file ends early).",
        offset=start,
    )


def _frame_pieces(src: _Source, start: int, hsize: int, has_checksum: bool) -> Iterator[bytes]:
    """The bytes of the frame at ``start``, a few blocks at a time, as the block headers
    delimit them: so each piece decodes to at most ``_FEED_BLOCKS`` blocks."""
    group = [src.take(hsize)]
    blocks = 0
    while True:
        at = src.pos
        bh = src.take(3)
        if len(bh) < 3:
            raise _truncated(start)
        v = bh[0] | bh[1] << 8 | bh[2] << 16
        last, btype, bsize = v & 1, (v >> 1) & 3, v >> 3
        if btype == 3 or bsize > BLOCK_MAX:
            raise ImageDamagedError(f"Damaged zstd block at byte {at}.", offset=at)
        n = 1 if btype == 1 else bsize
        body = src.take(n)
        if len(body) < n:
            raise _truncated(start)
        group += (bh, body)
        blocks += 1
        if last:
            if has_checksum:
                tail = src.take(4)
                if len(tail) < 4:
                    raise _truncated(start)
                group.append(tail)
            yield b"".join(group)
            return
        if blocks >= _FEED_BLOCKS:
            yield b"".join(group)
            group, blocks = [], 0


def _iter_sequential(f: BinaryIO, chunk: int = 4 * MiB) -> Iterator[bytes]:
    """Frame after frame with a streaming decoder, in pieces of at most 4 MiB of output
    (a frame may decode to any size; its header may say anything); a frame cut short,
    a damaged block and trailing garbage are errors."""
    f.seek(0)
    src = _Source(f, chunk)
    dctx = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
    while src.more():
        start = src.pos
        head = src.peek(18)
        if len(head) < 4:
            raise ImageDamagedError(f"Trailing garbage at byte {start} of the zstd file.")
        (magic,) = struct.unpack_from("<I", head)
        if SKIPPABLE_MIN <= magic <= SKIPPABLE_MAX:
            if len(head) < 8:
                raise ImageDamagedError(f"Truncated skippable frame at byte {start}.")
            (size,) = struct.unpack_from("<I", head, 4)
            if not src.skip(8 + size):
                raise ImageDamagedError(f"Truncated skippable frame at byte {start}.")
            continue
        if magic != ZSTD_MAGIC:
            raise ImageDamagedError(f"No zstd frame at byte {start} (bad magic).", offset=start)
        try:
            hsize = zstandard.frame_header_size(head)
            params = zstandard.get_frame_parameters(head)
        except zstandard.ZstdError as exc:
            if len(head) < 18 and not src.more():
                raise _truncated(start) from exc
            raise ImageDamagedError(
                f"Damaged zstd frame header at byte {start}: {exc}.", offset=start
            ) from exc
        if len(head) < hsize:
            raise _truncated(start)
        if params.window_size > MAX_WINDOW:
            raise UnsupportedImageError(
                f"The zstd frame at byte {start} needs a {params.window_size}-byte window; "
                f"rescue decodes frames of up to {MAX_WINDOW} (zstd's own limit).",
                hint="Decompress the stream with zstd --long=31 and compress it again.",
            )
        obj = dctx.decompressobj()
        produced = 0
        for piece in _frame_pieces(src, start, hsize, params.has_checksum):
            try:
                out = obj.decompress(piece)
            except zstandard.ZstdError as exc:
                raise ImageDamagedError(
                    f"Damaged zstd frame starting at byte {start}: {exc}.", offset=start
                ) from exc
            produced += len(out)
            if out:
                yield out
        declared = params.content_size
        if not obj.eof or declared not in (zstandard.CONTENTSIZE_UNKNOWN, produced):
            raise ImageDamagedError(
                f"The zstd frame starting at byte {start} is damaged (its blocks do not "
                "make the frame its header describes).",
                offset=start,
            )


def iter_decompressed_gzip(f: BinaryIO, chunk: int = 4 * MiB) -> Iterator[bytes]:
    """Clonezilla's gzip streams (possibly several members), with truncation detected;
    decoded in pieces of ``chunk`` bytes, whatever a member expands to."""
    f.seek(0)
    try:
        with gzip.GzipFile(fileobj=f, mode="rb") as g:
            while data := g.read(chunk):
                yield data
    except (OSError, EOFError, zlib.error) as exc:
        raise ImageDamagedError(f"The gzip stream is damaged or truncated: {exc}.") from exc
