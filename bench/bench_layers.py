#!/usr/bin/env python3
"""A LUKS2 partition of 4 GiB holding about 1 GiB: stored whole against read inside.

Usage (root): bench/bench_layers.py [--work DIR] [--fresh] [--json FILE] [--restore]

The fixture is a disk file with a GPT and one 4 GiB partition holding a LUKS2
volume (AES-XTS, made offline by ``cryptsetup reencrypt --encrypt``, no
device-mapper) with an ext4 inside, filled with about 1 GiB of files: mostly
incompressible data (photos, archives, binaries: random bytes) and some text.
It is built once and cached in the work folder (``--fresh`` builds it again),
with the passphrase in a file there; the passphrase is never an argument.

The disk is attached read-only (``losetup -r -P``) and its partition captured
twice, with the page cache dropped before each run:

  raw    rescue capture PART DIR
         no key: the partition is locked, every block stored as ciphertext (dd)
  keyed  rescue capture PART DIR --passphrase-file PART=FILE
         read inside: only the used sectors and the LUKS metadata, still encrypted

For each: wall time, peak RSS, the image folder's size (bytes on disk) and what
rescue.json records (how it was stored, the LUKS metadata bytes, the inner
filesystem's used bytes), then keyed / raw for time and size. ``--restore`` also
times a restore of each image onto a loop device over a blank file and checks
that the restored volume opens with the passphrase. ``--json FILE`` writes
everything measured. Loop devices are detached and the images removed at the end;
only the fixture stays in the work folder.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESCUE = [str(ROOT / ".venv" / "bin" / "python"), "-m", "rescue"]
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

PART_START = MiB
PART_SIZE = 4 * GiB
DISK_SIZE = PART_START + PART_SIZE + MiB  # room for the backup GPT at the end
REDUCE = 16 * MiB
"""Room ``reencrypt --reduce-device-size`` takes for the LUKS2 header."""
FIXTURE_VERSION = 1
"""Bump when the way the fixture is made changes: a cached one is then rebuilt."""
TEXT_SHARE = 0.12
"""Share of the fill that is text (the rest is incompressible)."""


# --- running things -------------------------------------------------------------------


def run(*argv: str, check: bool = True, timeout: float | None = None) -> str:
    res = subprocess.run(
        argv, capture_output=True, text=True, check=False, timeout=timeout,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    if check and res.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.strip()}")
    return res.stdout


def settle() -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        run("udevadm", "settle", "--timeout=10", check=False, timeout=20)


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def timed(argv: list[str], log: Path) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB, largest process) of one command; output to ``log``."""
    with log.open("wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(argv)}\n{tail}")
    return wall, usage.ru_maxrss


class Loops:
    """The loop devices, mounts and device nodes this run made, undone in reverse order."""

    def __init__(self) -> None:
        self.loops: list[str] = []
        self.mounts: list[Path] = []
        self.nodes: list[Path] = []

    def attach(self, backing: Path, *extra: str) -> str:
        loop = run("losetup", "-f", "--show", *extra, str(backing)).strip()
        self.loops.append(loop)
        return loop

    def detach(self, loop: str) -> None:
        settle()
        run("partx", "-d", loop, check=False)
        for _ in range(20):
            if subprocess.run(["losetup", "-d", loop], capture_output=True,
                              check=False).returncode == 0:  # fmt: skip
                break
            time.sleep(0.25)
        else:
            print(f"warning: could not detach {loop}", file=sys.stderr)
        if loop in self.loops:
            self.loops.remove(loop)
        name = Path(loop).name
        for node in [n for n in self.nodes if n.name.startswith(f"{name}p")]:
            node.unlink(missing_ok=True)
            self.nodes.remove(node)

    def mount(self, dev: str, where: Path) -> None:
        where.mkdir(parents=True, exist_ok=True)
        run("mount", dev, str(where))
        self.mounts.append(where)

    def umount(self, where: Path) -> None:
        run("umount", str(where))
        self.mounts.remove(where)

    def first_partition(self, loop: str) -> str:
        """The node of partition 1 of ``loop``, added by partx or made here if missing."""
        name = Path(loop).name
        sysdir = Path("/sys/block") / name / f"{name}p1"
        for attempt in range(3):
            settle()
            if sysdir.exists():
                break
            run("partx", "-a" if attempt else "-u", loop, check=False)
        if not sysdir.exists():
            raise SystemExit(f"{loop}: the kernel shows no partition 1")
        node = Path("/dev") / f"{name}p1"
        for _ in range(40):
            if node.exists():
                break
            time.sleep(0.05)
        if not node.exists():
            major, minor = (int(x) for x in (sysdir / "dev").read_text().split(":"))
            os.mknod(node, 0o600 | stat.S_IFBLK, os.makedev(major, minor))
            self.nodes.append(node)
        return str(node)

    def close(self) -> None:
        for m in reversed(self.mounts):
            run("umount", "-l", str(m), check=False)
        self.mounts.clear()
        for loop in reversed(list(self.loops)):
            self.detach(loop)
        for node in self.nodes:
            node.unlink(missing_ok=True)
        self.nodes.clear()


