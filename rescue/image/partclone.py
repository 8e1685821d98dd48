"""The partclone image format v2 ("0002"): header, bitmap, used blocks with checksums.

Layout (docs/FORMAT.md, "partclone stream"): a 110-byte header, the block bitmap
(block n = bit n&7 of byte n>>3) and its CRC32, then every used block in
ascending order with a checksum after each ``blocks_per_checksum`` blocks and
after the final partial strip. We write CRC32 mode with a fresh CRC per strip
(reseed), exactly as partclone 0.3.23 does by default, so Debian's
``partclone.chkimg`` and ``partclone.restore`` accept our streams.
"""

from __future__ import annotations

import bisect
import collections
import struct
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from isal.isal_zlib import crc32 as _zlib_crc32

from rescue.errors import ImageDamagedError, ImageError, NotAnImageError, UnsupportedImageError
from rescue.filesystems.base import Allocation, bitmap_runs, count_bits

MAGIC = b"partclone-image\0"
IMAGE_VERSION_2 = b"0002"
ENDIAN_MARK = 0xC0DE
HEADER_SIZE = 110
FEATURE_SIZE = 18  # bytes of "options" after the fixed part, as partclone counts them
WRITER_VERSION = "0.3.23"
"""Version string we put in the header: the partclone release whose streams ours match."""

CHECKSUM_NONE = 0x00
CHECKSUM_CRC32 = 0x20
CHECKSUM_XXH64 = 0x30
CHECKSUM_XXH128 = 0x31
_CHECKSUM_SIZES = {CHECKSUM_NONE: 0, CHECKSUM_CRC32: 4, CHECKSUM_XXH64: 8, CHECKSUM_XXH128: 16}

BITMAP_NONE = 0
BITMAP_BIT = 1
BITMAP_BYTE = 8

_STRIP_BYTES = 1 << 20
"""partclone's default strip: one checksum per MiB of blocks."""

MIN_BLOCK_SIZE = 512
MAX_BLOCK_SIZE = 1 << 25
"""Block sizes a header may give: a power of two from one sector to 32 MiB (exFAT's largest
cluster; NTFS clusters go to 2 MiB, every other filesystem stays far below)."""
MAX_DEVICE_SIZE = 1 << 53
"""The largest device a header may describe (8 PiB)."""

_HEADER = struct.Struct("<16s14s4sH16sQQQQIIHHHHIBB")
assert _HEADER.size == HEADER_SIZE - 4


def crc32(data: bytes | bytearray | memoryview, state: int = 0xFFFFFFFF) -> int:
    """partclone's CRC32: reflected 0xEDB88320, initial state all ones, no final XOR.

    ISA-L's folding CRC (PCLMULQDQ) runs near memory speed, several times zlib's.
    """
    return _zlib_crc32(data, state ^ 0xFFFFFFFF) ^ 0xFFFFFFFF


