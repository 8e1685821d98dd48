"""BitLocker volumes made by Windows, and real NTFS with files put inside them.

The volumes ship in dissect.fve's source distribution (``tests/_data/bde``),
their data areas zeroed. The keys below are the ones dissect.fve's own tests
(``tests/bde/test_bde.py``) open them with; each was checked against its file.
To get a volume with a real filesystem, dislocker-fuse (an independent reader)
opens a copy read-write, mkntfs makes an NTFS through its plaintext file below
the first FVE metadata block, and ntfscp writes files into it.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

SDIST = "dissect.fve==4.6"
PASSWORD = "password12!@"
RECOVERY = {
    "recovery_password.bin": "284867-596541-514998-422114-660297-261613-215424-199408",
    "vista.bin": "517506-503998-044583-576191-587004-635965-501270-087802",
    "win7_partial.bin": "131450-120197-153989-250338-511368-495572-680944-381546",
}
BEK = {"startup_key.bin": "startup_key.bek", "recovery_key.bin": "recovery_key.bek"}
MiB = 1 << 20


class Samples:
    """The sdist fetched once; each volume unpacked (sparse) when first asked for."""

    def __init__(self, where: Path) -> None:
        self.where = where
        got = subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
             SDIST, "-d", str(where)],
            capture_output=True, text=True, check=False, timeout=300,
        )  # fmt: skip
        sdists = list(where.glob("dissect*fve-4.6.tar.gz"))
        self.sdist = sdists[0] if sdists else None
        self.problem = None if got.returncode == 0 and sdists else got.stderr[-300:]

    def get(self, name: str) -> Path:
        """The unpacked file ``name`` (a ``.bin`` volume or a ``.bek`` key)."""
        if self.sdist is None:
            pytest.skip(f"dissect.fve's source distribution could not be fetched: {self.problem}")
        out = self.where / name
        if out.exists():
            return out
        member_name = f"dissect_fve-4.6/tests/_data/bde/{name}"
        with tarfile.open(self.sdist) as tar:
            if name.endswith(".bin"):
                member_name += ".gz"
            member = tar.extractfile(member_name)
            assert member is not None
            part = out.with_suffix(".part")
            with part.open("wb") as dest:
                source = gzip.GzipFile(fileobj=member) if name.endswith(".bin") else member
                _sparse_copy(source, dest)
            part.rename(out)
        return out


def _sparse_copy(source: IO[bytes] | gzip.GzipFile, dest: IO[bytes]) -> None:
    """Copy, seeking over blocks of zeros (win7_partial.bin is 2.7 GiB, mostly zeros)."""
    zero = bytes(MiB)
    size = 0
    while chunk := source.read(MiB):
        if chunk == zero[: len(chunk)]:
            dest.seek(len(chunk), os.SEEK_CUR)
        else:
            dest.write(chunk)
        size += len(chunk)
    dest.truncate(size)


def dislocker_key(sample: str, samples: Samples) -> list[str]:
    """dislocker's options for the key that opens ``sample`` (as in the tests' own keys)."""
    if sample in RECOVERY:
        return [f"-p{RECOVERY[sample]}"]
    if sample in BEK:
        return ["-f", str(samples.get(BEK[sample]))]
    if sample == "suspended.bin":
        return ["-c"]
    return [f"-u{PASSWORD}"]


@contextlib.contextmanager
def dislocker(
    volume: Path, key: list[str], mnt: Path, *, read_only: bool = False
) -> Iterator[Path]:
    """``volume`` opened by dislocker-fuse (read-write unless ``read_only``); yields its
    plaintext file.

    The key goes on dislocker's command line (it has no other way), acceptable
    for these published test keys only. The process is stopped by its PID.
    """
    if shutil.which("dislocker-fuse") is None or not Path("/dev/fuse").exists():
        pytest.skip("dislocker-fuse or /dev/fuse is missing")
    mnt.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        ["dislocker-fuse", "-q", *(["-r"] if read_only else []), "-V", str(volume), *key,
         "--", "-f", str(mnt)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    plain = mnt / "dislocker-file"
    try:
        for _ in range(200):
            if plain.exists() or proc.poll() is not None:
                break
            time.sleep(0.05)
        if not plain.exists():
            pytest.fail(f"dislocker-fuse did not open {volume.name} (exit {proc.poll()})")
        yield plain
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)


@dataclass(frozen=True)
class Filled:
    """A copy of a sample with NTFS and files inside, and its plaintext as dislocker read it."""

    volume: Path
    ntfs_size: int
    plaintext: bytes
    """The first ``ntfs_size`` bytes of the inner volume, read through dislocker-fuse."""
    files: Path
    """The folder of the files written into the NTFS (each at its root, by the same name)."""


def fill_with_ntfs(samples: Samples, sample: str, work: Path, ntfs_size: int = 32 * MiB) -> Filled:
    """A copy of ``sample`` holding a fresh NTFS of ``ntfs_size`` bytes with a few files."""
    for tool in ("mkntfs", "ntfscp"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            pytest.skip(f"{tool} (ntfs-3g) is not installed")
    work.mkdir(parents=True, exist_ok=True)
    volume = work / sample
    shutil.copyfile(samples.get(sample), volume)
    files = work / "files"
    files.mkdir(exist_ok=True)
    (files / "random.bin").write_bytes(os.urandom(3 * MiB + 123))
    (files / "numbers.txt").write_text("".join(f"{n}\n" for n in range(100_000)))
    (files / "small.txt").write_text("a file small enough to live in its MFT record\n")
    with dislocker(volume, dislocker_key(sample, samples), work / "mnt") as plain:
        subprocess.run(
            ["mkntfs", "-Q", "-F", "-q", "-L", "bde-test", str(plain), str(ntfs_size // 512)],
            check=True, capture_output=True,
        )  # fmt: skip
        for f in sorted(files.iterdir()):
            subprocess.run(
                ["ntfscp", "-q", str(plain), str(f), f.name], check=True, capture_output=True
            )
        with plain.open("rb") as fh:
            plaintext = fh.read(ntfs_size)
    return Filled(volume=volume, ntfs_size=ntfs_size, plaintext=plaintext, files=files)
