#!/usr/bin/env python3
"""Incremental images on the reference fixture: how small, how fast, and whether they hold.

Usage (root): bench/bench_incremental.py FIXTURE.img [--work DIR] [--chain 5]

A copy of the fixture (``../shared/bench/make-fixture.sh``: GPT, ext4 and NTFS,
~1.1 GB used in each) is captured whole; then, CHAIN times, about 1% of its used
data is changed in both filesystems the way a week of use does (logs appended,
database pages rewritten in place, a few files rewritten, deleted and added)
and the disk is captured against the previous image. The page cache is dropped
before every capture. Printed: the first increment's bytes and time against the
full image's, with the goals (<= 3% of the bytes, <= 0.5x the time); then every
image of the chain restored onto a new disk, mounted with ``rescue mount``, and
the newest consolidated and restored, each compared file by file with the
source as it was at that capture.

``--work DIR`` (made, must not exist; default: a new folder beside the fixture)
holds the copy of the fixture, the images and the restore target; it is removed
at the end unless --keep.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = str(ROOT / ".venv" / "bin" / "python")
MiB = 1 << 20


def run(*argv: str, quiet: bool = True) -> str:
    res = subprocess.run(argv, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.strip()}")
    return res.stdout


def rescue(*args: str) -> float:
    """Run a rescue command (this checkout); its wall time."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    res = subprocess.run([PY, "-m", "rescue", *args], capture_output=True, text=True, env=env,
                         check=False)  # fmt: skip
    if res.returncode != 0:
        raise SystemExit(f"rescue {' '.join(args)} failed: {res.stderr.strip()[-2000:]}")
    return time.perf_counter() - start


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def tree(root: Path) -> dict[str, str]:
    """Relative path -> what it is: a file's size and SHA-256, a link's target, a folder."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in ("lost+found", "System Volume Information")]
        for name in filenames + dirnames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "link " + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = f"{p.stat().st_size} {hashlib.sha256(p.read_bytes()).hexdigest()}"
    return out


class Disk:
    """A loop device over a disk file, its partitions mountable (ext4 by the kernel, NTFS
    through ntfs-3g)."""

    def __init__(self, path: Path) -> None:
        self.dev = run("losetup", "-f", "--show", "-P", str(path)).strip()
        subprocess.run(["partx", "-u", self.dev], capture_output=True, check=False)

    def part(self, n: int) -> str:
        return f"{self.dev}p{n}"

    def mount(self, n: int, where: Path, ro: bool = False) -> Path:
        where.mkdir(parents=True, exist_ok=True)
        fstype = run("blkid", "-p", "-o", "value", "-s", "TYPE", self.part(n)).strip()
        opts = ["-o", "ro"] if ro else []
        if fstype == "ntfs":
            run("ntfs-3g", *opts, self.part(n), str(where))
        else:
            run("mount", *opts, self.part(n), str(where))
        return where

    def trees(self, where: Path) -> dict[int, dict[str, str]]:
        out = {}
        for n in (1, 2):
            mnt = self.mount(n, where / f"p{n}", ro=True)
            try:
                out[n] = tree(mnt)
            finally:
                run("umount", str(mnt))
        return out

    def detach(self) -> None:
        subprocess.run(["partx", "-d", self.dev], capture_output=True, check=False)
        subprocess.run(["losetup", "-d", self.dev], capture_output=True, check=False)


def change(root: Path, rng: random.Random, step: int) -> int:
    """A week of use in one filesystem; returns the bytes written."""
    written = 0
    logs = sorted((root / "var" / "log").rglob("*.log"))
    for log in rng.sample(logs, 3):  # appended
        with log.open("ab") as f:
            line = f"2026-12-0{step} service event {rng.random():.6f} ok\n".encode()
            data = line * (MiB // len(line))
            f.write(data)
            written += len(data)
    db = rng.choice(sorted((root / "var" / "lib" / "db").glob("*.db")))
    pages = db.stat().st_size // 4096
    with db.open("r+b") as f:  # pages rewritten in place
        for page in rng.sample(range(pages), 30):
            f.seek(page * 4096)
            f.write(rng.randbytes(4096))
            written += 4096
    sources = sorted((root / "usr" / "src").rglob("*.*"))
    for p in rng.sample(sources, 10):  # edited
        size = p.stat().st_size
        p.write_bytes(rng.randbytes(size // 2) * 2 + b"x" * (size % 2))
        written += size
    for p in rng.sample(sorted(set(sources)), 8):  # deleted
        if p.exists():
            p.unlink()
    new = root / "home" / "user" / f"new-{step}"
    new.mkdir(parents=True, exist_ok=True)
    for i in range(3):  # added
        (new / f"download-{i}.bin").write_bytes(rng.randbytes(3 * MiB))
        written += 3 * MiB
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("fixture", type=Path)
    ap.add_argument("--work", type=Path, help="a new folder for the copy and the images")
    ap.add_argument("--chain", type=int, default=5, help="increments captured (default 5)")
    ap.add_argument(
        "--runs",
        type=int,
        default=3,
        help="full and first incremental captures timed alternately (default 3)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()
    if args.work is not None:
        if args.work.exists():
            raise SystemExit(f"{args.work} exists: give a new folder.")
        args.work.mkdir(parents=True)
        work = args.work
    else:
        work = Path(tempfile.mkdtemp(prefix="bench-incremental-", dir=args.fixture.parent))
    images = work / "images"
    images.mkdir()
    print(f"copying {args.fixture} (sparse)", flush=True)
    run("cp", "--sparse=always", str(args.fixture), str(work / "disk.img"))
    disk = Disk(work / "disk.img")
    made: list[Disk] = []
    try:
        states = [disk.trees(work / "mnt")]
        used = sum(int(v.split()[0]) for t in states[0].values() for v in t.values()
                   if v[0].isdigit())  # fmt: skip
        drop_caches()
        rescue("capture", disk.dev, str(images / "full"), "--json")
        full_bytes = folder_bytes(images / "full")
        names = ["full"]
        rng = random.Random(2026)
        rows = []
        fulls: list[float] = []
        firsts: list[float] = []
        for step in range(1, args.chain + 1):
            written = 0
            for n in (1, 2):
                mnt = disk.mount(n, work / "mnt" / f"w{n}")
                try:
                    written += change(mnt, rng, step)
                finally:
                    run("umount", str(mnt))
            states.append(disk.trees(work / "mnt"))
            name = f"inc{step}"
            for run_index in range(args.runs if step == 1 else 1):
                if step == 1:  # a full capture of the same disk, alternately with the increment
                    drop_caches()
                    fulls.append(rescue("capture", disk.dev, str(work / "again"), "--json"))
                    shutil.rmtree(work / "again")
                    if run_index:
                        shutil.rmtree(images / name)
                drop_caches()
                seconds = rescue(
                    "capture", disk.dev, str(images / name), "--base", names[-1], "--json"
                )
                if step == 1:
                    firsts.append(seconds)
            size = folder_bytes(images / name)
            names.append(name)
            rows.append((name, written, seconds, size))
            print(f"{name}: {written / MiB:.1f} MiB written ({100 * written / used:.2f}% of "
                  f"{used / MiB:.0f} MiB of files), capture {seconds:.2f} s, "
                  f"{size / MiB:.2f} MiB", flush=True)  # fmt: skip
        _name, _w, _s, inc_bytes = rows[0]
        full_seconds, inc_seconds = statistics.median(fulls), statistics.median(firsts)
        print()
        print(f"first increment against a full capture of the same disk, {args.runs} runs each "
              f"alternately, medians (full {sorted(round(x, 2) for x in fulls)}, increment "
              f"{sorted(round(x, 2) for x in firsts)}):")  # fmt: skip
        print(f"  bytes {inc_bytes / full_bytes:.4f}x  (goal <= 0.03;  "
              f"{inc_bytes / MiB:.2f} of {full_bytes / MiB:.1f} MiB)")  # fmt: skip
        print(f"  time  {inc_seconds / full_seconds:.3f}x  (goal <= 0.5;  "
              f"{inc_seconds:.2f} s against {full_seconds:.2f} s)")  # fmt: skip
        print(f"  chain of {args.chain}: {sum(r[3] for r in rows) / MiB:.2f} MiB in all increments")
        print()
        (work / "target.img").touch()
        os.truncate(work / "target.img", (work / "disk.img").stat().st_size)
        target = Disk(work / "target.img")
        made.append(target)
        failures = 0
        for k, name in enumerate(names):
            seconds = rescue("restore", str(images / name), target.dev, "--yes")
            subprocess.run(["partx", "-u", target.dev], capture_output=True, check=False)
            restored = target.trees(work / "mnt")
            mounted = {}
            started = time.perf_counter()
            for n in (1, 2):
                mnt = work / "mnt" / f"browse{n}"
                rescue("mount", str(images / name), str(mnt), "--partition", str(n))
                try:
                    mounted[n] = tree(mnt)
                finally:
                    rescue("unmount", str(mnt))
            browsed = time.perf_counter() - started
            ok = restored == states[k] and mounted == states[k]
            failures += not ok
            print(f"{name}: restored in {seconds:.2f} s, every file read through rescue mount in "
                  f"{browsed:.1f} s: {'every file identical' if ok else 'DIFFERENT'}",
                  flush=True)  # fmt: skip
        for k, name in enumerate(names[1:], start=1):
            out = work / f"consolidated-{name}"
            seconds = rescue("consolidate", str(images / name), str(out))
            rescue("restore", str(out), target.dev, "--yes")
            subprocess.run(["partx", "-u", target.dev], capture_output=True, check=False)
            ok = target.trees(work / "mnt") == states[k]
            failures += not ok
            verdict = "every file identical" if ok else "DIFFERENT"
            print(f"{name} consolidated in {seconds:.2f} s ({folder_bytes(out) / MiB:.1f} MiB), "
                  f"restored: {verdict}", flush=True)  # fmt: skip
            shutil.rmtree(out)
        if failures:
            raise SystemExit(f"{failures} check(s) failed")
    finally:
        for d in made:
            d.detach()
        disk.detach()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