@dataclass(frozen=True)
class PartcloneHeader:
    fs: str
    device_size: int
    total_blocks: int
    used_blocks_sb: int
    """Used blocks as the filesystem's superblock says."""
    used_blocks: int
    """Used blocks in the bitmap: the number of blocks the stream carries."""
    block_size: int
    checksum_mode: int = CHECKSUM_CRC32
    blocks_per_checksum: int = 256
    reseed: bool = True
    bitmap_mode: int = BITMAP_BIT
    version: str = WRITER_VERSION
    cpu_bits: int = 64
    feature_size: int = FEATURE_SIZE

    @property
    def checksum_size(self) -> int:
        return _CHECKSUM_SIZES[self.checksum_mode]

    @property
    def bitmap_bytes(self) -> int:
        return (self.total_blocks + 7) // 8

    @property
    def data_start(self) -> int:
        """Stream offset of the first used block."""
        return HEADER_SIZE + self.bitmap_bytes + 4

    @property
    def stream_size(self) -> int:
        """Size of the whole stream: header, bitmap, blocks and checksums."""
        strips = 0
        if self.checksum_size:
            strips = -(-self.used_blocks // self.blocks_per_checksum)
        return self.data_start + self.used_blocks * self.block_size + strips * self.checksum_size

    def pack(self) -> bytes:
        body = _HEADER.pack(
            MAGIC,
            self.version.encode()[:14],
            IMAGE_VERSION_2,
            ENDIAN_MARK,
            self.fs.encode()[:16],
            self.device_size,
            self.total_blocks,
            self.used_blocks_sb,
            self.used_blocks,
            self.block_size,
            self.feature_size,
            2,
            self.cpu_bits,
            self.checksum_mode,
            self.checksum_size,
            self.blocks_per_checksum,
            1 if self.reseed else 0,
            self.bitmap_mode,
        )
        return body + struct.pack("<I", crc32(body))

    @classmethod
    def unpack(cls, data: bytes) -> PartcloneHeader:
        if len(data) < HEADER_SIZE:
            raise ImageDamagedError(
                f"The partclone header is truncated ({len(data)} of {HEADER_SIZE} bytes)."
            )
        if data[:16] != MAGIC:
            raise NotAnImageError("Not a partclone image stream (no partclone magic).")
        if data[30:34] == b"0001":
            raise UnsupportedImageError(
                "This is a partclone image of the old format v1, which rescue does not read.",
                hint="Restore it with Clonezilla or partclone.restore.",
            )
        if data[30:34] != IMAGE_VERSION_2:
            raise UnsupportedImageError(
                f"Unknown partclone image format {data[30:34]!r} (rescue reads 0002)."
            )
        (
            _magic, version, _v, endian, fs, device_size, total, used_sb, used_bm,
            block_size, feature_size, _imgver, cpu_bits, mode, cs_size, bpc, reseed, bm_mode,
        ) = _HEADER.unpack_from(data)  # fmt: skip
        if endian != ENDIAN_MARK:
            raise UnsupportedImageError("This partclone image was written on a big-endian machine.")
        (stored,) = struct.unpack_from("<I", data, HEADER_SIZE - 4)
        if crc32(data[: HEADER_SIZE - 4]) != stored:
            raise ImageDamagedError("The partclone header is damaged (its CRC32 does not match).")
        if mode not in _CHECKSUM_SIZES or _CHECKSUM_SIZES[mode] != cs_size:
            raise UnsupportedImageError(f"Unknown partclone checksum mode {mode:#x}/{cs_size}.")
        if bm_mode != BITMAP_BIT:
            raise UnsupportedImageError(f"Unsupported partclone bitmap mode {bm_mode}.")
        header = cls(
            fs=fs.rstrip(b"\0").decode(errors="replace"),
            device_size=device_size,
            total_blocks=total,
            used_blocks_sb=used_sb,
            used_blocks=used_bm,
            block_size=block_size,
            checksum_mode=mode,
            blocks_per_checksum=bpc,
            reseed=bool(reseed),
            bitmap_mode=bm_mode,
            version=version.rstrip(b"\0").decode(errors="replace"),
            cpu_bits=cpu_bits,
            feature_size=feature_size,
        )
        header._check_sizes()
        return header

    def _check_sizes(self) -> None:
        """The header's sizes agree with each other, before anything is allocated for them."""
        bs, total, device = self.block_size, self.total_blocks, self.device_size
        if not MIN_BLOCK_SIZE <= bs <= MAX_BLOCK_SIZE or bs & (bs - 1):
            raise ImageDamagedError(
                f"The partclone header is damaged: a block size of {bs} bytes "
                f"(a power of two from {MIN_BLOCK_SIZE} to {MAX_BLOCK_SIZE} is expected)."
            )
        if device > MAX_DEVICE_SIZE:
            raise ImageDamagedError(
                f"The partclone header is damaged: it describes a device of {device} bytes."
            )
        if total > device // bs + 1:
            raise ImageDamagedError(
                f"The partclone header is damaged: {total} blocks of {bs} bytes do not "
                f"fit the {device}-byte device it describes."
            )
        if self.used_blocks > total:
            raise ImageDamagedError(
                f"The partclone header is damaged: {self.used_blocks} of {total} blocks used."
            )
        if self.checksum_size and self.blocks_per_checksum <= 0:
            raise ImageDamagedError("The partclone header is damaged: no blocks per checksum.")

    def check(self, *, partition_size: int | None = None, stream_size: int | None = None) -> None:
        """The header against what the caller knows: the size of the partition it was
        taken from (manifest or partition table) and the decoded size of the stream (a
        seek table's total). Either is damage when the header does not fit it."""
        if partition_size is not None and self.device_size > partition_size:
            raise ImageDamagedError(
                f"The partclone header describes a {self.device_size}-byte filesystem, "
                f"larger than its {partition_size}-byte partition: it is damaged."
            )
        if stream_size is not None and self.data_start > stream_size:
            raise ImageDamagedError(
                f"The partclone header promises a bitmap of {self.bitmap_bytes} bytes, "
                f"more than the {stream_size}-byte stream holds: it is damaged."
            )


def header_for(alloc: Allocation, *, blocks_per_checksum: int | None = None) -> PartcloneHeader:
    """The header partclone would write for this allocation (CRC32, one checksum per MiB)."""
    bpc = blocks_per_checksum or max(1, _STRIP_BYTES // alloc.block_size)
    return PartcloneHeader(
        fs=alloc.partclone_fs,
        device_size=alloc.device_size,
        total_blocks=alloc.total_blocks,
        used_blocks_sb=alloc.fs_used_blocks,
        used_blocks=alloc.used_blocks,
        block_size=alloc.block_size,
        blocks_per_checksum=bpc,
    )


def stream_prefix(alloc: Allocation, *, blocks_per_checksum: int | None = None) -> bytes:
    """Header, bitmap and bitmap CRC: everything before the first used block."""
    header = header_for(alloc, blocks_per_checksum=blocks_per_checksum)
    bitmap = bytes(alloc.bitmap[: header.bitmap_bytes])
    return header.pack() + bitmap + struct.pack("<I", crc32(bitmap))


class BlockEncoder:
    """Appends checksums to used blocks as they stream by, strip by strip."""

    def __init__(self, header: PartcloneHeader) -> None:
        if header.checksum_mode not in (CHECKSUM_CRC32, CHECKSUM_NONE):
            raise UnsupportedImageError("rescue writes CRC32 or no checksums only.")
        if header.checksum_mode == CHECKSUM_CRC32 and not header.reseed:
            raise UnsupportedImageError("rescue writes reseeded CRC32 strips only.")
        self.block_size = header.block_size
        self.strip = header.blocks_per_checksum * header.block_size
        self.checksums = header.checksum_mode == CHECKSUM_CRC32
        self._filled = 0  # bytes of the current strip already passed through
        self._crc = 0xFFFFFFFF

    def encode(self, data: bytes | bytearray | memoryview) -> bytes:
        """The stream bytes for ``data`` (whole used blocks, in order)."""
        return b"".join(self.encode_pieces(data))

    def encode_pieces(self, data: bytes | bytearray | memoryview) -> list[bytes | memoryview]:
        """Like :meth:`encode`, as pieces that share ``data``'s memory (no copy)."""
        if len(data) % self.block_size:
            raise ValueError("BlockEncoder takes whole blocks only")
        view = memoryview(data).cast("B")
        if not self.checksums:
            return [view]
        out: list[bytes | memoryview] = []
        pos = 0
        while pos < len(view):
            take = min(self.strip - self._filled, len(view) - pos)
            piece = view[pos : pos + take]
            out.append(piece)
            if (crc := self.checksum(piece)) is not None:
                out.append(crc)
            pos += take
        return out

    def checksum(self, piece: bytes | bytearray | memoryview) -> bytes | None:
        """Take ``piece`` (any bytes of block data, not past the current strip); returns the
        strip's checksum when ``piece`` completes it. A capture that places block data
        straight into frame buffers feeds it here, piece by piece, in stream order."""
        if not self.checksums:
            return None
        if len(piece) > self.strip - self._filled:
            raise ValueError("a piece runs past the end of its checksum strip")
        self._crc = crc32(piece, self._crc)
        self._filled += len(piece)
        if self._filled < self.strip:
            return None
        self._filled = 0
        crc, self._crc = self._crc, 0xFFFFFFFF
        return struct.pack("<I", crc)

    def finish(self) -> bytes:
        """The checksum of a final partial strip (nothing if the last strip was full)."""
        if not self.checksums or self._filled == 0:
            return b""
        tail = struct.pack("<I", self._crc)
        self._filled = 0
        self._crc = 0xFFFFFFFF
        return tail


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


_CHECK_AHEAD = 16 << 20
"""Most bytes of blocks held back until their strip's checksum has been read."""

Pieces = list[memoryview]
"""Consecutive bytes as views into the buffers they were decoded into."""


def _take(queue: collections.deque[memoryview], n: int) -> Pieces:
    """The first ``n`` bytes of the views in ``queue`` (which has them), as views."""
    out: Pieces = []
    while n:
        head = queue[0]
        if len(head) <= n:
            out.append(queue.popleft())
            n -= len(head)
        else:
            out.append(head[:n])
            queue[0] = head[n:]
            n = 0
    return out


def _read_exact(f: Readable, n: int, offset: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ImageDamagedError(
            f"The partclone stream ends at byte {offset + len(data)}, inside {what} "
            "(the image is truncated)."
        )
    return data


def named(exc: ImageError, name: str) -> ImageError:
    """``exc`` with the stream's name in front (once), of the same kind."""
    if exc.message.startswith(name) or f"{name}:" in exc.message:
        return exc
    message = f"{name}: {exc.message}"
    if isinstance(exc, ImageDamagedError):
        return ImageDamagedError(message, hint=exc.hint, offset=exc.offset)
    return type(exc)(message, hint=exc.hint)


# --- the bitmap ---------------------------------------------------------------------------

PIECE = 1 << 20
"""Bytes of bitmap per piece (a multiple of :attr:`BlockRanks.STEP` / 8)."""
_ZEROS = bytes(PIECE)
_ONES = b"\xff" * PIECE


class Bitmap:
    """A block bitmap in pieces of 1 MiB; a piece of all zeros or all ones is one shared
    object, so a bitmap costs memory only where used and free blocks mix (a stream that
    claims a vast empty or full filesystem costs almost nothing)."""

    __slots__ = ("nbytes", "pieces")

    def __init__(self, pieces: list[bytes | memoryview]) -> None:
        self.pieces = pieces
        self.nbytes = sum(len(p) for p in pieces)

    @staticmethod
    def shared(piece: bytes | memoryview) -> bytes | memoryview:
        if len(piece) == PIECE:
            if piece == _ZEROS:
                return _ZEROS
            if piece == _ONES:
                return _ONES
        return piece

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Bitmap:
        view = memoryview(data).cast("B")
        return cls([view[i : i + PIECE] for i in range(0, len(view), PIECE)])

    def __len__(self) -> int:
        return self.nbytes

    def byte(self, i: int) -> int:
        return self.pieces[i // PIECE][i % PIECE]

    def span(self, lo: int, hi: int) -> bytes | memoryview:
        """Bytes ``lo`` to ``hi``, which must lie in one piece."""
        k = lo // PIECE
        return self.pieces[k][lo - k * PIECE : hi - k * PIECE]

    def tobytes(self) -> bytes:
        return b"".join(bytes(p) for p in self.pieces)

    def count(self, total_blocks: int) -> int:
        """Set bits among the first ``total_blocks``."""
        n = 0
        for k, piece in enumerate(self.pieces):
            blocks = min(total_blocks - k * PIECE * 8, len(piece) * 8)
            if blocks <= 0:
                break
            if piece is _ONES:
                n += blocks
            elif piece is not _ZEROS:
                n += count_bits(bytes(piece[: -(-blocks // 8)]), blocks)
        return n

    def runs(self, total_blocks: int) -> Iterator[tuple[int, int]]:
        """Used blocks as merged ``(first, count)`` runs, never past ``total_blocks``."""
        start = end = -1
        for k, piece in enumerate(self.pieces):
            base = k * PIECE * 8
            blocks = min(total_blocks - base, len(piece) * 8)
            if blocks <= 0:
                break
            if piece is _ZEROS:
                continue
            found = [(0, blocks)] if piece is _ONES else bitmap_runs(bytes(piece), blocks)
            for first, count in found:
                a = base + first
                if a == end:
                    end = a + count
                    continue
                if start >= 0:
                    yield start, end - start
                start, end = a, a + count
        if start >= 0:
            yield start, end - start


def read_bitmap(
    read: Callable[[int], bytes], header: PartcloneHeader, *, keep: bool = True
) -> Bitmap:
    """The bitmap and its CRC32 that follow the header, read a piece at a time with
    ``read(n)`` (exactly ``n`` bytes, fewer only where the stream ends): memory is taken
    only for bitmap bytes the stream really holds, and shared where they are uniform.
    Without ``keep`` only its CRC32 and count are checked, and no piece is kept."""
    h = header
    pieces: list[bytes | memoryview] = []
    crc = 0xFFFFFFFF
    used = 0
    left = h.bitmap_bytes
    offset = HEADER_SIZE
    while left:
        n = min(left, PIECE)
        data = read(n)
        if len(data) != n:
            raise ImageDamagedError(
                f"The partclone stream ends at byte {offset + len(data)}, inside the bitmap "
                "(the image is truncated)."
            )
        crc = crc32(data, crc)
        piece = Bitmap([Bitmap.shared(data)])
        used += piece.count(h.total_blocks - (offset - HEADER_SIZE) * 8)
        if keep:
            pieces.extend(piece.pieces)
        left -= n
        offset += n
    tail = read(4)
    if len(tail) != 4:
        raise ImageDamagedError(
            f"The partclone stream ends at byte {offset + len(tail)}, inside the bitmap "
            "(the image is truncated)."
        )
    (stored,) = struct.unpack("<I", tail)
    if crc != stored:
        raise ImageDamagedError(
            f"The block bitmap is damaged (CRC32 mismatch at byte {HEADER_SIZE})."
        )
    if used != h.used_blocks:
        raise ImageDamagedError(
            f"The bitmap marks {used} blocks used, the header says {h.used_blocks}."
        )
    return Bitmap(pieces)


class StreamReader:
    """Reads a partclone v2 stream front to back, checking every checksum it can.

    The header is checked (against ``partition_size`` too, when the caller
    knows it) before anything is read for the bitmap.
    """

    def __init__(
        self, f: Readable, *, name: str | None = None, partition_size: int | None = None
    ) -> None:
        self._f = f
        self.name = name or str(getattr(f, "name", None) or "stream")
        try:
            self.header = PartcloneHeader.unpack(_read_exact(f, HEADER_SIZE, 0, "the header"))
            self.header.check(partition_size=partition_size)
            self.bitmap = read_bitmap(f.read, self.header)
        except ImageError as exc:
            raise named(exc, self.name) from exc
        self.unchecked_checksums = 0
        """Checksums skipped because rescue has no implementation of their kind (XXH)."""

    def iter_runs(self, max_bytes: int = 4 << 20) -> Iterator[tuple[int, bytes]]:
        """``(first_block, data)`` for consecutive used blocks, every checksum verified
        before its blocks are given out (see :meth:`iter_pieces`)."""
        for first, pieces, _n in self.iter_pieces(max_bytes):
            yield first, b"".join(pieces)

    def iter_pieces(self, max_bytes: int = 8 << 20) -> Iterator[tuple[int, Pieces, int]]:
        """``(first_block, pieces, nbytes)``: up to ``max_bytes`` of consecutive used blocks
        as pieces that share the decoded stream's memory (no copy; write them with one
        ``pwritev``).

        A strip's checksum is read and verified before any of its blocks is given out,
        so a damaged strip is never written anywhere.
        """
        h = self.header
        bs = h.block_size
        cs = h.checksum_size
        check_crc = h.checksum_mode == CHECKSUM_CRC32
        strip = h.blocks_per_checksum if cs else 0
        # blocks read at a time: a whole strip, unless a strange header makes strips huge;
        # then (and only then) blocks are given out before their strip's checksum is read
        unit = max(1, _CHECK_AHEAD // bs)
        if strip:
            unit = min(unit, strip)
        max_blocks = max(1, max_bytes // bs)
        read = getattr(self._f, "read_pieces", None) or (lambda n: [self._f.read(n)])
        runs = self.bitmap.runs(h.total_blocks)
        run_first = run_left = 0
        offset = h.data_start
        crc = 0xFFFFFFFF
        in_strip = 0  # blocks of the current strip read so far
        held: list[tuple[list[tuple[int, int]], collections.deque[memoryview]]] = []
        out_first, out_blocks = -1, 0
        out: Pieces = []  # the batch being gathered

        def batches() -> Iterator[tuple[int, Pieces, int]]:
            """Give out what ``held`` holds (checked), in batches of contiguous blocks."""
            nonlocal out_first, out_blocks, out
            for segments, queue in held:
                for seg_first, seg_count in segments:
                    first, count = seg_first, seg_count
                    while count:
                        if out and (first != out_first + out_blocks or out_blocks == max_blocks):
                            yield out_first, out, out_blocks * bs
                            out_first, out_blocks, out = -1, 0, []
                        if not out:
                            out_first = first
                        take = min(count, max_blocks - out_blocks)
                        out.extend(_take(queue, take * bs))
                        out_blocks += take
                        first += take
                        count -= take
            held.clear()

        while True:
            segments: list[tuple[int, int]] = []  # (first, count) of the blocks read next
            want = min(unit, strip - in_strip) if strip else unit
            n = 0
            while n < want:
                if not run_left:
                    nxt = next(runs, None)
                    if nxt is None:
                        break
                    run_first, run_left = nxt
                take = min(want - n, run_left)
                segments.append((run_first, take))
                run_first += take
                run_left -= take
                n += take
            if not n:
                break
            pieces = read(n * bs)
            got = sum(len(p) for p in pieces)
            if got != n * bs:
                raise ImageDamagedError(
                    f"The partclone stream ends at byte {offset + got}, inside block "
                    f"{segments[0][0] + got // bs} (the image is truncated)."
                )
            offset += got
            if check_crc:
                for piece in pieces:
                    crc = crc32(piece, crc)
            held.append((segments, collections.deque(memoryview(p).cast("B") for p in pieces)))
            in_strip += n
            if strip and in_strip == strip:
                offset = self._check(crc, offset, segments[-1][0] + segments[-1][1])
                in_strip = 0
                if h.reseed:
                    crc = 0xFFFFFFFF
            if not in_strip or unit < strip or not strip:
                yield from batches()
        if strip and in_strip:
            offset = self._check(crc, offset, h.total_blocks)
        yield from batches()
        if out:
            yield out_first, out, out_blocks * bs
        self.end_offset = offset

    def _check(self, crc: int, offset: int, block: int) -> int:
        h = self.header
        raw = _read_exact(self._f, h.checksum_size, offset, "a checksum")
        if h.checksum_mode == CHECKSUM_CRC32:
            (stored,) = struct.unpack("<I", raw)
            if stored != crc:
                raise ImageDamagedError(
                    f"{self.name}: data damaged before byte {offset} "
                    f"(CRC32 mismatch in the blocks before block {block})."
                )
        else:
            self.unchecked_checksums += 1
        return offset + len(raw)


class BlockRanks:
    """The rank of a block among the used ones (how many used blocks come before it).

    A popcount index every 4096 blocks keeps each lookup to at most 512 bytes of
    bitmap.
    """

    STEP = 4096

    def __init__(self, bitmap: bytes | Bitmap) -> None:
        bm = bitmap if isinstance(bitmap, Bitmap) else Bitmap.from_bytes(bitmap)
        self.bitmap = bm
        step = self.STEP // 8
        index = array("Q", [0])
        for piece in bm.pieces:
            steps = -(-len(piece) // step)
            if piece is _ZEROS:
                index.extend([index[-1]] * steps)
            elif piece is _ONES:
                base = index[-1]
                index.extend(range(base + self.STEP, base + self.STEP * steps + 1, self.STEP))
            else:
                for pos in range(0, len(piece), step):
                    count = int.from_bytes(piece[pos : pos + step], "little").bit_count()
                    index.append(index[-1] + count)
        self._index = index

    def used(self, block: int) -> bool:
        return bool(self.bitmap.byte(block >> 3) >> (block & 7) & 1)

    def select(self, rank: int) -> int:
        """The block that is the ``rank``-th used one (the inverse of :meth:`rank`)."""
        chunk = bisect.bisect_right(self._index, rank) - 1
        count = self._index[chunk]
        pos = chunk * (self.STEP // 8)
        bm = self.bitmap
        size = len(bm)
        while pos < size and count + bm.byte(pos).bit_count() <= rank:
            count += bm.byte(pos).bit_count()
            pos += 1
        if pos >= size:
            return size * 8
        byte = bm.byte(pos)
        for bit in range(8):
            if byte >> bit & 1:
                if count == rank:
                    return pos * 8 + bit
                count += 1
        raise AssertionError("unreachable: the byte holds the rank")

    def rank(self, block: int) -> int:
        chunk = block // self.STEP
        lo = chunk * (self.STEP // 8)
        n = (
            self._index[chunk]
            + int.from_bytes(self.bitmap.span(lo, block >> 3), "little").bit_count()
        )
        rest = block & 7
        if rest:
            n += (self.bitmap.byte(block >> 3) & ((1 << rest) - 1)).bit_count()
        return n


def block_offset(header: PartcloneHeader, rank: int) -> int:
    """Stream offset of the ``rank``-th used block (0-based): for random access."""
    cs = header.checksum_size
    strips = rank // header.blocks_per_checksum if cs else 0
    return header.data_start + rank * header.block_size + strips * cs