# --- the fixture ----------------------------------------------------------------------


def write_random(path: Path, size: int, rng: random.Random) -> None:
    with path.open("wb") as f:
        left = size
        while left:
            n = min(left, 8 * MiB)
            f.write(rng.randbytes(n))
            left -= n


def text_maker(rng: random.Random) -> tuple[list[str], list[float]]:
    """A vocabulary and Zipf-like cumulative weights, for text that compresses like text."""
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    freq = [12, 9, 8, 8, 7, 7, 6, 6, 6, 4, 4, 3, 3, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1]
    words = {"".join(rng.choices(letters, freq, k=rng.randint(2, 11))) for _ in range(6000)}
    vocab = sorted(words)
    rng.shuffle(vocab)
    cum, total = [], 0.0
    for rank in range(1, len(vocab) + 1):
        total += 1.0 / rank
        cum.append(total)
    return vocab, cum


def write_text(
    path: Path, size: int, rng: random.Random, maker: tuple[list[str], list[float]]
) -> None:
    vocab, cum = maker
    parts: list[str] = []
    length = 0
    while length < size:
        line = " ".join(rng.choices(vocab, cum_weights=cum, k=rng.randint(4, 16)))
        if rng.random() < 0.3:
            line = f"{rng.randint(0, 99999):05d} {line.capitalize()}."
        parts.append(line)
        length += len(line) + 1
    path.write_text("\n".join(parts)[:size])


def fill(root: Path, mib: int, seed: int) -> dict[str, int]:
    """About ``mib`` MiB of files: photos, archives and binaries (random), text, configs."""
    rng = random.Random(seed)
    maker = text_maker(rng)
    budget = mib * MiB
    text_budget = int(budget * TEXT_SHARE)
    plan = [  # (folder, share of the random bytes, smallest, largest file, suffix)
        ("home/user/Videos", 0.30, 24 * MiB, 120 * MiB, ".mp4"),
        ("home/user/Pictures", 0.45, 1 * MiB + 512 * KiB, 9 * MiB, ".jpg"),
        ("home/user/Downloads", 0.10, 256 * KiB, 16 * MiB, ".zip"),
        ("usr/lib/x86_64-linux-gnu", 0.15, 8 * KiB, 3 * MiB, ".so"),
    ]
    counts = {"files": 0, "random_bytes": 0, "text_bytes": 0}
    for folder, share, low, high, suffix in plan:
        left = int((budget - text_budget) * share)
        i = 0
        while left > 0:
            size = min(left, rng.randint(low, high))
            sub = root / folder / (f"{2016 + i % 8}" if "Pictures" in folder else "")
            sub.mkdir(parents=True, exist_ok=True)
            write_random(sub / f"f{i:05d}{suffix}", size, rng)
            left -= size
            i += 1
            counts["files"] += 1
            counts["random_bytes"] += size
    left = text_budget
    i = 0
    while left > 0:
        kind = rng.random()
        if kind < 0.5:  # source and documents
            folder, size, suffix = "home/user/Documents", rng.randint(2 * KiB, 400 * KiB), ".txt"
        elif kind < 0.8:  # logs, larger
            folder, size, suffix = "var/log", rng.randint(256 * KiB, 6 * MiB), ".log"
        else:  # configuration, small
            folder, size, suffix = "etc", rng.randint(200, 16 * KiB), ".conf"
        size = min(size, left)
        (root / folder).mkdir(parents=True, exist_ok=True)
        write_text(root / folder / f"t{i:05d}{suffix}", size, rng, maker)
        left -= size
        i += 1
        counts["files"] += 1
        counts["text_bytes"] += size
    return counts


