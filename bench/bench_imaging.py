#!/usr/bin/env python3
"""Capture / restore / verify speed of rescue against Clonezilla's pipeline, side by side.

Usage (root): bench/bench_imaging.py FIXTURE.img [--runs N] [--work DIR]

FIXTURE.img is the reference disk made by the shared make-fixture.sh (GPT, p1 ext4,
p2 NTFS). For each partition and each run, with the page cache dropped before
every timed command, it measures:

  capture  rescue capture PART DIR           vs  partclone.<fs> -c | zstd -T0 -3
  restore  rescue restore DIR TARGET --yes   vs  zstd -d | partclone.<fs> -r
  verify   rescue verify DIR                 (stream bytes per second)

and prints medians, each against its goal (GOALS below: the speed issue's table)
with the ratio of result to goal. Then whole disks:

  fixture disk   rescue restore of the whole fixture disk against its two
                 partitions restored one by one (the fixed cost of a disk restore)
  small disk     a 1.5 GiB GPT disk with one ext4 holding 700 MiB of files:
                 rescue restore DIR DISK --yes  vs  zstd -d | partclone.ext4 -r
                 of the partition alone

A last part compares a 1 TiB sparse disk with a 4 GiB one holding the same data.
Timings are wall-clock; ratios come from the same run on the same machine. Run it
on a quiet machine: a job on the other core moves the capture ratio by half.
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

GOALS: dict[str, tuple[str, float, str]] = {
    "capture": ("<=", 0.25, "x partclone|zstd"),
    "size": ("<=", 1.01, "x partclone|zstd"),
    "restore": ("<=", 0.25, "x zstd -d|partclone -r"),
    "verify": (">=", 1.2, "GB/s of image"),
    "rss": ("<=", 256, "MiB"),
    "fixture_disk": ("<=", 1.15, "x its partitions one by one"),
    "small_disk": ("<=", 0.35, "x zstd -d|partclone -r of the partition"),
    "sparse": ("<=", 1.5, "x the 4 GiB disk"),
}
"""What each result must reach: (comparison, goal, unit)."""


def against(key: str, value: float) -> str:
    """``value`` with its goal, the ratio of the two, and whether it is met."""
    op, goal, unit = GOALS[key]
    met = value <= goal if op == "<=" else value >= goal
    return f"{value:.3g} {unit} (goal {op} {goal}; {value / goal:.2f} of the goal, " + (
        "met)" if met else "NOT met)"
    )


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
    keys = ("cz_cap", "our_cap", "cz_res", "our_res", "our_ver", "our_ver_s", "our_rss",
            "cz_size", "our_size")  # fmt: skip
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
            res["our_ver_s"].append(t)
            res["our_rss"].append(rss)
    finally:
        detach(target)
        target_img.unlink(missing_ok=True)
    m = {k: median(v) for k, v in res.items() if k != "our_rss"}
    m["our_rss"] = max(res["our_rss"])
    return m


def report(fs: str, m: dict[str, float]) -> None:
    print(f"\n## {fs}")
    print(f"capture: rescue {m['our_cap']:.2f} s, partclone|zstd {m['cz_cap']:.2f} s: "
          + against("capture", m["our_cap"] / m["cz_cap"]))  # fmt: skip
    size = against("size", m["our_size"] / m["cz_size"])
    print(f"image size: rescue {m['our_size'] / MiB:.1f} MiB, partclone|zstd "
          f"{m['cz_size'] / MiB:.1f} MiB: {size}")  # fmt: skip
    print(f"restore: rescue {m['our_res']:.2f} s, zstd -d|partclone -r {m['cz_res']:.2f} s: "
          + against("restore", m["our_res"] / m["cz_res"]))  # fmt: skip
    print(f"verify: {m['our_ver_s']:.2f} s: " + against("verify", m["our_ver"] / 1e9))
    print("peak RSS: " + against("rss", m["our_rss"] / 1024))


def blank_loop(path: Path, size: int) -> str:
    with path.open("wb") as f:
        f.truncate(size)
    return sh(f"losetup -f --show {path}").stdout.strip()


def restore_disk(image: Path, target: str) -> float:
    sh(f"wipefs -a -q {target} || true")
    drop_caches()
    t, _ = timed([*RESCUE, "restore", str(image), target, "--yes"])
    return t


def bench_fixture_disk(loop: str, work: Path, runs: int, parts_s: float) -> None:
    """The whole fixture disk restored, against its partitions restored one by one."""
    image = work / "ours-disk"
    shutil.rmtree(image, ignore_errors=True)
    timed([*RESCUE, "capture", loop, str(image)])
    size = int(sh(f"blockdev --getsize64 {loop}").stdout)
    target = blank_loop(work / "target-disk.img", size)
    try:
        times = [restore_disk(image, target) for _ in range(runs)]
    finally:
        detach(target)
        (work / "target-disk.img").unlink(missing_ok=True)
        shutil.rmtree(image, ignore_errors=True)
    disk_s = median(times)
    print("\n## fixture disk")
    print(f"restore of the whole disk {disk_s:.2f} s, its two partitions one by one "
          f"{parts_s:.2f} s: " + against("fixture_disk", disk_s / parts_s))  # fmt: skip


def bench_small_disk(files: Path, work: Path, runs: int) -> None:
    """A 1.5 GiB GPT disk, one ext4 with 700 MiB of files: a disk restore's fixed cost.

    The filesystem is made and filled as a file of its own, then put in place in
    the disk file (this kernel makes no partition nodes of its own; rescue reads a
    disk's partitions through the disk itself).
    """
    fs_img, disk_img = work / "small-p1.ext4", work / "small.img"
    part_size = 1536 * MiB - 2 * MiB - 64 * 1024
    with fs_img.open("wb") as f:
        f.truncate(part_size)
    sh(f"mkfs.ext4 -q -F {fs_img}")
    mnt = work / "small-mnt"
    mnt.mkdir(exist_ok=True)
    sh(f"mount {fs_img} {mnt}")
    try:
        copied = 0
        for top, _dirs, names in os.walk(files):
            for name in sorted(names):
                src = Path(top) / name
                if copied >= 700 * MiB or src.is_symlink():
                    continue
                dst = mnt / src.relative_to(files)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
                copied += src.stat().st_size
    finally:
        sh(f"umount {mnt}")
    with disk_img.open("wb") as f:
        f.truncate(1536 * MiB)
    sh(f"sgdisk -q -n 1:2048:+{part_size // 512} -t 1:8300 {disk_img}")
    place = "bs=4M seek=1M oflag=seek_bytes conv=sparse,notrunc status=none"
    sh(f"dd if={fs_img} of={disk_img} {place}")
    image = work / "ours-small"
    stream = work / "small-p1.zst"
    loop = attach(disk_img)
    target_img, part_img = work / "small-target.img", work / "small-target-p1.img"
    target = blank_loop(target_img, 1536 * MiB)
    part = blank_loop(part_img, part_size)
    try:
        timed([*RESCUE, "capture", loop, str(image)])
        sh(f"partclone.ext4 -c -s {fs_img} -o - -L /dev/null -q | zstd -T0 -3 -q -c > {stream}")
        ours, theirs = [], []
        for _ in range(runs):
            drop_caches()
            t, _ = timed(
                f"zstd -d -q -c {stream} | partclone.ext4 -r -s - -o {part} -L /dev/null -q"
            )
            theirs.append(t)
            ours.append(restore_disk(image, target))
    finally:
        for dev in (loop, target, part):
            detach(dev)
        for f in (fs_img, disk_img, target_img, part_img, stream):
            f.unlink(missing_ok=True)
        shutil.rmtree(image, ignore_errors=True)
    a, b = median(ours), median(theirs)
    print("\n## small disk (1.5 GiB, ext4 with 700 MiB)")
    print(f"rescue restore of the disk {a:.2f} s, zstd -d|partclone.ext4 -r of its partition "
          f"{b:.2f} s: " + against("small_disk", a / b))  # fmt: skip


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
    print(f"capture 4 GiB disk {times['4GiB']:.2f} s, 1 TiB disk {times['1TiB']:.2f} s: "
          + against("sparse", times["1TiB"] / times["4GiB"]))  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("fixture", type=Path)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--fs", default="ext4,ntfs", help="partitions to measure (ext4, ntfs)")
    ap.add_argument("--no-sparse", action="store_true", help="skip the 1 TiB / 4 GiB comparison")
    ap.add_argument("--no-small", action="store_true", help="skip the 1.5 GiB disk restore")
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
        restored = 0.0
        for n, fs in ((1, "ext4"), (2, "ntfs")):
            if fs in args.fs.split(","):
                m = bench_partition(f"{loop}p{n}", fs, work, args.runs)
                report(fs, m)
                restored += m["our_res"]
        if args.fs == "ext4,ntfs":
            bench_fixture_disk(loop, work, args.runs, restored)
        if args.no_sparse and args.no_small:
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
        if not args.no_small:
            bench_small_disk(data, work, args.runs)
        if not args.no_sparse:
            bench_sparse(work, data)
    finally:
        detach(loop)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
