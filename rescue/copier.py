"""The data pipelines: used blocks → partclone stream → seekable zstd → volumes, and back.

Capture reads in a thread: large vectored reads (``preadv``) over spans that
cover several used runs when the gaps between them are small, each used byte
placed straight at its place in the buffer of the zstd frame it belongs to,
the strip checksums computed there and written into their slots, the next span
asked of the disk (``POSIX_FADV_WILLNEED``) while this one is read. Whole frames
go to :class:`SeekableZstdWriter`'s pool, compressed on all cores where they
lie, and their buffers come back for reuse: no zero-filled buffers, no joins,
the kernel's copy into the frame the only one. Every stage is bounded, so
memory stays flat whatever the disk size.
Restore decompresses frames in parallel (the image read ahead by the kernel),
checks each strip's CRC before its blocks leave the reader, and gathers runs of
contiguous blocks into aligned 8 MiB buffers that a thread writes with
``O_DIRECT`` (:class:`_DirectWriter`); where blocks are not 4 KiB-aligned they go
out with one ``pwritev`` straight from the decoded frames, the kernel asked to
start writing back every 64 MiB as it goes.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import mmap
import os
import queue
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from rescue.blockio import (
    GONE_ERRORS,
    IOV_MAX,
    MEDIA_ERRORS,
    advance_views,
    binary,
    pwrite_all,
    pwritev_all,
)
from rescue.errors import DeviceError, DeviceGoneError, ImageDamagedError
from rescue.filesystems.base import Allocation
from rescue.image.manifest import StoredFile
from rescue.image.partclone import (
    BlockEncoder,
    BlockRanks,
    PartcloneHeader,
    StreamReader,
    block_offset,
    stream_prefix,
)
from rescue.image.regions import RegionHasher
from rescue.image.sealing import SealedStreamWriter, stream_writer
from rescue.image.seekable import (
    SeekableZstdWriter,
    walk_frames,
)
from rescue.image.streams import ChunkFile
from rescue.image.volumes import VolumeReader, VolumeWriter, volume_paths
from rescue.progress import ProgressReporter, check_cancel
from rescue.salvage import patch_stream, retry_passes

MiB = 1 << 20
READ_SPAN = 8 * MiB
"""Largest single read; big enough for full disk speed, small enough to keep memory low."""
GAP_READ_THROUGH = 256 * 1024
"""Free gaps up to this size are read and dropped rather than skipped with a new read."""
QUEUE_DEPTH = 4
DIRECT_ALIGN = 4096
"""Offsets and lengths direct I/O keeps to (any disk's logical sector divides it)."""
FETCH_DEPTH = 3
"""Spans read ahead of their consumer (each :data:`READ_SPAN` bytes of memory)."""


@dataclass(frozen=True)
class CompressionOptions:
    level: int = 3
    frame_size: int = 4 * MiB
    threads: int = 0
    split: int | None = None


@dataclass(frozen=True)
class ReadOptions:
    keep_going: bool = True
    """Go on past unreadable sectors (zeros in the image, listed in the manifest)."""
    retries: int = 1
    """Extra attempts at each sector still unreadable after the splitting passes."""


@dataclass(frozen=True)
class Checkpoint:
    """How far a stream is safely on disk: enough to go on from there after a crash."""

    frames: int
    """Frames entirely on disk (and synced)."""
    stream_pos: int
    """Stream bytes those frames hold."""
    file_pos: int
    """Bytes of the (split) stream file those frames take."""
    raw_frames: tuple[int, ...]
    skipped: tuple[tuple[int, int], ...]
    """Unread ranges before the point where a resumed capture starts reading again."""

    def to_dict(self) -> dict[str, object]:
        return {
            "frames": self.frames, "stream_pos": self.stream_pos, "file_pos": self.file_pos,
            "raw_frames": list(self.raw_frames), "skipped": [list(r) for r in self.skipped],
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> Checkpoint:
        raw = d.get("raw_frames", [])
        skipped = d.get("skipped", [])
        assert isinstance(raw, list) and isinstance(skipped, list)
        return cls(
            frames=int(str(d["frames"])), stream_pos=int(str(d["stream_pos"])),
            file_pos=int(str(d["file_pos"])), raw_frames=tuple(int(x) for x in raw),
            skipped=tuple((int(a), int(b)) for a, b in skipped),
        )  # fmt: skip


CHECKPOINT_EVERY = float(os.environ.get("RESCUE_CHECKPOINT_SECONDS") or 2.0)
"""Seconds between checkpoints of a capture (each one syncs the stream file)."""


@dataclass(frozen=True)
class StreamResult:
    files: tuple[StoredFile, ...]
    stream_bytes: int
    unreadable: tuple[tuple[int, int], ...] = ()
    """Partition byte ranges (offset, length) of used data that could not be read."""
    read_errors: int = 0
    regions: tuple[StoredFile, ...] = ()
    """The region hash list's file (empty when none was asked for)."""


def _read_error(path: str, offset: int, exc: OSError) -> DeviceError:
    return DeviceError(f"Read error on {path} at byte {offset}: {exc.strerror or exc}.")


FIRST_SKIP = 64 * 1024
MAX_SKIP = 64 * MiB


class _Stopped(Exception):
    """The reader was told to stop while it waited for a free frame buffer."""


class _Frames:
    """The frame buffers being filled with stream bytes, in stream order.

    The reader places every stream byte (prefix, block data, checksums) straight
    into the buffer of the frame it belongs to, so a frame goes to the compressor
    as it is: no zero-filled read buffers, no join of pieces. Buffers come from
    ``free`` (the compressor gives each back once its frame is compressed), which
    bounds the memory whatever the disk size. Bytes before ``start`` (a resumed
    capture regenerates the head of a checksum strip for its CRC) land in
    throw-away buffers.
    """

    def __init__(
        self, frame_size: int, start: int, free: queue.Queue[bytearray], stop: threading.Event
    ) -> None:
        self.frame_size = frame_size
        self.base = start
        """Stream offset of the first open frame."""
        self._open: list[bytearray] = []
        self._free = free
        self._stop = stop

    def _buffer(self) -> bytearray:
        while True:
            try:
                return self._free.get(timeout=0.2)
            except queue.Empty:
                if self._stop.is_set():
                    raise _Stopped from None

    def views(self, pos: int, n: int) -> list[memoryview]:
        """Where stream bytes ``[pos, pos + n)`` go, as pieces of frame buffers."""
        out = []
        if pos < self.base:
            k = min(n, self.base - pos)
            out.append(memoryview(bytearray(k)))
            pos, n = pos + k, n - k
        fs = self.frame_size
        while n:
            i, within = divmod(pos - self.base, fs)
            while len(self._open) <= i:
                self._open.append(self._buffer())
            take = min(n, fs - within)
            out.append(memoryview(self._open[i])[within : within + take])
            pos, n = pos + take, n - take
        return out

    def put(self, pos: int, data: bytes) -> None:
        at = 0
        for v in self.views(pos, len(data)):
            v[:] = data[at : at + len(v)]
            at += len(v)

    def full(self, upto: int) -> list[tuple[bytearray, int]]:
        """Hand over the frames that lie wholly before stream offset ``upto``."""
        k = min(max(0, (upto - self.base) // self.frame_size), len(self._open))
        done = [(buf, self.frame_size) for buf in self._open[:k]]
        del self._open[:k]
        self.base += k * self.frame_size
        return done

    def last(self, end: int) -> list[tuple[bytearray, int]]:
        """Hand over everything up to the stream's ``end``, the last frame short."""
        done = self.full(end)
        if end > self.base:
            assert len(self._open) == 1
            done.append((self._open.pop(), end - self.base))
            self.base = end
        return done


@dataclass
class _Item:
    """What one read hands over: full frames, and what the main thread must know first."""

    frames: list[tuple[bytearray, int]]
    used: int
    """Bytes of used data read (for progress)."""
    raw: list[tuple[int, int]]
    """Stream ranges to store in raw frames (they take recovered bytes later)."""
    skipped: list[tuple[int, int]]
    """Partition ranges (offset, length) of used data not read."""


@dataclass(frozen=True)
class _Start:
    """Where the reader starts: the first block, its rank, its stream offset."""

    block: int = 0
    rank: int = 0
    stream_pos: int = 0
    frames_from: int = 0
    """Stream offset of the first byte kept (a frame boundary)."""


def read_spans(
    alloc: Allocation, start_block: int = 0
) -> Iterator[tuple[int, int, list[tuple[int, int]]]]:
    """The reads that take every used byte of ``alloc`` from ``start_block`` on, in order:
    ``(lo, hi, pieces)``, partition bytes ``[lo, hi)`` of at most :data:`READ_SPAN`, read
    through free gaps of up to :data:`GAP_READ_THROUGH`; ``pieces`` are the used bytes in
    it as (offset in the span, length)."""
    bs = alloc.block_size
    span_lo = span_hi = -1
    pieces: list[tuple[int, int]] = []
    for run_first, run_count in alloc.runs():
        first, count = run_first, run_count
        if first + count <= start_block:
            continue  # done before a resumed capture's restart point
        if first < start_block:
            count -= start_block - first
            first = start_block
        lo = first * bs
        hi = min((first + count) * bs, alloc.device_size)
        while lo < hi:
            if span_lo >= 0 and lo - span_hi <= GAP_READ_THROUGH and lo + 1 - span_lo <= READ_SPAN:
                take = min(hi, span_lo + READ_SPAN) - lo
                pieces.append((lo - span_lo, take))
                span_hi = lo + take
            else:
                if span_lo >= 0:
                    yield span_lo, span_hi, pieces
                take = min(hi - lo, READ_SPAN)
                span_lo, span_hi = lo, lo + take
                pieces = [(0, take)]
            lo += take
    if span_lo >= 0:
        yield span_lo, span_hi, pieces


@dataclass
class _Fetched:
    """One span as :class:`_SpanFetcher` read it."""

    lo: int
    hi: int
    pieces: list[tuple[int, int]]
    buf: mmap.mmap
    skew: int
    got: int
    """Bytes of the span read: fewer after a read error or at the end of the disk."""

    @property
    def whole(self) -> bool:
        return self.got == self.hi - self.lo

    def view(self) -> memoryview:
        """The span's bytes read (partition byte ``lo`` first)."""
        return memoryview(self.buf)[self.skew : self.skew + self.got]


class _SpanFetcher(threading.Thread):
    """Reads spans ahead of the thread that uses them, straight from the disk.

    A block device is read with ``O_DIRECT`` into page-aligned buffers: no page
    cache to fill, evict and copy out of (on this kind of job it costs more CPU
    than the copy it saves), and the fetcher's own read-ahead keeps the disk busy
    while the consumer works on the span before. A regular file, or a device that
    refuses direct reads, is read through the page cache into the same buffers.
    A read error is not retried here: the span comes back short (``got``) and the
    consumer reads it again its own careful way.
    """

    def __init__(
        self, src: Extent, spans: Iterator[tuple[int, int, list[tuple[int, int]]]]
    ) -> None:
        super().__init__(name="rescue-fetcher", daemon=True)
        self._src = src
        self._spans = spans
        direct = stat.S_ISBLK(os.fstat(src.fd).st_mode)
        self._direct = _direct_fd(src) if direct else None
        self._free: queue.Queue[mmap.mmap] = queue.Queue()
        for _ in range(FETCH_DEPTH):
            self._free.put(mmap.mmap(-1, READ_SPAN + 2 * DIRECT_ALIGN))
        self._out: queue.Queue[_Fetched | BaseException | None] = queue.Queue()
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            for lo, hi, pieces in self._spans:
                buf = self._buffer()
                if buf is None:
                    return
                self._out.put(self._read(buf, lo, hi, pieces))
            self._out.put(None)
        except BaseException as exc:  # noqa: BLE001  (raised in the consumer)
            self._out.put(exc)
        finally:
            if self._direct is not None:
                os.close(self._direct)
                self._direct = None

    def _buffer(self) -> mmap.mmap | None:
        while not self._halt.is_set():
            try:
                return self._free.get(timeout=0.2)
            except queue.Empty:
                continue
        return None

    def _read(self, buf: mmap.mmap, lo: int, hi: int, pieces: list[tuple[int, int]]) -> _Fetched:
        at, n, skew = self._src.base + lo, hi - lo, 0
        fd = self._src.fd
        if self._direct is not None:
            fd = self._direct
            skew = at % DIRECT_ALIGN
            at, n = at - skew, -(-(skew + n) // DIRECT_ALIGN) * DIRECT_ALIGN
        view = memoryview(buf)[:n]
        got = 0
        try:
            while got < n:
                k = os.preadv(fd, [view[got:]], at + got)
                if k == 0:
                    break  # the end of the disk
                got += k
        except OSError as exc:
            if exc.errno in GONE_ERRORS:
                raise DeviceGoneError(
                    f"{self._src.path} disappeared at byte {at + got} ({exc.strerror}): "
                    "was it unplugged?"
                ) from exc
            if exc.errno == errno.EINVAL and self._direct is not None and not got:
                os.close(self._direct)  # no direct reads here after all: through the cache
                self._direct = None
                del view
                return self._read(buf, lo, hi, pieces)
        del view
        return _Fetched(lo, hi, pieces, buf, skew, min(max(got - skew, 0), hi - lo))

    def next(self) -> _Fetched | None:
        """The next span read (None: no more)."""
        item = self._out.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def release(self, fetched: _Fetched) -> None:
        """Give a span's buffer back for the spans ahead."""
        self._free.put(fetched.buf)

    def stop(self) -> None:
        """Read no further; the thread ends once its read in progress returns."""
        self._halt.set()


class _Reader(threading.Thread):
    """Reads the used bytes of a partition in order, straight into the frames of its stream."""

    def __init__(
        self,
        src: Extent,
        alloc: Allocation,
        cancel: threading.Event | None,
        *,
        header: PartcloneHeader | None,
        prefix: bytes,
        frames: tuple[int, queue.Queue[bytearray]],
        start: _Start,
        keep_going: bool = True,
        regions: RegionHasher | None = None,
    ) -> None:
        super().__init__(name="rescue-reader", daemon=True)
        self.regions = regions
        self.keep_going = keep_going
        self.errors = 0
        """Read errors met (each one skipped past)."""
        self._skip = FIRST_SKIP
        self._skip_until = -1
        self._span_bad: list[tuple[int, int]] = []
        self._src = src
        self.fd = src.fd
        self.path = src.path
        self.base = src.base
        self.alloc = alloc
        self.cancel = cancel
        self.out: queue.Queue[_Item | BaseException | None] = queue.Queue(QUEUE_DEPTH)
        self.sparse = stat.S_ISREG(os.fstat(src.fd).st_mode)
        """A regular file: its holes read as zeros without touching the disk."""
        self._stop_event = threading.Event()
        self._header = header
        self._prefix = prefix
        self._encoder = BlockEncoder(header) if header is not None else None
        self._start = start
        self._frames = _Frames(frames[0], start.frames_from, frames[1], self._stop_event)
        self._pos = start.stream_pos
        """Stream offset of the next byte of block data."""
        self._rank = start.rank
        enc = self._encoder
        self._strip = enc.strip if enc is not None and enc.checksums else 0
        """Bytes of block data per checksum (0: none), and those left in the current strip."""
        self._room = self._strip
        self._scratch = memoryview(bytearray(GAP_READ_THROUGH))
        """Where the free gaps read through go (never looked at)."""
        self._fetcher: _SpanFetcher | None = None

    def stop(self) -> None:
        self._stop_event.set()
        if self._fetcher is not None:
            self._fetcher.stop()
        # unblock a put() waiting on a full queue
        while True:
            try:
                self.out.get_nowait()
            except queue.Empty:
                break

    def _put(self, item: _Item | BaseException | None) -> None:
        while not self._stop_event.is_set():
            try:
                self.out.put(item, timeout=0.2)
            except queue.Full:
                continue
            return

    def run(self) -> None:
        try:
            if self._start.frames_from < len(self._prefix):
                self._frames.put(0, self._prefix)
            for item in self._items():
                if self._stop_event.is_set() or (self.cancel is not None and self.cancel.is_set()):
                    break
                self._put(item)
            self._put(None)
        except _Stopped:
            pass
        except BaseException as exc:  # noqa: BLE001  (handed to the consumer, raised there)
            self._put(exc)
        finally:
            if self._fetcher is not None:  # done with the descriptor before the caller closes it
                self._fetcher.stop()
                self._fetcher.join()

    def _items(self) -> Iterator[_Item]:
        spans = self._spans()
        if not self.sparse:
            fetcher = self._fetcher = _SpanFetcher(self._src, spans)
            fetcher.start()
            while (f := fetcher.next()) is not None:
                if f.whole:
                    item = self._read_span(f.lo, f.hi, f.pieces, f)
                    fetcher.release(f)
                    yield item
                    continue
                # a read error (or the disk's end): this span and the rest the careful way,
                # through the page cache, with no read-ahead into a failing area
                fetcher.stop()
                fetcher.release(f)
                yield self._read_span(f.lo, f.hi, f.pieces)
                spans = read_spans(self.alloc, -(-f.hi // self.alloc.block_size))
                break
            else:
                spans = iter(())
        span = next(spans, None)
        while span is not None:
            ahead = next(spans, None)
            if ahead is not None and not self.errors:
                # the disk reads the next span meanwhile (not on a failing disk: every
                # read of a bad area can take seconds there)
                os.posix_fadvise(
                    self.fd, self.base + ahead[0], ahead[1] - ahead[0], os.POSIX_FADV_WILLNEED
                )
            yield self._read_span(*span)
            span = ahead
        tail = self._encoder.finish() if self._encoder is not None else b""
        if tail:
            self._frames.put(self._pos, tail)
            self._pos += len(tail)
        yield _Item(self._frames.last(self._pos), 0, [], [])

    def _spans(self) -> Iterator[tuple[int, int, list[tuple[int, int]]]]:
        """(lo, hi, used pieces as (offset in span, length)): the reads, in order."""
        return read_spans(self.alloc, self._start.block)

    def _place(self, n: int) -> list[tuple[list[memoryview], int | None]]:
        """Frame memory for the next ``n`` bytes of block data, strip by strip, each with
        the stream offset of the checksum that follows it (None inside a strip)."""
        out: list[tuple[list[memoryview], int | None]] = []
        while n:
            take = min(n, self._room) if self._strip else n
            views = self._frames.views(self._pos, take)
            self._pos += take
            n -= take
            slot = None
            if self._strip:
                self._room -= take
                if self._room == 0:
                    slot = self._pos
                    self._pos += CHECKSUM_BYTES
                    self._room = self._strip
            out.append((views, slot))
        return out

    def _read_span(
        self, lo: int, hi: int, pieces: list[tuple[int, int]], fetched: _Fetched | None = None
    ) -> _Item:
        """Read one span into its frames (or copy it there from ``fetched``, already read)."""
        iov: list[memoryview] = []
        strips: list[tuple[list[memoryview], int | None]] = []
        ranks: list[int] = []  # rank of each piece's first block
        used_views: list[list[memoryview]] = []  # each piece's bytes, for the region hashes
        at = 0
        for o, n in pieces:
            if o > at:
                iov.append(self._scratch[: o - at])  # a free gap, read through
            ranks.append(self._rank)
            placed = self._place(n)
            strips += placed
            piece = [v for views, _slot in placed for v in views]
            used_views.append(piece)
            iov += piece
            self._rank += n // self.alloc.block_size
            at = o + n
        self._span_bad = []
        if fetched is None:
            self._fill(iov, lo, hi)
        else:
            data = fetched.view()
            for (o, _n), piece in zip(pieces, used_views, strict=True):
                at = o
                for v in piece:
                    v[:] = data[at : at + len(v)]
                    at += len(v)
            del data
        for views, slot in strips:
            for v in views:
                crc = self._encoder.checksum(v) if self._encoder is not None else None
                if crc is not None:
                    assert slot is not None
                    self._frames.put(slot, crc)
        raw: list[tuple[int, int]] = []
        skipped: list[tuple[int, int]] = []
        if self._span_bad:
            for (o, n), rank0 in zip(pieces, ranks, strict=True):
                p_lo, p_hi = lo + o, lo + o + n
                for a, b in self._span_bad:
                    x, y = max(a - self.base, p_lo), min(b - self.base, p_hi)
                    if x < y:
                        skipped.append((x, y - x))
                        raw += self._raw_ranges(x, y, p_lo, rank0)
        if self.regions is not None:
            for x, n in skipped:
                self.regions.spoil(x, x + n)
            for (o, _n), piece in zip(pieces, used_views, strict=True):
                self.regions.feed(lo + o, piece)
        used = sum(n for _o, n in pieces)
        return _Item(self._frames.full(self._pos), used, raw, skipped)

    def _raw_ranges(self, x: int, y: int, p_lo: int, rank0: int) -> list[tuple[int, int]]:
        """The stream ranges that will take partition bytes ``[x, y)`` once recovered (the
        blocks, and their strips' checksums), in a piece starting at ``p_lo``, rank ``rank0``."""
        header = self._header
        if header is None:  # a raw stream holds the partition's bytes at their own offsets
            return [(x, y)]
        bs = header.block_size
        first = rank0 + (x - p_lo) // bs
        last = rank0 + (y - 1 - p_lo) // bs
        out = [(block_offset(header, first), block_offset(header, last) + bs)]
        if header.checksum_size:
            per = header.blocks_per_checksum
            for k in range(first // per, last // per + 1):
                end_rank = min((k + 1) * per, header.used_blocks) - 1
                at = block_offset(header, end_rank) + bs
                out.append((at, at + header.checksum_size))
        return out

    def _fill(self, iov: list[memoryview], lo: int, hi: int) -> None:
        """Read partition bytes ``[lo, hi)`` into ``iov``; a file's holes become zeros."""
        pos = lo
        index, within = 0, 0  # where in iov partition byte ``pos`` goes

        def take(n: int) -> list[memoryview]:
            nonlocal index, within
            out = []
            while n:
                v = iov[index]
                k = min(n, len(v) - within)
                out.append(v[within : within + k])
                within += k
                n -= k
                if within == len(v):
                    index, within = index + 1, 0
            return out

        for a, b in self._data_ranges(self.base + lo, self.base + hi):
            for v in take(a - self.base - pos):
                v[:] = bytes(len(v))  # a hole
            self._read_views(take(b - a), a)
            pos = b - self.base
        for v in take(hi - pos):
            v[:] = bytes(len(v))

    def _read_views(self, views: list[memoryview], offset: int) -> None:
        """Fill ``views`` from ``offset`` with large vectored reads; past a read error,
        the careful path of :meth:`_read_into` (skips, zeros, notes) takes the rest."""
        if offset >= self._skip_until:
            while views:
                try:
                    n = os.preadv(self.fd, views[:IOV_MAX], offset)
                except OSError:
                    break
                if n == 0:
                    raise DeviceError(
                        f"{self.path} ended at byte {offset}, inside the filesystem: "
                        "the disk is smaller than its partition table or filesystem says."
                    )
                offset += n
                views = advance_views(views, n)
                self._skip = FIRST_SKIP  # a good read ends a run of errors
        if not views:
            return
        rest = bytearray(sum(len(v) for v in views))
        self._read_into(memoryview(rest), offset)
        at = 0
        for v in views:
            v[:] = rest[at : at + len(v)]
            at += len(v)

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
        """Fill ``view`` from ``offset``; unreadable bytes stay zero and are noted.

        After a read error the first pass skips ahead (64 KiB, doubling with each
        error in a row, up to 64 MiB) so that the healthy rest of the disk is
        copied before a failing area is worked on; the retry passes come back for
        what was skipped.
        """
        got = 0
        size = len(view)
        while got < size:
            pos = offset + got
            if pos < self._skip_until:
                stop = min(self._skip_until, offset + size)
                self._span_bad.append((pos, stop))
                got = stop - offset
                continue
            try:
                n = os.preadv(self.fd, [view[got:]], pos)
            except OSError as exc:
                if exc.errno in GONE_ERRORS:
                    raise DeviceGoneError(
                        f"{self.path} disappeared at byte {pos} ({exc.strerror}): was it unplugged?"
                    ) from exc
                if not self.keep_going or exc.errno not in MEDIA_ERRORS:
                    raise _read_error(self.path, pos, exc) from exc
                self.errors += 1
                self._skip_until = pos + self._skip
                self._skip = min(self._skip * 2, MAX_SKIP)
                continue
            if n == 0:
                raise DeviceError(
                    f"{self.path} ended at byte {pos}, inside the filesystem: "
                    "the disk is smaller than its partition table or filesystem says."
                )
            got += n
            self._skip = FIRST_SKIP  # a good read ends a run of errors


CHECKSUM_BYTES = 4
"""A CRC32 after each strip (the only checksum rescue writes)."""


@dataclass(frozen=True)
class Extent:
    """A byte range of an open disk or file: where a partition is read or written."""

    fd: int
    path: str
    base: int
    size: int


def _restart(header: PartcloneHeader | None, alloc: Allocation, prefix: bytes, pos: int) -> _Start:
    """Where a resumed stream starts reading, to go on at stream offset ``pos``.

    A partclone stream restarts at the first block of the checksum strip holding
    ``pos`` (so the strip's CRC is computed whole again); a raw stream at the
    block holding ``pos``. The bytes regenerated before ``pos`` are dropped.
    """
    bs = alloc.block_size
    if header is None:
        block = pos // bs
        return _Start(block, 0, block * bs, pos)
    if pos < len(prefix):
        return _Start(0, 0, len(prefix), pos)  # the prefix is written again from ``pos``
    per = header.blocks_per_checksum if header.checksum_size else header.used_blocks or 1
    stride = per * bs + header.checksum_size
    strip = (pos - len(prefix)) // stride
    rank = strip * per
    block = (
        BlockRanks(alloc.bitmap).select(rank) if rank < header.used_blocks else alloc.total_blocks
    )
    return _Start(block, rank, block_offset(header, rank), pos)


def _frame_buffers(frame_size: int, workers: int) -> queue.Queue[bytearray]:
    """Frame buffers for one stream: enough to keep every stage busy, 64 MiB or so in all."""
    count = max(
        READ_SPAN // frame_size + 3, min(2 * workers + QUEUE_DEPTH + 3, 64 * MiB // frame_size)
    )
    free: queue.Queue[bytearray] = queue.Queue()
    for _ in range(count):
        free.put(bytearray(frame_size))
    return free


def write_stream(
    src: Extent,
    alloc: Allocation,
    out_base: Path,
    options: CompressionOptions,
    *,
    progress: ProgressReporter,
    cancel: threading.Event | None,
    reading: ReadOptions | None = None,
    resume: Checkpoint | None = None,
    checkpoint: Callable[[Checkpoint], None] | None = None,
    regions: Path | None = None,
) -> StreamResult:
    """Store the used blocks of ``src`` as a stream: partclone, or raw bytes for a dd stream.

    Unreadable used bytes become zeros in frames stored raw; after the first pass
    :mod:`rescue.salvage` retries them and patches what it recovers into place.
    Every few seconds ``checkpoint`` gets the point up to which the stream is
    safely on disk; ``resume`` goes on from such a point, producing the same
    stream as an uninterrupted capture. With ``regions``, the region hash list
    (:mod:`rescue.image.regions`) is written there as the blocks are read; a resumed
    capture hashes again what was read before it started (it reads, no compression).
    """
    reading = reading or ReadOptions()
    raw = alloc.raw
    header = None
    prefix = b""
    if not raw:
        prefix = stream_prefix(alloc)
        header = PartcloneHeader.unpack(prefix[:110])
    start = _Start(stream_pos=len(prefix))
    skipped: list[tuple[int, int]] = []
    if resume is not None:
        start = _restart(header, alloc, prefix, resume.stream_pos)
        skipped = list(resume.skipped)
        entries = _frames_on_disk(out_base, resume.frames)  # before the cut at the resume point
        volumes = stream_writer(out_base, options.split, resume_at=resume.file_pos)
        zw = SeekableZstdWriter(
            binary(volumes), level=options.level, frame_size=options.frame_size,
            threads=options.threads, resume=(entries, list(resume.raw_frames)),
        )  # fmt: skip
    else:
        volumes = stream_writer(out_base, options.split)
        zw = SeekableZstdWriter(
            binary(volumes), level=options.level, frame_size=options.frame_size,
            threads=options.threads,
        )  # fmt: skip
    if regions is not None:  # always written whole: drop what an interrupted capture left
        for leftover in regions.parent.glob(f"{regions.name}*"):
            leftover.unlink()
    region_out = stream_writer(regions, None) if regions is not None else None
    hasher = RegionHasher(binary(region_out)) if region_out is not None else None
    if hasher is not None and start.block:
        try:
            hash_used(src, alloc, hasher, upto_block=start.block, skipped=skipped, cancel=cancel)
        except BaseException:
            zw.abort()
            volumes.close(fsync=False)
            assert region_out is not None
            region_out.close(fsync=False)
            raise
    free = _frame_buffers(options.frame_size, zw.workers)
    reader = _Reader(
        src, alloc, cancel, header=header, prefix=prefix, frames=(options.frame_size, free),
        start=start, keep_going=reading.keep_going, regions=hasher,
    )  # fmt: skip
    last_checkpoint = time.monotonic()
    reader.start()
    try:
        while (item := reader.out.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            check_cancel(cancel)
            skipped += item.skipped
            for lo, hi in item.raw:
                zw.mark_raw(lo, hi)
            for buf, size in item.frames:
                zw.write_frame(memoryview(buf)[:size], release=functools.partial(free.put, buf))
            progress.advance(item.used)
            if checkpoint is not None and time.monotonic() - last_checkpoint >= CHECKPOINT_EVERY:
                last_checkpoint = time.monotonic()
                point = _checkpoint(zw, volumes, skipped, header=header, alloc=alloc, prefix=prefix)
                if point is not None:
                    checkpoint(point)
        check_cancel(cancel)
        zw.close()
        volumes.close(fsync=True)
        if hasher is not None and region_out is not None:
            hasher.close()
            region_out.close(fsync=True)
    except BaseException:
        zw.abort()
        volumes.close(fsync=False)
        if region_out is not None:
            region_out.close(fsync=False)
        raise
    finally:
        reader.stop()
        reader.join()
    files = tuple(StoredFile(p.name, size, digest) for p, size, digest in volumes.files)
    region_files = (
        tuple(StoredFile(p.name, size, digest) for p, size, digest in region_out.files)
        if region_out is not None
        else ()
    )
    unreadable: tuple[tuple[int, int], ...] = ()
    if skipped:
        files, unreadable = _salvage(
            src, alloc, volumes, zw, skipped,
            errors=reader.errors, header=header, reading=reading, progress=progress,
            cancel=cancel,
        )  # fmt: skip
    if raw and zw.bytes_in != alloc.device_size:
        raise DeviceError(
            f"{src.path}: read {zw.bytes_in} bytes of a {alloc.device_size}-byte partition."
        )
    if header is not None and zw.bytes_in != header.stream_size:
        raise DeviceError(
            f"{src.path}: the stream came to {zw.bytes_in} bytes; its header says "
            f"{header.stream_size}."
        )
    return StreamResult(
        files=files,
        stream_bytes=zw.bytes_in,
        unreadable=unreadable,
        read_errors=reader.errors,
        regions=region_files,
    )


def hash_used(
    src: Extent,
    alloc: Allocation,
    hasher: RegionHasher,
    *,
    upto_block: int,
    skipped: Sequence[tuple[int, int]] = (),
    cancel: threading.Event | None,
    progress: ProgressReporter | None = None,
) -> None:
    """Feed ``hasher`` the used bytes before block ``upto_block``, read from ``src`` (what an
    interrupted capture had read, or a whole partition compared with a base image);
    unreadable and ``skipped`` bytes spoil their regions."""
    for off, n in skipped:
        hasher.spoil(off, off + n)
    limit = min(upto_block * alloc.block_size, alloc.device_size)
    spans = (sp for sp in read_spans(alloc) if sp[0] < limit)
    # a thread reads the next spans while this one hashes (preadv lets go of the GIL)
    fetcher = _SpanFetcher(src, spans)
    fetcher.start()
    try:
        while (f := fetcher.next()) is not None:
            check_cancel(cancel)
            lo, hi = f.lo, f.hi
            view = f.view()
            if not f.whole:  # read again through the cache, up to the first bad sector
                del view
                again = memoryview(bytearray(hi - lo))
                view = again[: _read_around(src, lo, again)]
            got = len(view)
            if got < hi - lo:
                hasher.spoil(lo + got, min(hi, limit))
            for o, k in f.pieces:
                a, b = lo + o, min(lo + o + k, limit, lo + got)
                if b > a:
                    hasher.feed(a, [view[o : o + (b - a)]])
            del view
            fetcher.release(f)
            if progress is not None:
                progress.advance(sum(k for _o, k in f.pieces))
    finally:
        fetcher.stop()
        fetcher.join()


def _direct_fd(src: Extent) -> int | None:
    """A second descriptor of ``src`` that reads with ``O_DIRECT`` (None: not possible)."""
    try:
        return os.open(f"/proc/self/fd/{src.fd}", os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
    except OSError:
        return None


def _read_around(src: Extent, lo: int, buf: memoryview) -> int:
    """A span whose read failed, read again in 4 KiB pieces: the bytes up to the first that
    cannot be read (what follows is spoiled with them)."""
    got = 0
    while got < len(buf):
        n = min(4096, len(buf) - got)
        try:
            k = os.preadv(src.fd, [buf[got : got + n]], src.base + lo + got)
        except OSError:
            return got
        if k == 0:
            return got
        got += k
    return got


def write_region_list(
    src: Extent,
    alloc: Allocation,
    out: Path,
    *,
    cancel: threading.Event | None,
    progress: ProgressReporter,
) -> tuple[StoredFile, ...]:
    """Read every used byte of ``src`` for its region digests only (no stream): the list
    goes to ``out`` (sealed in an encrypted image), replacing what was there."""
    for leftover in out.parent.glob(f"{out.name}*"):
        leftover.unlink()
    writer = stream_writer(out, None)
    try:
        hasher = RegionHasher(binary(writer))
        hash_used(
            src, alloc, hasher, upto_block=alloc.total_blocks, cancel=cancel, progress=progress
        )
        hasher.close()
        writer.close(fsync=True)
    except BaseException:
        writer.close(fsync=False)
        raise
    return tuple(StoredFile(p.name, size, digest) for p, size, digest in writer.files)


def _frames_on_disk(out_base: Path, count: int) -> list[tuple[int, int, int]]:
    """(compressed, decompressed, checksum) of the first ``count`` frames of a stream file."""
    entries: list[tuple[int, int, int]] = []
    if count == 0:
        return entries
    with VolumeReader(volume_paths(out_base), unfinished=True) as v:
        f = binary(v)
        for offset, csize, dsize, is_data in walk_frames(f):
            if not is_data:
                continue
            if dsize is None:
                raise ImageDamagedError(f"{out_base.name}: a frame without its size at {offset}.")
            f.seek(offset + csize - 4)
            (checksum,) = struct.unpack("<I", f.read(4))
            entries.append((csize, dsize, checksum))
            if len(entries) == count:
                break
    if len(entries) != count:
        raise ImageDamagedError(f"{out_base.name} holds fewer frames than its capture map says.")
    return entries


def _checkpoint(
    zw: SeekableZstdWriter,
    volumes: VolumeWriter | SealedStreamWriter,
    skipped: list[tuple[int, int]],
    *,
    header: PartcloneHeader | None,
    alloc: Allocation,
    prefix: bytes,
) -> Checkpoint | None:
    """The last frame boundary that is on disk, after syncing the stream file."""
    durable = volumes.durable
    volumes.sync()
    frames = file_pos = stream_pos = 0
    for c, d, _x in list(zw.entries):
        if file_pos + c > durable:
            break
        file_pos += c
        stream_pos += d
        frames += 1
    if frames == 0:
        return None
    limit = _restart(header, alloc, prefix, stream_pos).block * alloc.block_size
    before = tuple((off, min(n, limit - off)) for off, n in skipped if off < limit)
    raw = tuple(i for i in zw.raw_frames if i < frames)
    return Checkpoint(frames, stream_pos, file_pos, raw, before)


def _salvage(
    src: Extent,
    alloc: Allocation,
    volumes: VolumeWriter | SealedStreamWriter,
    zw: SeekableZstdWriter,
    skipped: list[tuple[int, int]],
    *,
    errors: int,
    header: PartcloneHeader | None,
    reading: ReadOptions,
    progress: ProgressReporter,
    cancel: threading.Event | None,
) -> tuple[tuple[StoredFile, ...], tuple[tuple[int, int], ...]]:
    """Retry passes over what the first pass skipped; recovered bytes go into the stream."""

    total = sum(n for _, n in skipped)
    progress.note(
        f"{src.path}: first pass done; {errors} read error(s), {total // 1024} KiB of used "
        "data skipped around them, to retry now"
    )
    recovery = retry_passes(
        src.fd, src.path, src.base, skipped,
        retries=reading.retries, progress=progress, cancel=cancel,
    )  # fmt: skip
    paths = [p for p, _size, _digest in volumes.files]
    if recovery.recovered:
        with VolumeReader(paths, writable=True) as v:
            patch_stream(
                v,
                set(zw.raw_frames),
                recovery.recovered,
                header=header,
                ranks=BlockRanks(alloc.bitmap) if header is not None else None,
            )
    with VolumeReader(paths, hashing=True) as v:
        files = tuple(StoredFile(name, size, digest) for name, size, digest in v.digests())
    return files, tuple(recovery.unreadable)


FLUSH_EVERY = 64 * MiB
"""A restore starts the writeback of what it wrote each time this much more is written."""


class _Flusher:
    """Starts the writeback of a restored target while the restore goes on.

    Each time :data:`FLUSH_EVERY` more bytes have been written, a thread asks the
    kernel to write that range out now and to drop it from the cache once it is clean
    (``POSIX_FADV_DONTNEED``, which does not wait): the disk writes as the next frames
    are decoded, the final ``fsync`` (which the caller still makes before saying done)
    has little left, and a restore does not fill the page cache. It is advice only: a
    write error on the way is reported by that ``fsync``, as the kernel keeps it for
    every descriptor open on the target.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._pending = 0
        self._lo: int | None = None
        self._hi = 0
        self._asked: tuple[int, int] | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="rescue-flush", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                asked, self._asked = self._asked, None
            if self._stop:
                return
            if asked is None:
                continue
            lo, hi = asked
            try:
                os.posix_fadvise(self._fd, lo, hi - lo, os.POSIX_FADV_DONTNEED)
            except OSError:
                return  # a target that takes no advice is written all the same

    def wrote(self, offset: int, n: int) -> None:
        """``n`` bytes were written at ``offset`` of the descriptor."""
        self._lo = offset if self._lo is None else min(self._lo, offset)
        self._hi = max(self._hi, offset + n)
        self._pending += n
        if self._pending >= FLUSH_EVERY:
            with self._lock:
                lo, hi = self._lo, self._hi
                if self._asked is not None:  # the thread has not taken the last one yet
                    lo, hi = min(lo, self._asked[0]), max(hi, self._asked[1])
                self._asked = (lo, hi)
            self._pending, self._lo, self._hi = 0, None, 0
            self._wake.set()

    def close(self) -> None:
        """Stop the thread (the descriptor must stay open until this returns)."""
        self._stop = True
        self._wake.set()
        self._thread.join()


DIRECT_CHUNK = 8 * MiB
DIRECT_BUFFERS = 3


class _DirectWriter:
    """Writes a restore's blocks with ``O_DIRECT``: gathered into aligned buffers, written
    by a thread while the next frames decode, never through the page cache.

    A block device's page cache writes back in sector-sized pieces, one bio each: on a
    restore that is about a third of all CPU (the copy into the cache, the buffer heads,
    the bios), more than decompression. Direct writes of up to 8 MiB cost one copy into
    an aligned buffer. A write that is not aligned (a raw stream's last bytes) goes
    through the cache after the buffers are written. A target that refuses direct I/O
    after all (``EINVAL``) is written through the cache from then on. The caller's
    ``fsync`` still comes before the restore says done (the disk's own cache).
    """

    def __init__(self, fd: int, path: str) -> None:
        self._fd = fd
        self._path = path
        self._flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, self._flags | os.O_DIRECT)  # OSError: not here
        self._direct = True
        self._free: queue.Queue[mmap.mmap] = queue.Queue()
        for _ in range(DIRECT_BUFFERS):
            self._free.put(mmap.mmap(-1, DIRECT_CHUNK))  # page-aligned, as O_DIRECT needs
        self._todo: queue.Queue[tuple[mmap.mmap, int, int] | None] = queue.Queue()
        self._buf: mmap.mmap | None = None
        self._fill = 0
        self._at = 0
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="rescue-write", daemon=True)
        self._thread.start()

    @staticmethod
    def fits(dst: Extent, block_size: int) -> bool:
        """Every block of a stream written at ``dst`` is aligned for direct writes."""
        return block_size % DIRECT_ALIGN == 0 and dst.base % DIRECT_ALIGN == 0

    def _run(self) -> None:
        while (item := self._todo.get()) is not None:
            buf, length, offset = item
            if self._error is None:
                try:
                    self._write(memoryview(buf)[:length], offset)
                except BaseException as exc:  # noqa: BLE001  (raised in the caller's thread)
                    self._error = exc
            self._free.put(buf)
            self._todo.task_done()
        self._todo.task_done()

    def _write(self, data: memoryview, offset: int) -> None:
        if self._direct:
            try:
                n = os.pwrite(self._fd, data, offset)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise DeviceError(
                        f"Write error on {self._path} at byte {offset}: {exc.strerror or exc}."
                    ) from exc
                self._direct = False  # refused after all: through the cache from here on
                fcntl.fcntl(self._fd, fcntl.F_SETFL, self._flags)
                n = 0
            data, offset = data[n:], offset + n
        pwrite_all(self._fd, data, offset, self._path)

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def _submit(self) -> None:
        """Hand the gathered buffer to the thread; a length that is not aligned (only the
        end of a run can be) has its last bytes written through the cache."""
        buf, fill, at = self._buf, self._fill, self._at
        self._buf, self._fill = None, 0
        if buf is None:
            return
        head = fill - fill % DIRECT_ALIGN
        tail = bytes(buf[head:fill])
        if head:
            self._todo.put((buf, head, at))
        else:
            self._free.put(buf)
        if tail:
            self._buffered(at + head, [tail])

    def _buffered(self, offset: int, pieces: Sequence[bytes | bytearray | memoryview]) -> None:
        self._drain()
        fcntl.fcntl(self._fd, fcntl.F_SETFL, self._flags)
        try:
            pwritev_all(self._fd, pieces, offset, self._path)
        finally:
            if self._direct:
                fcntl.fcntl(self._fd, fcntl.F_SETFL, self._flags | os.O_DIRECT)

    def write(self, offset: int, pieces: Sequence[bytes | bytearray | memoryview], n: int) -> None:
        """``pieces`` (``n`` bytes in all) go to ``offset``."""
        self._check()
        if self._buf is not None and offset != self._at + self._fill:
            self._submit()
        if self._buf is None and offset % DIRECT_ALIGN:
            self._buffered(offset, pieces)  # a run that starts off the alignment
            return
        for piece in pieces:
            view = memoryview(piece).cast("B")
            while len(view):
                if self._buf is None:
                    self._buf = self._free.get()
                    self._check()
                    self._at, self._fill = offset, 0
                take = min(len(view), DIRECT_CHUNK - self._fill)
                self._buf[self._fill : self._fill + take] = view[:take]
                self._fill += take
                offset += take
                view = view[take:]
                if self._fill == DIRECT_CHUNK:
                    self._submit()

    def _drain(self) -> None:
        """Every buffer handed over is written (or failed)."""
        self._todo.join()
        self._check()

    def close(self) -> None:
        """Write what is left; the descriptor is as it was given (buffered)."""
        try:
            self._submit()
            self._drain()
        finally:
            self._todo.put(None)
            self._thread.join()
            fcntl.fcntl(self._fd, fcntl.F_SETFL, self._flags)

    def abort(self) -> None:
        """Stop after the writes under way (on an error elsewhere)."""
        self._buf = None
        self._todo.put(None)
        self._thread.join()
        fcntl.fcntl(self._fd, fcntl.F_SETFL, self._flags)


class _BufferedWriter:
    """Writes through the page cache, its writeback started as it goes (:class:`_Flusher`)."""

    def __init__(self, fd: int, path: str) -> None:
        self._fd = fd
        self._path = path
        self._flusher = _Flusher(fd)

    def write(self, offset: int, pieces: Sequence[bytes | bytearray | memoryview], n: int) -> None:
        pwritev_all(self._fd, pieces, offset, self._path)
        self._flusher.wrote(offset, n)

    def close(self) -> None:
        self._flusher.close()

    abort = close


def _target_writer(dst: Extent, block_size: int) -> _DirectWriter | _BufferedWriter:
    if _DirectWriter.fits(dst, block_size):
        try:
            return _DirectWriter(dst.fd, dst.path)
        except OSError:
            pass  # no direct I/O on this target (a tmpfs file): through the cache
    return _BufferedWriter(dst.fd, dst.path)


def restore_partclone_stream(
    chunks: Iterator[bytes],
    dst: Extent,
    *,
    progress: ProgressReporter,
    cancel: threading.Event | None,
) -> PartcloneHeader:
    """Write the used blocks of a partclone stream into ``dst``.

    Each batch of contiguous used blocks (up to 8 MiB, its checksums verified first)
    goes out with one ``pwritev`` straight from the decoded frames; the writeback of
    what was written runs meanwhile (:class:`_Flusher`).
    """
    reader = StreamReader(ChunkFile(chunks))
    header = reader.header
    fs_bytes = header.total_blocks * header.block_size
    if fs_bytes > dst.size:
        raise DeviceError(
            f"The filesystem in the image needs {fs_bytes} bytes but {dst.path} "
            f"has room for {dst.size} bytes."
        )
    bs = header.block_size
    writer = _target_writer(dst, bs)
    try:
        for first, pieces, n in reader.iter_pieces():
            check_cancel(cancel)
            writer.write(dst.base + first * bs, pieces, n)
            progress.advance(n)
    except BaseException:
        writer.abort()
        raise
    writer.close()
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
    writer = _target_writer(dst, DIRECT_ALIGN)
    try:
        for chunk in chunks:
            check_cancel(cancel)
            if pos + len(chunk) > dst.size:
                raise DeviceError(
                    f"The raw partition in the image is larger than {dst.path}'s {dst.size} bytes."
                )
            writer.write(dst.base + pos, [chunk], len(chunk))
            pos += len(chunk)
            progress.advance(len(chunk))
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return pos


COPY_CHUNK = 8 * MiB


def copy_ranges(
    read: Callable[[int, int], bytes],
    ranges: Sequence[tuple[int, int]],
    dst: Extent,
    *,
    source: str,
    progress: ProgressReporter,
    cancel: threading.Event | None,
) -> int:
    """Copy byte ``ranges`` (offset, length), read by ``read(offset, n)``, into ``dst``.

    The one block copier for copies that are not a stream: pieces of at most
    :data:`COPY_CHUNK`, a short read is an error naming ``source``, every write
    goes through :func:`rescue.blockio.pwrite_all`. Returns the bytes copied.
    """
    copied = 0
    for offset, length in ranges:
        if offset + length > dst.size:
            raise DeviceError(
                f"{source}: bytes up to {offset + length} do not fit the {dst.size} bytes "
                f"of {dst.path}."
            )
        done = 0
        while done < length:
            check_cancel(cancel)
            n = min(COPY_CHUNK, length - done)
            try:
                data = read(offset + done, n)
            except OSError as exc:
                raise DeviceError(
                    f"Read error on {source} at byte {offset + done}: {exc.strerror or exc}."
                ) from exc
            if len(data) != n:
                raise DeviceError(f"Short read from {source} at byte {offset + done}.")
            pwrite_all(dst.fd, data, dst.base + offset + done, dst.path)
            done += n
            copied += n
            progress.advance(n)
    return copied