def fixture_stamp(work: Path) -> Path:
    return work / "fixture.json"


def cached_fixture(work: Path, mib: int, seed: int) -> dict[str, Any] | None:
    disk = work / "disk.img"
    try:
        stamp = json.loads(fixture_stamp(work).read_text())
    except (OSError, ValueError):
        return None
    want = {"version": FIXTURE_VERSION, "disk_size": DISK_SIZE, "fill_mib": mib, "seed": seed}
    ok = all(stamp.get(k) == v for k, v in want.items())
    if not ok or not disk.is_file() or disk.stat().st_size != DISK_SIZE:
        return None
    if not (work / "passphrase").is_file():
        return None
    return stamp


def dumped(dump: str, field: str) -> str | None:
    """The first ``field:`` of ``cryptsetup luksDump`` (the data segment's)."""
    for line in dump.splitlines():
        name, sep, value = line.strip().partition(":")
        if sep and name == field:
            return value.strip()
    return None


def build_fixture(work: Path, mib: int, seed: int, loops: Loops) -> dict[str, Any]:
    """The GPT disk file with one LUKS2 partition holding a filled ext4."""
    disk, key = work / "disk.img", work / "passphrase"
    fixture_stamp(work).unlink(missing_ok=True)
    disk.unlink(missing_ok=True)
    start = time.perf_counter()
    with disk.open("wb") as f:
        f.truncate(DISK_SIZE)  # sparse until filled and encrypted
    table = (
        "label: gpt\n"
        f"start={PART_START // 512}, size={PART_SIZE // 512}, "
        "type=CA7D7CCB-63ED-4C53-861C-1742536059CC, name=cryptroot\n"
    )  # the type is Linux LUKS
    res = subprocess.run(["sfdisk", "-q", str(disk)], input=table, text=True,
                         capture_output=True, check=False)  # fmt: skip
    if res.returncode != 0:
        raise SystemExit(f"sfdisk failed: {res.stderr}")
    # the partition's bytes as one loop device: no partition scan, nothing udev can drop
    part = loops.attach(disk, "-o", str(PART_START), "--sizelimit", str(PART_SIZE))
    run("mkfs.ext4", "-q", "-F", "-b", "4096", "-L", "root", part,
        f"{(PART_SIZE - REDUCE) // KiB}k")  # fmt: skip
    mnt = work / "mnt"
    loops.mount(part, mnt)
    try:
        counts = fill(mnt, mib, seed)
        os.sync()
        df = os.statvfs(mnt)
        used = (df.f_blocks - df.f_bfree) * df.f_frsize
    finally:
        loops.umount(mnt)
    mnt.rmdir()
    run("e2fsck", "-fn", part)
    old = os.umask(0o077)
    try:
        key.write_text(secrets.token_urlsafe(24))  # one line, no newline: as typed
    finally:
        os.umask(old)
    run(
        "cryptsetup", "reencrypt", "--encrypt", "--type", "luks2", "--reduce-device-size",
        str(REDUCE), "--batch-mode", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
        "--key-file", str(key), part,
    )  # fmt: skip
    dump = run("cryptsetup", "luksDump", part)
    loops.detach(part)
    stamp = {
        "version": FIXTURE_VERSION,
        "disk_size": DISK_SIZE,
        "partition_start": PART_START,
        "partition_size": PART_SIZE,
        "fill_mib": mib,
        "seed": seed,
        **counts,
        "ext4_used_bytes_df": used,
        "cipher": dumped(dump, "cipher"),
        "encryption_sector": dumped(dump, "sector"),
        "build_seconds": round(time.perf_counter() - start, 1),
    }
    fixture_stamp(work).write_text(json.dumps(stamp, indent=2) + "\n")
    return stamp


