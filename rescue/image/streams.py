"""The read side of stored streams: decompressed chunks of a stream, split or not.

Verify, restore, browse and the image model read streams through here; the
capture pipeline (:mod:`rescue.copier`) only writes them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from rescue.blockio import binary
from rescue.errors import ImageDamagedError
from rescue.image.seekable import iter_decompressed, iter_decompressed_gzip
from rescue.image.volumes import VolumeReader, volume_paths

MiB = 1 << 20


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
