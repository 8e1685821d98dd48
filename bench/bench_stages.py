#!/usr/bin/env python3
"""Where the time of an image job goes: the CPU cost of each stage, alone, per partition.

Usage (root): bench/bench_stages.py FIXTURE.img [--part 1] [--rounds 3]

For one partition of the reference fixture it runs each stage of capture, restore
and verify by itself, in this process, and prints its wall and CPU seconds (the
smallest of ``--rounds``): reading the used blocks (page cache dropped first),
the CRC32 of the partclone stream (ISA-L, and zlib for comparison), zstd level 3
compression of the stream's 4 MiB frames on one core, their decompression, the
SHA-256 of the compressed stream, and the copy of the compressed bytes into the
aligned buffer of the O_DIRECT writer. The sum of the CPU columns divided by the
cores is the floor of a job that overlaps every stage perfectly; the wall of the
read is the floor set by the disk.
"""

from __future__ import annotations

import argparse
import hashlib
import mmap
import os
import resource
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import zstandard  # noqa: E402

from rescue.copier import Extent, _frame_buffers, _Reader, _Start  # noqa: E402
from rescue.filesystems.detect import allocation_for  # noqa: E402
from rescue.image.partclone import PartcloneHeader, crc32, stream_prefix  # noqa: E402

MiB = 1 << 20
FRAME = 4 * MiB


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def measure(fn: Callable[[], object], rounds: int, cold: bool = False) -> tuple[float, float]:
    """Smallest wall and CPU seconds of ``fn`` over ``rounds``."""
    walls, cpus = [], []
    for _ in range(rounds):
        if cold:
            drop_caches()
        c, t = cpu(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t)
        cpus.append(cpu() - c)
    return min(walls), min(cpus)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("fixture", type=Path)
    ap.add_argument("--part", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    loop = subprocess.run(["losetup", "-f", "--show", "-r", "-P", str(args.fixture)],
                          check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    subprocess.run(["partx", "-u", loop], check=False)
    part = f"{loop}p{args.part}"
    fd = os.open(part, os.O_RDONLY)
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        with os.fdopen(os.dup(fd), "rb") as f:
            alloc = allocation_for(f, size)
        prefix = stream_prefix(alloc)
        header = PartcloneHeader.unpack(prefix[:110])
        frames: list[bytes] = []

        def read(keep: bool = False) -> None:
            free = _frame_buffers(FRAME, 2)
            reader = _Reader(
                Extent(fd, part, 0, size), alloc, None, header=header, prefix=prefix,
                frames=(FRAME, free), start=_Start(stream_pos=len(prefix)),
            )  # fmt: skip
            reader.start()
            while (item := reader.out.get()) is not None:
                assert not isinstance(item, BaseException), item
                for buf, n in item.frames:
                    if keep:
                        frames.append(bytes(buf[:n]))
                    free.put(buf)
            reader.join()

        rows = [("read used blocks, checksums placed (cold)", *measure(read, args.rounds, True))]
        read(keep=True)  # the stream, in memory, for the other stages
        stream_bytes = sum(len(f) for f in frames)
        rows.append(("CRC32, ISA-L", *measure(lambda: [crc32(f) for f in frames], args.rounds)))
        rows.append(("CRC32, zlib", *measure(lambda: [zlib.crc32(f) for f in frames], args.rounds)))
        cctx = zstandard.ZstdCompressor(level=3, write_checksum=True, write_content_size=True)
        packed: list[bytes] = []
        rows.append(("zstd -3, 4 MiB frames, one core", *measure(
            lambda: packed.__setitem__(slice(None), [cctx.compress(f) for f in frames]),
            args.rounds)))  # fmt: skip
        dctx = zstandard.ZstdDecompressor()
        decode = measure(lambda: [dctx.decompress(p) for p in packed], args.rounds)
        rows.append(("zstd decompression, one core", *decode))
        digest = measure(lambda: [hashlib.sha256(p).digest() for p in packed], args.rounds)
        rows.append(("SHA-256 of the compressed stream", *digest))
        buf = mmap.mmap(-1, 8 * MiB)

        def copy() -> None:
            for p in packed:
                buf[: len(p)] = p

        rows.append(("copy into the O_DIRECT buffer", *measure(copy, args.rounds)))
        image_bytes = sum(len(p) for p in packed)
    finally:
        os.close(fd)
        subprocess.run(["partx", "-d", loop], check=False)
        subprocess.run(["losetup", "-d", loop], check=False)
    print(f"partition {args.part}: {alloc.used_bytes / 1e9:.2f} GB used, stream "
          f"{stream_bytes / 1e9:.2f} GB, image {image_bytes / 1e9:.2f} GB; smallest of "
          f"{args.rounds}")  # fmt: skip
    print(f"{'stage':45} {'wall s':>7} {'CPU s':>7}")
    for name, wall, cpu_s in rows:
        print(f"{name:45} {wall:7.2f} {cpu_s:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