# --- measuring ------------------------------------------------------------------------


def folder_size(d: Path) -> tuple[int, int]:
    """(bytes on disk, apparent bytes) of every file under ``d``."""
    disk = apparent = 0
    for p in d.rglob("*"):
        st = p.lstat()
        if stat.S_ISREG(st.st_mode):
            disk += st.st_blocks * 512
            apparent += st.st_size
    return disk, apparent


def record_of(image: Path, name: str) -> dict[str, Any]:
    manifest = json.loads((image / "rescue.json").read_text())
    return next(p for p in manifest["partitions"] if p["name"] == name)


def capture(part: str, image: Path, key: Path | None, logs: Path) -> dict[str, Any]:
    argv = [*RESCUE, "capture", part, str(image)]
    if key is not None:
        argv += ["--passphrase-file", f"{part}={key}"]  # the file's path, never the key
    drop_caches()
    wall, rss = timed(argv, logs / f"capture-{image.name}.log")
    on_disk, apparent = folder_size(image)
    rec = record_of(image, Path(part).name)
    layer = (rec.get("layers") or [{}])[0]
    inner = (layer.get("volumes") or [{}])[0]
    return {
        "command": " ".join(argv),
        "capture_seconds": round(wall, 2),
        "peak_rss_kib": rss,
        "image_bytes_on_disk": on_disk,
        "image_bytes_apparent": apparent,
        "stored_as": rec["stored_as"],
        "partition_bytes": rec["size"],
        "recorded_used_bytes": rec.get("used_bytes"),
        "stream_bytes": rec.get("stream_bytes"),
        "layer": layer.get("name"),
        "layer_state": layer.get("state"),
        "luks_metadata_bytes": layer.get("metadata_bytes"),
        "inner_fstype": inner.get("fstype"),
        "inner_used_bytes": inner.get("used_bytes"),
    }


def restore(image: Path, work: Path, key: Path, loops: Loops, logs: Path) -> dict[str, Any]:
    target = work / f"target-{image.name}.img"
    with target.open("wb") as f:
        f.truncate(PART_SIZE)
    loop = loops.attach(target)
    try:
        argv = [*RESCUE, "restore", str(image), loop, "--yes"]
        drop_caches()
        wall, rss = timed(argv, logs / f"restore-{image.name}.log")
        opens = subprocess.run(
            ["cryptsetup", "open", "--test-passphrase", "--key-file", str(key), loop],
            capture_output=True, check=False, stdin=subprocess.DEVNULL,
        ).returncode == 0  # fmt: skip
    finally:
        loops.detach(loop)
        target.unlink(missing_ok=True)
    return {"restore_seconds": round(wall, 2), "restore_peak_rss_kib": rss,
            "restored_opens_with_passphrase": opens}  # fmt: skip


def size_text(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / MiB:.1f} MiB"


