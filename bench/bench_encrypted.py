#!/usr/bin/env python3
"""An encrypted image against a plain one: capture, verify and restore, alternately.

Usage (root): bench/bench_encrypted.py FIXTURE.img [--runs N] [--part N] [--work DIR]

FIXTURE.img is the reference disk (``../shared/bench/make-fixture.sh``). One of its
partitions (``--part``, default 1: ext4) is captured with ``rescue capture`` into a
plain image and with ``--encrypt`` into an encrypted one, alternately, the page
cache dropped before each run; each image is then verified (the encrypted one
with its passphrase: every chunk authenticated) and restored onto a blank file of
the partition's size. Printed: each run's wall seconds, the medians, the ratio of
each encrypted job's time to the plain one's, and the image sizes. The code
measured is the tree this script is in.
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
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
PASSPHRASE = "bench passphrase, not a secret\n"


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, text=True, capture_output=True).stdout


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def timed(*args: str) -> float:
    drop_caches()
    start = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "rescue", *args, "--json"], capture_output=True,
                         text=True, env=ENV, stdin=subprocess.DEVNULL, check=False)  # fmt: skip
    took = time.monotonic() - start
    if res.returncode != 0:
        raise SystemExit(f"rescue {' '.join(args)} failed: {res.stderr.strip()[-500:]}")
    return took


def size_of(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("fixture", type=Path)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--part", type=int, default=1)
    ap.add_argument("--work", type=Path, default=None, help="a folder for the images (made)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root (loop devices, drop_caches)", file=sys.stderr)
        return 2
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="rescue-bench-enc-", dir=args.work))
    passfile = work / "pass.txt"
    passfile.write_text(PASSPHRASE)
    loop = sh("losetup", "-fP", "--show", "-r", str(args.fixture)).strip()
    target = ""
    try:
        subprocess.run(["partx", "-u", loop], check=False, capture_output=True)
        part = f"{loop}p{args.part}"
        size = int(sh("blockdev", "--getsize64", part))
        blank = work / "target.img"
        with blank.open("wb") as f:
            f.truncate(size)
        target = sh("losetup", "-f", "--show", str(blank)).strip()
        key = ("--image-passphrase-file", str(passfile))
        times: dict[str, list[float]] = {}
        sizes: dict[str, int] = {}
        for run in range(args.runs):
            for kind, extra in (("plain", ()), ("encrypted", ("--encrypt", *key))):
                image = work / kind
                shutil.rmtree(image, ignore_errors=True)
                opened = key if kind == "encrypted" else ()
                row = {
                    "capture": timed("capture", part, str(image), *extra),
                    "verify": timed("verify", str(image), *opened),
                    "restore": timed("restore", str(image), target, "--yes", *opened),
                }
                sizes[kind] = size_of(image)
                for job, took in row.items():
                    times.setdefault(f"{kind} {job}", []).append(took)
                print(f"run {run + 1} {kind:9}: "
                      + ", ".join(f"{job} {took:.2f} s" for job, took in row.items()))  # fmt: skip
        print(f"\n# partition {args.part} ({part}), medians of {args.runs}")
        for job in ("capture", "verify", "restore"):
            plain = statistics.median(times[f"plain {job}"])
            sealed = statistics.median(times[f"encrypted {job}"])
            print(f"{job:8}: plain {plain:.2f} s, encrypted {sealed:.2f} s: "
                  f"{sealed / plain:.2f}x the plain time")  # fmt: skip
        print(f"image   : plain {sizes['plain']} bytes, encrypted {sizes['encrypted']} bytes: "
              f"{sizes['encrypted'] / sizes['plain']:.4f}x")  # fmt: skip
    finally:
        if target:
            subprocess.run(["losetup", "-d", target], check=False)
        subprocess.run(["partx", "-d", loop], check=False, capture_output=True)
        subprocess.run(["losetup", "-d", loop], check=False)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
