#!/usr/bin/env python3
"""Capture / restore / verify speed of rescue against Clonezilla's pipeline, side by side.

Usage (root): bench/bench_imaging.py FIXTURE.img [--runs N] [--work DIR]

FIXTURE.img is the reference disk made by the shared make-fixture.sh (GPT, p1 ext4,
p2 NTFS). For each partition and each run, with the page cache dropped before
every timed command, it measures:

  capture  rescue capture PART DIR           vs  partclone.<fs> -c | zstd -T0 -3
  restore  rescue restore DIR TARGET --yes   vs  zstd -d | partclone.<fs> -r
  verify   rescue verify DIR                 (stream bytes per second)

and prints medians and the ratios the imaging issue sets (capture <= 0.33x,
image size <= 1.01x, restore <= 0.4x, verify >= 1 GB/s, peak RSS <= 256 MiB).
A second part compares a 1 TiB sparse disk with a 4 GiB one holding the same data.
Timings are wall-clock; ratios come from the same run on the same machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESCUE = [str(ROOT / ".venv" / "bin" / "rescue")]
MiB = 1 << 20


def sh(cmd: str, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", cmd], check=True, text=True, capture_output=True, **kw)


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def timed(argv: list[str] | str) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB, largest process of the command) of one command."""
    if isinstance(argv, str):
        argv = ["bash", "-c", f"set -o pipefail; {argv}"]
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {argv}\n{err}")
    return wall, usage.ru_maxrss


def attach(img: Path) -> str:
    loop = sh(f"losetup -fP --show {img}").stdout.strip()
    sh(f"partx -u {loop} || true; udevadm settle || true")
    return loop


def detach(loop: str) -> None:
    subprocess.run(["partx", "-d", loop], capture_output=True, check=False)
    subprocess.run(["losetup", "-d", loop], capture_output=True, check=False)


def dir_size(d: Path) -> int:
    return sum(p.stat().st_size for p in d.iterdir() if p.is_file() and "ptcl-img" in p.name)


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def bench_partition(part: str, fs: str, work: Path, runs: int) -> dict[str, float]:
    pc = f"partclone.{fs}"
    size = int(sh(f"blockdev --getsize64 {part}").stdout)
    target_img = work / f"target-{fs}.img"
    with target_img.open("wb") as f:
        f.truncate(size)
    target = sh(f"losetup -f --show {target_img}").stdout.strip()
    keys = ("cz_cap", "our_cap", "cz_res", "our_res", "our_ver", "our_rss", "cz_size", "our_size")
    res: dict[str, list[float]] = {k: [] for k in keys}
    try:
        for _ in range(runs):
            out = work / f"cz-{fs}.zst"
            drop_caches()
            t, _rss = timed(
                f"{pc} -z 10485760 -c -s {part} -o - -L /dev/null -q | zstd -T0 -3 -q -c > {out}"
            )
            res["cz_cap"].append(t)
            res["cz_size"].append(out.stat().st_size)
            img = work / f"ours-{fs}"
            shutil.rmtree(img, ignore_errors=True)
            drop_caches()
            t, rss = timed([*RESCUE, "capture", part, str(img)])
            res["our_cap"].append(t)
            res["our_rss"].append(rss)
            res["our_size"].append(dir_size(img))
            drop_caches()
            t, _ = timed(f"zstd -d -q -c {out} | {pc} -r -s - -o {target} -L /dev/null -q")
            res["cz_res"].append(t)
            drop_caches()
            t, rss = timed([*RESCUE, "restore", str(img), target, "--yes"])
            res["our_res"].append(t)
            res["our_rss"].append(rss)
            drop_caches()
            t, rss = timed([*RESCUE, "verify", str(img)])
            res["our_ver"].append(dir_size(img) / t)
            res["our_rss"].append(rss)
    finally:
        detach(target)
        target_img.unlink(missing_ok=True)
    m = {k: median(v) for k, v in res.items() if k != "our_rss"}
    m["our_rss"] = max(res["our_rss"])
    return m


def report(fs: str, m: dict[str, float]) -> None:
    print(f"\n## {fs}")
    print(f"capture: rescue {m['our_cap']:.2f} s, partclone|zstd {m['cz_cap']:.2f} s, "
          f"ratio {m['our_cap'] / m['cz_cap']:.2f} (goal <= 0.33)")  # fmt: skip
    print(f"image size: rescue {m['our_size'] / MiB:.1f} MiB, partclone|zstd "
          f"{m['cz_size'] / MiB:.1f} MiB, "
          f"ratio {m['our_size'] / m['cz_size']:.3f} (goal <= 1.01)")  # fmt: skip
    print(f"restore: rescue {m['our_res']:.2f} s, zstd -d|partclone -r {m['cz_res']:.2f} s, "
          f"ratio {m['our_res'] / m['cz_res']:.2f} (goal <= 0.4)")  # fmt: skip
    print(f"verify: {m['our_ver'] / 1e9:.2f} GB/s of stream (goal >= 1)")
    print(f"peak RSS: {m['our_rss'] / 1024:.0f} MiB (goal <= 256)")


def bench_sparse(work: Path, data: Path) -> None:
    """Same files on a 4 GiB and a 1 TiB ext4 disk: time should follow used data."""
    times = {}
    for label, size in (("4GiB", "4G"), ("1TiB", "1T")):
        img = work / f"sparse-{label}.img"
        sh(
            f"truncate -s {size} {img} && "
            f"mkfs.ext4 -q -F -E lazy_itable_init=1,nodiscard -d {data} {img}"
        )
        out = work / f"sparse-{label}-img"
        shutil.rmtree(out, ignore_errors=True)
        drop_caches()
        times[label], _ = timed([*RESCUE, "capture", str(img), str(out)])
        shutil.rmtree(out, ignore_errors=True)
        img.unlink()
    print("\n## sparse disk, same data")
    print(f"capture 4 GiB disk {times['4GiB']:.2f} s, 1 TiB disk {times['1TiB']:.2f} s, "
          f"ratio {times['1TiB'] / times['4GiB']:.2f} (goal <= 1.5)")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("fixture", type=Path)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--fs", default="ext4,ntfs", help="partitions to measure (ext4, ntfs)")
    ap.add_argument("--no-sparse", action="store_true", help="skip the 1 TiB / 4 GiB comparison")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root (loop devices, drop_caches)", file=sys.stderr)
        return 2
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)  # a folder that does not exist yet is made
    work = Path(tempfile.mkdtemp(prefix="rescue-bench-", dir=args.work))
    loop = attach(args.fixture)
    try:
        print(f"# rescue imaging benchmark, {args.runs} run(s) each, caches dropped")
        for n, fs in ((1, "ext4"), (2, "ntfs")):
            if fs in args.fs.split(","):
                report(fs, bench_partition(f"{loop}p{n}", fs, work, args.runs))
        if args.no_sparse:
            return 0
        data = work / "data"
        data.mkdir()
        mnt = work / "mnt"
        mnt.mkdir()
        sh(f"mount -o ro {loop}p1 {mnt}")
        try:
            sh(f"cp -a {mnt}/. {data}/ && du -sm {data}")
        finally:
            sh(f"umount {mnt}")
        bench_sparse(work, data)
    finally:
        detach(loop)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
