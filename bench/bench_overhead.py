#!/usr/bin/env python3
"""What a change costs a capture of a healthy disk: this checkout against a git revision.

Usage (root): bench/bench_overhead.py FIXTURE.img --base REV [--runs N] [--part 1]

Both versions capture the same partition of the reference fixture, alternately,
with the page cache dropped before each run; the script prints the median wall
time of each and their ratio (this checkout / base). It was written to check
that the failing-disk handling (read-error tracking, checkpoints of a resumable
capture) costs at most 5% on a healthy disk.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def capture_seconds(pythonpath: Path, part: str, out: Path) -> float:
    if out.exists():
        shutil.rmtree(out)
    drop_caches()
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    start = time.perf_counter()
    subprocess.run(
        [str(ROOT / ".venv" / "bin" / "python"), "-m", "rescue", "capture", part, str(out),
         "--json"],
        check=True, stdout=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("fixture", type=Path)
    ap.add_argument("--base", required=True, help="git revision to compare with")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--part", type=int, default=1, help="partition number (1: ext4, 2: NTFS)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    base = work / "base"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), args.base],
                   check=True, capture_output=True)  # fmt: skip
    loop = subprocess.run(["losetup", "-f", "--show", "-r", "-P", str(args.fixture)],
                          check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    subprocess.run(["partx", "-u", loop], check=False)
    part = f"{loop}p{args.part}"
    try:
        here, there = [], []
        for _ in range(args.runs):
            here.append(capture_seconds(ROOT, part, work / "img-here"))
            there.append(capture_seconds(base, part, work / "img-base"))
        a, b = statistics.median(here), statistics.median(there)
        print(f"partition {args.part}, {args.runs} runs each, medians:")
        print(f"  this checkout   {a:6.2f} s  {sorted(round(x, 2) for x in here)}")
        print(f"  {args.base:<15} {b:6.2f} s  {sorted(round(x, 2) for x in there)}")
        print(f"  ratio {a / b:.3f} (goal <= 1.05)")
    finally:
        subprocess.run(["partx", "-d", loop], check=False)
        subprocess.run(["losetup", "-d", loop], check=False)
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)],
                       check=False)  # fmt: skip
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
