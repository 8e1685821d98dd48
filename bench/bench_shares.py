#!/usr/bin/env python3
"""Capture to an ssh:// share against the same capture to a local folder.

Usage (root): bench/bench_shares.py FIXTURE.img [--runs N] [--work DIR]

FIXTURE.img is the reference disk (GPT, p1 ext4 with about 1.1 GB used). Its first
partition is captured with ``rescue capture`` alternately into a local folder and
to ``ssh://USER@127.0.0.1:PORT/...`` served by an sshd the bench starts (the one
from tests/share_servers.py, for a temporary user removed afterwards) from a
folder on the same filesystem as the local one; the page cache is dropped before
each run. Printed: each run's wall time, the medians and the ratio of speeds
(local time / share time; the goal is >= 0.8).

The code measured is the tree this script is in.
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
sys.path.insert(0, str(ROOT / "tests"))
from share_servers import SshServer  # noqa: E402

GOAL_RATIO = 0.8
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, text=True, capture_output=True).stdout


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def first_partition(loop: str) -> str:
    subprocess.run(["partx", "-u", loop], check=False)
    out = sh("lsblk", "-lnpo", "NAME,TYPE", loop).splitlines()
    parts = [line.split()[0] for line in out if line.endswith("part")]
    if not parts:
        raise SystemExit(f"{loop}: no partitions")
    return parts[0]


def capture(source: str, dest: str, extra: list[str], env: dict[str, str]) -> float:
    drop_caches()
    start = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-m", "rescue", "capture", source, dest, "--json", *extra],
        capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    took = time.monotonic() - start
    if res.returncode != 0:
        raise SystemExit(f"capture to {dest} failed: {res.stderr[-2000:]}")
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("fixture", type=Path)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--work", type=Path)
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-shares-"))
    work.mkdir(parents=True, exist_ok=True)
    server = SshServer()
    loop = sh("losetup", "-f", "-P", "--show", "-r", str(args.fixture)).strip()
    local: list[float] = []
    remote: list[float] = []
    try:
        part = first_partition(loop)
        server.setup()
        pw = work / "password"
        pw.write_text(server.password + "\n")
        pw.chmod(0o600)
        env = {**ENV, "RESCUE_SHARES_DIR": str(work / "run")}
        login = ["--password-file", str(pw), "--host-key", server.fingerprint()]
        for run in range(args.runs):
            dest = work / f"local{run}"
            local.append(capture(part, str(dest), [], env))
            shutil.rmtree(dest)
            url = server.url(server.root / f"share{run}")
            remote.append(capture(part, url, login, env))
            used = sum(p.stat().st_size for p in (server.root / f"share{run}").iterdir())
            shutil.rmtree(server.root / f"share{run}")
            print(f"run {run + 1}: local {local[-1]:.1f} s, ssh:// {remote[-1]:.1f} s "
                  f"({used / 1e6:.0f} MB written)", flush=True)  # fmt: skip
    finally:
        server.teardown()
        subprocess.run(["partx", "-d", loop], check=False)
        subprocess.run(["losetup", "-d", loop], check=False)
        shutil.rmtree(work, ignore_errors=True)
    lm, rm = statistics.median(local), statistics.median(remote)
    print(f"median: local {lm:.1f} s, ssh:// {rm:.1f} s; speed ratio ssh/local {lm / rm:.2f} "
          f"(goal >= {GOAL_RATIO})")  # fmt: skip


if __name__ == "__main__":
    main()
