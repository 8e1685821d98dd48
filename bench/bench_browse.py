#!/usr/bin/env python3
"""Browsing speed: how fast an image partition mounts and how fast its files read.

Usage (root): bench/bench_browse.py FIXTURE.img [--runs N] [--work DIR]

FIXTURE.img is the reference disk made by the shared make-fixture.sh (GPT, p1 ext4,
p2 NTFS). The bench captures each partition once, then for each run, with the
page cache dropped first:

  mount       rescue mount IMAGE MNT, wall time until it returns (files readable)
  sequential  every file of 32 MiB or more read through the mount, MB/s; the same
              files read from the source partition mounted directly in the same run,
              for the ratio (the median of the runs' ratios)
  random      2,000 random 4 KiB reads in the largest file: once cold, then again
              after dropping the kernel's caches, so that only the server's cache
              of decoded frames can serve them (mean latency, misses included)

A 1 TiB sparse disk holding a small ext4 filesystem is mounted the same way, to
show that mount time does not follow the partition size. The goals, printed with
each result's ratio to its goal (>= 1.00 is met):

  mount       <= 1 s (every run, and the 1 TiB partition)
  sequential  >= 0.6 x the direct mount of the source partition
  random      <= 100 us per 4 KiB read served from the server's cache

The code measured is the tree this script is in (its folder goes first on
PYTHONPATH of every rescue command it runs).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESCUE = str(ROOT / ".venv" / "bin" / "rescue")
MiB = 1 << 20
GOAL_MOUNT_S = 1.0
GOAL_SEQ_RATIO = 0.6
GOAL_RANDOM_US = 100.0
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, text=True, capture_output=True).stdout


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def partitions(loop: str) -> list[str]:
    sh("partx", "-u", loop)
    out = sh("lsblk", "-lnpo", "NAME,TYPE", loop).split("\n")
    return [line.split()[0] for line in out if line.endswith("part")]


def big_files(root: Path, minimum: int = 32 * MiB) -> list[Path]:
    found = []
    for top, _dirs, files in os.walk(root):
        for name in files:
            p = Path(top) / name
            if not p.is_symlink() and p.stat().st_size >= minimum:
                found.append(p)
    return sorted(found)


def read_all(paths: list[Path]) -> float:
    """MB/s reading ``paths`` whole with 1 MiB reads."""
    total = 0
    buf = bytearray(MiB)
    start = time.perf_counter()
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                total += n
    return total / (time.perf_counter() - start) / 1e6


def random_reads(path: Path, offsets: list[int]) -> float:
    """Mean microseconds of one 4 KiB read at each offset (misses included)."""
    times = []
    fd = os.open(path, os.O_RDONLY)
    try:
        for off in offsets:
            t = time.perf_counter()
            os.pread(fd, 4096, off)
            times.append(time.perf_counter() - t)
    finally:
        os.close(fd)
    return statistics.fmean(times) * 1e6


def mount_time(image: Path, mnt: Path, partition: int | None = None) -> float:
    argv = [RESCUE, "mount", str(image), str(mnt)]
    if partition is not None:
        argv += ["--partition", str(partition)]
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, env=ENV)
    return time.perf_counter() - start


def unmount(mnt: Path) -> None:
    subprocess.run([RESCUE, "unmount", str(mnt)], check=True, capture_output=True, env=ENV)


def bench_partition(part: str, fs: str, work: Path, runs: int) -> dict[str, float]:
    image = work / f"image-{fs}"
    if image.exists():
        shutil.rmtree(image)
    subprocess.run([RESCUE, "capture", part, str(image)], check=True, capture_output=True, env=ENV)
    direct = work / "direct"
    direct.mkdir(exist_ok=True)

    def read_direct() -> float:
        """MB/s of the same files on the source mounted directly (caches dropped first)."""
        if fs == "ntfs":
            sh("ntfs-3g", "-o", "ro", part, str(direct))
        else:
            sh("mount", "-o", "ro,noload", part, str(direct))
        try:
            drop_caches()
            return read_all([direct / r for r in rel])
        finally:
            sh("umount", str(direct))

    if fs == "ntfs":
        sh("ntfs-3g", "-o", "ro", part, str(direct))
    else:
        sh("mount", "-o", "ro,noload", part, str(direct))
    try:
        rel = [p.relative_to(direct) for p in big_files(direct)]
    finally:
        sh("umount", str(direct))
    mnt = work / "mnt"
    mounts, seq, directs, ratios, cold, cached = [], [], [], [], [], []
    rng = random.Random(7)
    for _ in range(runs):
        # the direct read in each run, next to the mount's: the machine's load changes
        directs.append(read_direct())
        drop_caches()
        mounts.append(mount_time(image, mnt))
        try:
            files = [mnt / r for r in rel]
            seq.append(read_all(files))
            ratios.append(seq[-1] / directs[-1])
            unmount(mnt)
            drop_caches()
            mount_time(image, mnt)
            largest = max(files, key=lambda p: p.stat().st_size)
            size = largest.stat().st_size
            offsets = [rng.randrange(0, size - 4096) & ~4095 for _ in range(2000)]
            cold.append(random_reads(largest, offsets))
            drop_caches()  # the kernel forgets; the server's decoded frames remain
            cached.append(random_reads(largest, offsets))
        finally:
            unmount(mnt)
    return {
        "mount_s": statistics.median(mounts),
        "mount_max_s": max(mounts),
        "seq_mbps": statistics.median(seq),
        "direct_mbps": statistics.median(directs),
        "seq_ratio": statistics.median(ratios),
        "rand_cold_us": statistics.median(cold),
        "rand_cached_us": statistics.median(cached),
        "files": len(rel),
    }


def bench_huge(work: Path, runs: int) -> float:
    """Median mount time of a 1 TiB ext4 partition image holding 64 MiB of files."""
    disk = work / "huge.img"
    with disk.open("wb") as f:
        f.truncate(1 << 40)
    sh("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=1,nodiscard", str(disk))
    loop = sh("losetup", "-f", "--show", str(disk)).strip()
    try:
        m = work / "huge-src"
        m.mkdir(exist_ok=True)
        sh("mount", loop, str(m))
        (m / "data.bin").write_bytes(os.urandom(64 * MiB))
        sh("umount", str(m))
        image = work / "image-huge"
        if image.exists():
            shutil.rmtree(image)
        subprocess.run(
            [RESCUE, "capture", loop, str(image)], check=True, capture_output=True, env=ENV
        )
    finally:
        sh("losetup", "-d", loop)
        disk.unlink()
    times = []
    mnt = work / "mnt"
    for _ in range(runs):
        drop_caches()
        times.append(mount_time(image, mnt))
        unmount(mnt)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("fixture", type=Path)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--work", type=Path)
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-browse-"))
    work.mkdir(parents=True, exist_ok=True)
    loop = sh("losetup", "-f", "--show", "-r", str(args.fixture)).strip()
    results = {}
    try:
        parts = partitions(loop)
        for part, fs in zip(parts, ("ext4", "ntfs"), strict=False):
            results[fs] = bench_partition(part, fs, work, args.runs)
    finally:
        subprocess.run(["partx", "-d", loop], check=False)
        subprocess.run(["losetup", "-d", loop], check=False)
    huge = bench_huge(work, args.runs)
    print(f"runs: {args.runs} (medians)")
    print(
        f"{'fs':6} {'mount s':>8} {'max':>6} {'seq MB/s':>9} {'direct':>7} {'ratio':>6} "
        f"{'rand cold us':>13} {'rand cached us':>15}"
    )
    for fs, r in results.items():
        print(
            f"{fs:6} {r['mount_s']:8.2f} {r['mount_max_s']:6.2f} {r['seq_mbps']:9.0f} "
            f"{r['direct_mbps']:7.0f} {r['seq_ratio']:6.2f} "
            f"{r['rand_cold_us']:13.0f} {r['rand_cached_us']:15.0f}"
        )
    print(f"1 TiB ext4 partition image: mount {huge:.2f} s")
    print(goals(results, huge))


def goals(results: dict[str, dict[str, float]], huge: float) -> str:
    """Each result against its goal: the ratio (>= 1.00 meets it) and met / NOT met."""
    rows = [f"{'goal':44} {'result':>10} {'to goal':>8}"]
    every = True

    def row(what: str, value: str, ratio: float) -> None:
        nonlocal every
        every &= ratio >= 1.0
        rows.append(f"{what:44} {value:>10} {ratio:7.2f}x {'met' if ratio >= 1.0 else 'NOT met'}")

    for fs, r in results.items():
        row(f"{fs} mount <= {GOAL_MOUNT_S:.0f} s (slowest run)", f"{r['mount_max_s']:.2f} s",
            GOAL_MOUNT_S / r["mount_max_s"])  # fmt: skip
        seq = r["seq_ratio"]
        row(f"{fs} sequential >= {GOAL_SEQ_RATIO} x direct", f"{seq:.2f} x", seq / GOAL_SEQ_RATIO)
        row(f"{fs} random cached <= {GOAL_RANDOM_US:.0f} us", f"{r['rand_cached_us']:.0f} us",
            GOAL_RANDOM_US / r["rand_cached_us"])  # fmt: skip
    row(f"1 TiB mount <= {GOAL_MOUNT_S:.0f} s", f"{huge:.2f} s", GOAL_MOUNT_S / huge)
    rows.append("goals: " + ("all met" if every else "NOT all met"))
    return "\n".join(rows)


if __name__ == "__main__":
    main()