def report(res: dict[str, Any]) -> None:
    raw, keyed, ratio = res["raw"], res["keyed"], res["ratios"]
    inner, meta = keyed["inner_used_bytes"], keyed["luks_metadata_bytes"]
    print(f"\n# LUKS2 partition of {size_text(PART_SIZE)}, {keyed['inner_fstype']} inside, "
          f"caches dropped before each run")  # fmt: skip
    print(f"inner filesystem used: {size_text(inner)} ({inner} bytes, rescue.json)")
    print(f"LUKS metadata:         {size_text(meta)} ({meta} bytes, rescue.json)")
    print(f"used + metadata:       {size_text(inner + meta)}\n")
    restored = "restore_seconds" in keyed
    head = f"{'':24} {'capture':>9} {'image on disk':>14} {'stored as':>10} {'peak RSS':>9}"
    print(head + (f" {'restore':>9}" if restored else ""))
    for label, r in (("raw (no key)", raw), ("keyed (passphrase file)", keyed)):
        line = (f"{label:24} {r['capture_seconds']:8.2f}s {size_text(r['image_bytes_on_disk']):>14}"
                f" {r['stored_as']:>10} {r['peak_rss_kib'] / KiB:6.0f} MiB")  # fmt: skip
        if restored:
            line += f" {r['restore_seconds']:8.2f}s"
        print(line)
    line = f"{'keyed / raw':24} {ratio['capture_time']:9.3f} {ratio['image_size']:14.3f}"
    if restored:
        line += f" {'':10} {'':9} {ratio['restore_time']:9.3f}"
    print(line)
    print(f"\nkeyed image / (used + metadata): {ratio['keyed_image_vs_used']:.3f}")
    if restored:
        print("restored volumes open with the passphrase: "
              f"raw {raw['restored_opens_with_passphrase']}, "
              f"keyed {keyed['restored_opens_with_passphrase']}")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--work", type=Path, default=Path("/var/tmp/rescue-bench-layers"),
                    help="folder for the cached fixture (default %(default)s)")  # fmt: skip
    ap.add_argument("--fresh", action="store_true", help="build the fixture again")
    ap.add_argument("--json", type=Path, default=None, metavar="FILE", help="write results")
    ap.add_argument("--restore", action="store_true",
                    help="also time a restore of each image onto a loop device")  # fmt: skip
    ap.add_argument("--fill-mib", type=int, default=1024, help="data in the ext4 (MiB)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root (loop devices, mount, drop_caches)", file=sys.stderr)
        return 2
    if not 16 <= args.fill_mib <= (PART_SIZE - REDUCE) // MiB * 0.9:
        ap.error("--fill-mib must leave the 4 GiB partition room")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the finally blocks clean up
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    loops = Loops()
    run_dir: Path | None = None
    try:
        stamp = None if args.fresh else cached_fixture(work, args.fill_mib, args.seed)
        if stamp is None:
            print(f"building the fixture in {work} ...", flush=True)
            stamp = build_fixture(work, args.fill_mib, args.seed, loops)
            print(f"built in {stamp['build_seconds']} s", flush=True)
        else:
            print(f"cached fixture {work / 'disk.img'}", flush=True)
        key = work / "passphrase"
        run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=work))
        disk = loops.attach(work / "disk.img", "-r", "-P")
        part = loops.first_partition(disk)
        raw = capture(part, run_dir / "raw", None, run_dir)
        keyed = capture(part, run_dir / "keyed", key, run_dir)
        loops.detach(disk)
        if raw["stored_as"] != "dd" or raw["layer_state"] != "locked":
            raise SystemExit(f"the capture without a key was not stored whole: {raw}")
        if keyed["stored_as"] != "partclone" or keyed["layer_state"] != "read":
            raise SystemExit(f"the keyed capture did not read inside the volume: {keyed}")
        if args.restore:
            raw |= restore(run_dir / "raw", run_dir, key, loops, run_dir)
            keyed |= restore(run_dir / "keyed", run_dir, key, loops, run_dir)
        used = keyed["inner_used_bytes"] + keyed["luks_metadata_bytes"]
        ratios = {
            "capture_time": keyed["capture_seconds"] / raw["capture_seconds"],
            "image_size": keyed["image_bytes_on_disk"] / raw["image_bytes_on_disk"],
            "keyed_image_vs_used": keyed["image_bytes_on_disk"] / used,
        }
        if args.restore:
            ratios["restore_time"] = keyed["restore_seconds"] / raw["restore_seconds"]
        rev = run("git", "-C", str(ROOT), "rev-parse", "HEAD", check=False).strip()
        res = {
            "bench": "bench_layers",
            "argv": sys.argv,
            "rescue_commit": rev or None,
            "machine": {"cpus": os.cpu_count(), "kernel": platform.release()},
            "fixture": stamp,
            "raw": raw,
            "keyed": keyed,
            "ratios": {k: round(v, 4) for k, v in ratios.items()},
        }
        report(res)
        if args.json is not None:
            args.json.write_text(json.dumps(res, indent=2) + "\n")
            print(f"\nresults written to {args.json}")
    finally:
        loops.close()
        if run_dir is not None:
            shutil.rmtree(run_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
