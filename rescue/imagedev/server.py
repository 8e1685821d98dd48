"""The FUSE server: one image partition as one file (read-only, or copy-on-write).

Run as its own process (``python -m rescue.imagedev.server STATE_DIR``) so that
the mount outlives the command that made it. ``STATE_DIR/spec.json`` says what
to serve (see :class:`rescue.browse.mounts.ServerSpec`); the server mounts a
FUSE filesystem on ``STATE_DIR/fuse`` holding the single file ``partition``,
writes ``ready`` on the file descriptor given by ``--ready-fd`` once the kernel
has connected, and serves reads until the FUSE mount is unmounted.

With an overlay in the spec (see :mod:`rescue.imagedev.overlay`) the file can
be written; the writes go to a scratch file, never to the image, and a second
file, ``written``, holds the map of the 4 KiB blocks written so far.

A read that touches a damaged part of the image fails with EIO and leaves a
line in ``STATE_DIR/server.log`` naming the partition bytes and the image
damage; every other read goes on working.

This is the only module that imports :mod:`mfusepy`.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import logging
import os
import stat
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from rescue.blockio import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE
from rescue.containers.base import Volume, binary_view
from rescue.containers.keys import decode_from_pipe
from rescue.containers.stack import choose_volume, volumes_inside
from rescue.errors import BadInputError, RescueError
from rescue.image.sealing import PIPE_KEY_BYTES, Sealer, unlock_folder
from rescue.imagedev.overlay import Overlay
from rescue.imagedev.spec import PARTITION_FILE, WRITTEN_FILE, ServerSpec

os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")  # mfusepy picks libfuse 2 without this

import mfusepy

log = logging.getLogger("rescue.imagedev.server")

_READAHEAD = 1 << 20
MAX_SECRET = 1 << 20


class Served(Protocol):
    """What the file serves: the partition, or a volume inside it."""

    size: int

    def pread(self, offset: int, length: int) -> bytes: ...

    def close(self) -> None: ...


@runtime_checkable
class Pieces(Protocol):
    """A served partition that can give its bytes as pieces to copy, not joined first."""

    def pieces(self, offset: int, length: int) -> list[bytes | memoryview]: ...


class _Partition:
    """The served partition as a volume, for the layer readers."""

    name = "partition"

    def __init__(self, reader: Served) -> None:
        self.size = reader.size
        self._reader = reader

    def pread(self, offset: int, size: int) -> bytes:
        return self._reader.pread(offset, size)

    def outer_ranges(self, offset: int, length: int) -> Iterator[tuple[int, int]]:
        yield offset, length


class _InnerVolume:
    """An unlocked volume or an LV inside the served partition, read through its layers."""

    def __init__(self, reader: Served, volume: Volume) -> None:
        self._reader = reader
        self._volume = volume
        self.size: int = volume.size

    def pread(self, offset: int, length: int) -> bytes:
        return bytes(self._volume.pread(offset, length))

    def close(self) -> None:
        self._reader.close()


def _keys_from_stdin(spec: ServerSpec) -> bytes:
    """What the mounting command wrote to the pipe: the image's key first (an encrypted
    image: the folder is unlocked with it), then the inner volume's secret. Read once;
    the keys stay in this process's memory only."""
    if not (spec.sealed or spec.inner):
        return b""
    data = sys.stdin.buffer.read(MAX_SECRET)
    if spec.sealed:
        unlock_folder(spec.stream.parent, Sealer.from_pipe(data[:PIPE_KEY_BYTES]))
        data = data[PIPE_KEY_BYTES:]
    return data


def _inner_volume(reader: Served, spec: ServerSpec, framed: bytes) -> Served:
    """The volume ``spec`` names inside the partition, unlocked with ``framed`` (the
    secret the mounting command sent)."""
    secret = decode_from_pipe(framed)
    try:
        whole = _Partition(reader)
        volumes = volumes_inside(binary_view(whole), whole.size, secret)
        if not volumes:
            raise BadInputError("The partition holds no volume layer to open.")
        volume = choose_volume(volumes, spec.volume, "The partition")
    except BaseException:
        reader.close()
        raise
    return _InnerVolume(reader, volume)


@contextlib.contextmanager
def _overlay_errors(what: str, offset: int) -> Iterator[None]:
    """A failed change to the overlay as the errno the loop device above expects, logged."""
    try:
        yield
    except RescueError as exc:  # the image under a partly written block is damaged
        log.error("%s at partition byte %d: %s", what, offset, exc.message)
        raise mfusepy.FuseOSError(errno.EIO) from exc
    except OSError as exc:
        log.error("%s at partition byte %d: %s", what, offset, exc)
        raise mfusepy.FuseOSError(exc.errno or errno.EIO) from exc


