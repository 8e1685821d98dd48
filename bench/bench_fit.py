#!/usr/bin/env python3
"""What shrinking onto a smaller disk costs, against a plain restore of the same image.

Usage (root): bench/bench_fit.py FIXTURE.img [--runs N] [--spare PERCENT]

Captures the reference fixture's disk once, then restores the image, alternately:
with ``--layout keep`` onto a disk file as large as the fixture, and with
``--layout fit`` onto a disk file only ``--spare`` percent (default 10) larger
than the smallest disk the image fits on (the size the refusal names). Both
targets are disk files on the same filesystem; the page cache is dropped before
each run. Prints the smallest disk, the median wall time of each restore and
their ratio (fit / keep).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESCUE = [str(ROOT / ".venv" / "bin" / "python"), "-m", "rescue"]
MiB = 1 << 20


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def blank(path: Path, size: int) -> None:
    path.unlink(missing_ok=True)
    with path.open("wb") as f:
        f.truncate(size)


def restore_seconds(image: Path, target: Path, size: int, layout: str) -> float:
    blank(target, size)
    drop_caches()
    start = time.perf_counter()
    subprocess.run(
        [*RESCUE, "restore", str(image), str(target), "--yes", "--layout", layout, "--json"],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("fixture", type=Path)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--spare", type=float, default=10.0)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-fit-", dir=args.fixture.parent))
    try:
        image = work / "image"
        subprocess.run([*RESCUE, "capture", str(args.fixture), str(image), "--json"],
                       check=True, stdout=subprocess.DEVNULL)  # fmt: skip
        probe = work / "probe.img"
        blank(probe, 64 * MiB)
        refused = subprocess.run([*RESCUE, "restore", str(image), str(probe), "--yes"],
                                 capture_output=True, text=True, check=False)  # fmt: skip
        m = re.search(r"at least (\d+) bytes", refused.stderr)
        if refused.returncode != 2 or m is None:
            raise SystemExit(f"expected a refusal naming the minimum: {refused.stderr}")
        least = int(m.group(1))
        full = args.fixture.stat().st_size
        small = (int(least * (1 + args.spare / 100)) // MiB + 1) * MiB
        keep, fit = [], []
        for _ in range(args.runs):
            keep.append(restore_seconds(image, work / "keep.img", full, "keep"))
            fit.append(restore_seconds(image, work / "fit.img", small, "fit"))
        a, b = statistics.median(fit), statistics.median(keep)
        print(f"source disk {full // MiB} MiB; smallest target named by the refusal "
              f"{least // MiB} MiB; fit target {small // MiB} MiB")  # fmt: skip
        print(f"{args.runs} runs each, medians:")
        print(f"  keep onto {full // MiB} MiB  {b:6.2f} s  {sorted(round(x, 2) for x in keep)}")
        print(f"  fit onto {small // MiB} MiB   {a:6.2f} s  {sorted(round(x, 2) for x in fit)}")
        print(f"  ratio fit / keep {a / b:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
