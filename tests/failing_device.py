"""A block device with unreadable sectors: a read-only loop device over a FUSE file
whose reads fail with EIO in chosen byte ranges (the way TESTBED.md describes).

Run as a script, it is the FUSE server: ``failing_device.py BACKING MOUNTDIR RANGES``
where RANGES is ``start:length,start:length`` in bytes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path


def serve(
    backing: Path, mountdir: Path, ranges: list[tuple[int, int]], gone_at: int | None = None
) -> None:
    os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")
    import mfusepy  # noqa: PLC0415

    size = backing.stat().st_size
    fd = os.open(backing, os.O_RDONLY)

    class Failing(mfusepy.Operations):  # type: ignore[misc]
        use_ns = True

        def getattr(self, path: str, fh: object = None) -> dict[str, int]:
            if path == "/":
                return {"st_mode": stat.S_IFDIR | 0o500, "st_nlink": 2}
            if path == "/disk":
                return {"st_mode": stat.S_IFREG | 0o400, "st_nlink": 1, "st_size": size}
            raise mfusepy.FuseOSError(errno.ENOENT)

        def readdir(self, path: str, fh: object) -> list[str]:
            return [".", "..", "disk"]

        def open(self, path: str, flags: int) -> int:
            return 0

        def read(self, path: str, length: int, offset: int, fh: object) -> bytes:
            if gone_at is not None and offset + length > gone_at:
                raise mfusepy.FuseOSError(errno.ENODEV)  # as reads of an unplugged disk end
            for a, n in ranges:
                if offset < a + n and offset + length > a:
                    raise mfusepy.FuseOSError(errno.EIO)
            return os.pread(fd, length, offset)

    # direct_io: every read reaches this process (no cached pages of a failing disk)
    mfusepy.FUSE(Failing(), str(mountdir), foreground=True, ro=True, direct_io=True)


@contextlib.contextmanager
def failing_file(
    backing: Path, ranges: list[tuple[int, int]], work: Path, *, gone_at: int | None = None
) -> Iterator[Path]:
    """``backing`` served as a file whose reads fail in ``ranges`` (and end at ``gone_at``)."""
    mountdir = work / "failing-fuse"
    mountdir.mkdir(exist_ok=True)
    spec = ",".join(f"{a}:{n}" for a, n in ranges)
    argv = [sys.executable, __file__, str(backing), str(mountdir), spec]
    if gone_at is not None:
        argv.append(str(gone_at))
    proc = subprocess.Popen(argv)
    try:
        deadline = time.monotonic() + 20
        while not (mountdir / "disk").exists():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the failing-device FUSE server did not start")
            time.sleep(0.05)
        yield mountdir / "disk"
    finally:
        subprocess.run(["umount", str(mountdir)], check=False)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def failing_loop(backing: Path, ranges: list[tuple[int, int]], work: Path) -> Iterator[str]:
    """A read-only loop device over ``backing`` whose reads fail in ``ranges``."""
    with failing_file(backing, ranges, work) as disk:
        loop = subprocess.run(
            ["losetup", "-r", "-f", "--show", str(disk)],
            check=True, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
        try:
            yield loop
        finally:
            subprocess.run(["losetup", "-d", loop], check=False)
            for _ in range(50):
                attached = subprocess.run(
                    ["losetup", "-a"], capture_output=True, text=True, check=False
                ).stdout
                if loop not in attached:
                    break
                time.sleep(0.1)


if __name__ == "__main__":
    spans = [tuple(int(x) for x in r.split(":")) for r in sys.argv[3].split(",") if r]
    gone = int(sys.argv[4]) if len(sys.argv) > 4 else None
    serve(Path(sys.argv[1]), Path(sys.argv[2]), [(a, n) for a, n in spans], gone)