class PartitionFile(mfusepy.Operations):  # type: ignore[misc]
    """A directory with one file: the partition (writable only with an overlay)."""

    use_ns = True

    def __init__(self, spec: ServerSpec, ready_fd: int | None) -> None:
        from rescue.imagedev.index import open_reader  # noqa: PLC0415

        self._spec = spec
        framed = _keys_from_stdin(spec)
        self._reader: Served = open_reader(spec)
        if spec.inner:
            self._reader = _inner_volume(self._reader, spec, framed)
        self._overlay: Overlay | None = None
        self.pieces: Pieces | None = None
        """Where reads of the partition come from as pieces (only the plain partition)."""
        if not spec.inner and spec.overlay is None and isinstance(self._reader, Pieces):
            self.pieces = self._reader
        if spec.overlay is not None:
            try:
                self._overlay = Overlay.create(self._reader, spec.overlay)
            except OSError as exc:
                self._reader.close()
                raise RescueError(f"Cannot make the scratch file {spec.overlay}: {exc}.") from exc
        self._ready_fd = ready_fd
        self._uid = os.getuid()
        self._gid = os.getgid()
        self._now = int(time.time() * 1e9)
        self._errors = 0
        self._errors_lock = threading.Lock()

    def init_with_config(self, conn: Any, config: Any) -> None:
        if conn is not None:
            # larger requests than the 128 KiB default (the kernel caps them at its own limit)
            conn.max_readahead = _READAHEAD
            if hasattr(conn, "max_read"):
                conn.max_read = _READAHEAD  # must equal the max_read mount option
        if self._ready_fd is not None:
            os.write(self._ready_fd, b"ready\n")
            os.close(self._ready_fd)
            self._ready_fd = None
        log.info("serving %s (%d bytes)", self._spec.stream, self._reader.size)

    def getattr(self, path: str, fh: Any = None) -> dict[str, int]:
        base = {
            "st_uid": self._uid,
            "st_gid": self._gid,
            "st_atime": self._now,
            "st_mtime": self._now,
            "st_ctime": self._now,
        }
        if path == "/":
            return {**base, "st_mode": stat.S_IFDIR | 0o500, "st_nlink": 2}
        if path == "/" + PARTITION_FILE:
            return {
                **base,
                "st_mode": stat.S_IFREG | (0o600 if self._overlay else 0o400),
                "st_nlink": 1,
                "st_size": self._reader.size,
                "st_blocks": (self._reader.size + 511) // 512,
            }
        if path == "/" + WRITTEN_FILE and self._overlay is not None:
            size = len(self._overlay.written_map())
            return {**base, "st_mode": stat.S_IFREG | 0o400, "st_nlink": 1, "st_size": size}
        raise mfusepy.FuseOSError(errno.ENOENT)

    def readdir(self, path: str, fh: Any) -> list[str]:
        if path != "/":
            raise mfusepy.FuseOSError(errno.ENOTDIR)
        return [".", "..", PARTITION_FILE, *([WRITTEN_FILE] if self._overlay else [])]

    def open(self, path: str, flags: int) -> int:
        if path == "/" + WRITTEN_FILE and self._overlay is not None:
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
                raise mfusepy.FuseOSError(errno.EROFS)
            return 0
        if path != "/" + PARTITION_FILE:
            raise mfusepy.FuseOSError(errno.ENOENT)
        if flags & (os.O_TRUNC | os.O_APPEND) or (
            flags & (os.O_WRONLY | os.O_RDWR) and self._overlay is None
        ):
            raise mfusepy.FuseOSError(errno.EROFS)
        return 0

    def write(self, path: str, data: bytes, offset: int, fh: Any) -> int:
        if self._overlay is None:
            raise mfusepy.FuseOSError(errno.EROFS)
        with _overlay_errors("write", offset):
            return self._overlay.pwrite(offset, data)

    def fallocate(self, path: str, mode: int, offset: int, size: int, fh: Any) -> int:
        """Discard and write-zeroes requests of the loop device over this file (a resizer's
        zeroing of inode tables, say): the range reads as zeros from then on."""
        if self._overlay is None or path != "/" + PARTITION_FILE:
            raise mfusepy.FuseOSError(errno.EROFS)
        zeroing = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE
        if mode & ~(zeroing | FALLOC_FL_KEEP_SIZE):
            raise mfusepy.FuseOSError(errno.EOPNOTSUPP)
        if offset < 0 or size <= 0 or offset + size > self._reader.size:
            raise mfusepy.FuseOSError(errno.ENOSPC)  # the partition keeps its size
        if not mode & zeroing:
            return 0  # space inside the partition is always there
        with _overlay_errors("zeroing", offset):
            self._overlay.zero(offset, size)
        return 0

    def truncate(self, path: str, length: int, fh: Any = None) -> int:
        if length != self._reader.size:
            raise mfusepy.FuseOSError(errno.EPERM)  # the partition keeps its size
        return 0

    def fsync(self, path: str, datasync: int, fh: Any) -> int:
        return 0  # scratch data: it only has to outlive the job, not a power cut

    def read(self, path: str, size: int, offset: int, fh: Any) -> bytes:
        if path == "/" + WRITTEN_FILE and self._overlay is not None:
            return self._overlay.written_map()[offset : offset + size]
        try:
            if self._overlay is not None:
                return self._overlay.pread(offset, size)
            return self._reader.pread(offset, size)
        except (RescueError, OSError) as exc:
            raise self._read_error(exc, offset, size) from exc

    def read_into(self, buf: memoryview, offset: int) -> int:
        """Fill ``buf`` with the partition's bytes at ``offset``, each byte copied once
        from the decoded frames; returns how many (fewer only at the end)."""
        assert self.pieces is not None
        try:
            pos = 0
            for piece in self.pieces.pieces(offset, len(buf)):
                n = len(piece)
                buf[pos : pos + n] = piece
                pos += n
        except (RescueError, OSError) as exc:
            raise self._read_error(exc, offset, len(buf)) from exc
        return pos

    def _read_error(self, exc: Exception, offset: int, size: int) -> mfusepy.FuseOSError:
        if isinstance(exc, RescueError):
            with self._errors_lock:
                self._errors += 1
            log.error(
                "read error in partition bytes %d-%d: %s (%s)",
                offset,
                offset + size - 1,
                exc.message,
                self._spec.stream,
            )
            return mfusepy.FuseOSError(errno.EIO)
        log.error("read error in partition bytes %d-%d: %s", offset, offset + size - 1, exc)
        return mfusepy.FuseOSError(getattr(exc, "errno", None) or errno.EIO)

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": 0, "f_bfree": 0, "f_bavail": 0}

    def destroy(self, path: str) -> None:
        if self._overlay is not None:
            log.info("unmounted; %d blocks were written", self._overlay.written_blocks)
            self._overlay.close()
        else:
            self._reader.close()
        log.info("unmounted; %d read errors served", self._errors)


_PARTITION_PATH = b"/" + PARTITION_FILE.encode()


class _FUSE(mfusepy.FUSE):  # type: ignore[misc]
    """mfusepy with reads of the partition copied straight into libfuse's reply buffer
    (mfusepy's own read wants one ``bytes`` object, which it copies again)."""

    def read(self, path: bytes | None, buf: Any, size: int, offset: int, fip: Any) -> int:
        ops: PartitionFile = self.operations
        if ops.pieces is None or path != _PARTITION_PATH:
            return int(super().read(path, buf, size, offset, fip))
        address = ctypes.cast(buf, ctypes.c_void_p).value
        assert address is not None
        view = memoryview((ctypes.c_char * size).from_address(address)).cast("B")
        return ops.read_into(view, offset)


def serve(state_dir: Path, ready_fd: int | None) -> int:
    spec = ServerSpec.load(state_dir)
    try:
        ops = PartitionFile(spec, ready_fd)
    except RescueError as exc:
        log.error("cannot open the image: %s", exc.message)
        print(f"rescue: {exc.message}", file=sys.stderr)
        return exc.exit_code
    _FUSE(
        ops,
        str(state_dir / "fuse"),
        foreground=True,
        ro=spec.overlay is None,
        fsname=f"rescue-image:{spec.stream.name}",
        subtype="rescue",
        default_permissions=True,
        kernel_cache=True,
        max_read=_READAHEAD,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rescue.imagedev.server")
    parser.add_argument("state_dir", type=Path)
    parser.add_argument("--ready-fd", type=int)
    args = parser.parse_args(argv)
    logging.basicConfig(
        filename=str(args.state_dir / "server.log"),
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    return serve(args.state_dir, args.ready_fd)


if __name__ == "__main__":
    sys.exit(main())
