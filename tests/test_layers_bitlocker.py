"""BitLocker partitions through the CLI: imaged by used clusters, kept encrypted, restored.

The volumes are Windows' own (dissect.fve's test data) with a real NTFS and files
that dislocker-fuse wrote inside (see bde_fixtures.py). What rescue restores and
what stock partclone.restore makes of its stream are checked by readers other
than rescue's: dislocker-fuse with the same key, ntfs-3g's tools on its
plaintext, and dissect.fve's own decrypting stream.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from bde_fixtures import (
    BEK,
    PASSWORD,
    RECOVERY,
    Filled,
    MiB,
    Samples,
    dislocker,
    dislocker_key,
    fill_with_ntfs,
)
from capabilities import need
from conftest import DiskFactory
from diskbench import LoopDisk, PartSpec, rescue_command, run
from dissect.fve.bde import BDE

from rescue.cli import main
from rescue.errors import EXIT_REFUSED

TOOLS = ("dislocker-fuse", "ntfsfix", "ntfscat", "mkntfs", "ntfscp", "zstd")
"""The independent readers and the tools that fill the samples (ntfs-3g, dislocker)."""

pytestmark = [
    need("root", "loop", "partclone"),
    pytest.mark.skipif(
        not all(shutil.which(t) for t in TOOLS),
        reason=f"needs {', '.join(t for t in TOOLS if not shutil.which(t))}",
    ),
]

PART_MIB = 50
"""The BitLocker partition: a little larger than the samples (48.7 MiB)."""

BOOT_MIB = 8
NTFS_MARGIN = 256 * 1024
"""Room left between the NTFS's end and the first FVE metadata block."""

Fill = Callable[[str], Filled]


@pytest.fixture(scope="session")
def samples(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Samples]:
    yield Samples(tmp_path_factory.mktemp("bde"))


@pytest.fixture(scope="module")
def filled(samples: Samples, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fill]:
    """``filled(sample)``: the sample with the largest NTFS that fits and files, made once."""
    made: dict[str, Filled] = {}

    def get(sample: str) -> Filled:
        if sample not in made:
            work = tmp_path_factory.mktemp(sample.removesuffix(".bin"))
            made[sample] = fill_with_ntfs(samples, sample, work, ntfs_room(samples.get(sample)))
        return made[sample]

    yield get


def ntfs_room(volume: Path) -> int:
    """Whole MiB below the first FVE metadata block (its offset is in the boot sector)."""
    with volume.open("rb") as f:
        head = f.read(512)
    first: int = min(o for o in struct.unpack_from("<3Q", head, 0xB0) if o > 0)
    return (first - NTFS_MARGIN) // MiB * MiB


def secret_text(sample: str) -> str:
    return RECOVERY.get(sample, PASSWORD)


def key_file(tmp: Path, sample: str) -> Path:
    path = tmp / "key.txt"
    path.write_text(secret_text(sample) + "\n")  # the first line is the key
    return path


def bde_disk(factory: DiskFactory, filled: Filled) -> LoopDisk:
    disk = factory(BOOT_MIB + PART_MIB + 2, "gpt", [PartSpec(BOOT_MIB, "vfat"), PartSpec(None)])
    assert int(run("blockdev", "--getsize64", disk.parts[1])) >= filled.volume.stat().st_size
    with filled.volume.open("rb") as src, open(disk.parts[1], "r+b") as dst:
        while chunk := src.read(4 * MiB):
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    return disk


def expected_files(filled: Filled) -> dict[str, str]:
    return {p.name: sha256(p.read_bytes()) for p in filled.files.iterdir()}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tree_contents(root: Path) -> dict[str, str]:
    """Relative path -> content hash of every regular file below ``root``."""
    return {
        str(p.relative_to(root)): sha256(p.read_bytes())
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def ntfs_through(plain: Path, ntfs_size: int, want: dict[str, str], tmp: Path) -> bytes:
    """The NTFS area of dislocker's plaintext file ``plain``, after checking it with ntfs-3g.

    The check runs on a copy of exactly the NTFS's size: ntfsfix looks for the
    backup boot sector in the device's last sector, and the BitLocker volume is
    larger than the NTFS made inside it. ntfsfix --no-action must find nothing to
    mend, and ntfscat must read every file as it was written.
    """
    with plain.open("rb") as f:
        data = f.read(ntfs_size)
    copy = tmp / "ntfs-through-dislocker.img"
    copy.write_bytes(data)
    fix = subprocess.run(
        ["ntfsfix", "--no-action", str(copy)], capture_output=True, text=True, check=False
    )
    assert fix.returncode == 0, fix.stdout + fix.stderr
    got = {name: sha256(run_bytes("ntfscat", str(copy), name)) for name in sorted(want)}
    copy.unlink()
    assert got == want
    return data


def run_bytes(*argv: str) -> bytes:
    return subprocess.run(argv, capture_output=True, check=True).stdout


def dissect_plaintext(device: str, sample: str, length: int) -> bytes:
    """The first ``length`` bytes of the volume as dissect.fve decrypts them."""
    with open(device, "rb") as f:
        bde = BDE(f)
        if sample in RECOVERY:
            bde.unlock_with_recovery_password(RECOVERY[sample])
        else:
            bde.unlock_with_passphrase(PASSWORD)
        stream = bde.open()
        out = io.BytesIO()
        while out.tell() < length:
            chunk = stream.read(min(4 * MiB, length - out.tell()))
            assert chunk
            out.write(chunk)
        return out.getvalue()


def record_of(image: Path, part: str) -> dict[str, Any]:
    record: dict[str, Any] = next(
        p for p in json.loads((image / "rescue.json").read_text())["partitions"]
        if p["name"] == Path(part).name
    )  # fmt: skip
    return record


ROUND_TRIP = [
    pytest.param("aes-xts_128.bin", id="xts128-password"),
    pytest.param("recovery_password.bin", id="xts128-recovery-password"),
    pytest.param("aes_128.bin", id="cbc128-password"),
]


@pytest.mark.parametrize("sample", ROUND_TRIP)
def test_bitlocker_round_trip_keeps_it_encrypted_and_stores_only_used_clusters(
    sample: str, samples: Samples, filled: Fill, loop_disk_factory: DiskFactory, tmp_path: Path
) -> None:
    vol = filled(sample)
    want = expected_files(vol)
    src = bde_disk(loop_disk_factory, vol)
    part = src.parts[1]
    secret = key_file(tmp_path, sample)
    image = tmp_path / "image"
    assert main(["capture", src.path, str(image), "--passphrase-file", f"{part}={secret}"]) == 0
    assert main(["verify", str(image)]) == 0
    record = record_of(image, part)
    assert record["fstype"] == "bitlocker" and record["stored_as"] == "partclone"
    (layer,) = record["layers"]
    assert layer["kind"] == "bitlocker" and layer["state"] == "read"
    (inner,) = layer["volumes"]
    assert inner["fstype"] == "ntfs" and inner["used_bytes"] > 3 * MiB
    stored = sum(f["size"] for f in record["files"])
    assert stored <= 1.05 * inner["used_bytes"] + layer["metadata_bytes"]
    assert stored < vol.ntfs_size / 2  # the free clusters, most of the NTFS, are not kept

    # browse it with the key, without a restore
    mnt = tmp_path / "mnt"
    args = ["mount", str(image), str(mnt), "--partition", "2"]
    assert main([*args, "--passphrase-file", str(secret)]) == 0
    try:
        assert tree_contents(mnt) == want
    finally:
        assert main(["unmount", str(mnt)]) == 0
    out = tmp_path / "out"
    extract = ["extract", str(image), *(f"/{n}" for n in sorted(want)), "--partition", "2"]
    assert main([*extract, "--to", str(out), "--passphrase-file", str(secret)]) == 0
    assert tree_contents(out) == want
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("Not-the-password-9\n")
    assert main([*args, "--passphrase-file", str(wrong)]) == EXIT_REFUSED
    assert main(args) == EXIT_REFUSED
    assert not any(mnt.iterdir())

    target = loop_disk_factory(BOOT_MIB + PART_MIB + 20, None, [])  # larger: the partition grows
    assert main(["restore", str(image), target.path, "--yes"]) == 0
    target.rescan()
    restored = target.parts[1]
    key = dislocker_key(sample, samples)
    with dislocker(Path(restored), key, tmp_path / "dis", read_only=True) as plain:
        through_dislocker = ntfs_through(plain, vol.ntfs_size, want, tmp_path)
    assert dissect_plaintext(restored, sample, vol.ntfs_size) == through_dislocker

    # stock partclone restores the stream too, to a volume that opens the same
    (stream,) = image.glob(f"*{Path(part).name}.bitlocker-ptcl-img.zst")
    copy = tmp_path / "partclone.img"
    with copy.open("wb") as f:
        f.truncate(int(run("blockdev", "--getsize64", part)))
    res = subprocess.run(
        f"zstd -dc {stream} | partclone.restore -s - -O {copy} -L /dev/null",
        shell=True, capture_output=True, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    with dislocker(copy, key, tmp_path / "dis2", read_only=True) as plain:
        ntfs_through(plain, vol.ntfs_size, want, tmp_path)


WRONG_KEYS = [
    ("Not-the-password-9", "The password given for this BitLocker volume does not open it."),
    (RECOVERY["recovery_password.bin"], "has no recovery password protector"),
]


def test_bitlocker_wrong_key_writes_nothing_and_no_key_stores_it_whole(
    filled: Fill, loop_disk_factory: DiskFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = bde_disk(loop_disk_factory, filled("aes-xts_128.bin"))
    part = src.parts[1]
    image = tmp_path / "image"
    wrong = tmp_path / "wrong.txt"
    for key, message in WRONG_KEYS:
        wrong.write_text(key + "\n")
        code = main(["capture", src.path, str(image), "--passphrase-file", f"{part}={wrong}"])
        assert code == EXIT_REFUSED
        assert message in capsys.readouterr().err
        assert not image.exists()

    # no key, and no terminal to ask one on: stored whole, saying why and what it costs
    got = rescue_command("capture", src.path, str(image))
    assert got.returncode == 0, got.stderr[-2000:]
    said = got.stdout + got.stderr
    assert "locked" in said and f"{PART_MIB}.0 MiB" in said
    record = record_of(image, part)
    assert record["stored_as"] == "dd"
    assert record["layers"][0]["state"] == "locked"
    assert main(["verify", str(image)]) == 0


def test_bitlocker_startup_key_file_opens_it(
    filled: Fill, loop_disk_factory: DiskFactory, tmp_path: Path, samples: Samples
) -> None:
    sample = "startup_key.bin"
    vol = filled(sample)
    src = bde_disk(loop_disk_factory, vol)
    part = src.parts[1]
    bek = samples.get(BEK[sample])
    image = tmp_path / "image"
    assert main(["capture", src.path, str(image), "--key-file", f"{part}={bek}"]) == 0
    record = record_of(image, part)
    assert record["stored_as"] == "partclone" and record["layers"][0]["state"] == "read"
    assert record["layers"][0]["volumes"][0]["fstype"] == "ntfs"
    mnt = tmp_path / "mnt"
    assert main(["mount", str(image), str(mnt), "--partition", "2", "--key-file", str(bek)]) == 0
    try:
        assert tree_contents(mnt) == expected_files(vol)
    finally:
        assert main(["unmount", str(mnt)]) == 0


@pytest.mark.parametrize("sample", ["aes-xts_128.bin", "recovery_password.bin"])
def test_bitlocker_keys_reach_no_file_or_output(
    sample: str, filled: Fill, loop_disk_factory: DiskFactory, tmp_path: Path
) -> None:
    src = bde_disk(loop_disk_factory, filled(sample))
    image = tmp_path / "image"
    secret = secret_text(sample)
    got = rescue_command(
        "--debug", "capture", src.path, str(image),
        "--passphrase-file", f"{src.parts[1]}={key_file(tmp_path, sample)}",
    )  # fmt: skip
    assert got.returncode == 0, got.stderr[-2000:]
    assert "run: " in got.stderr  # --debug logged the programs it ran
    forms = {secret, secret.replace("-", "")}
    for form in forms:
        assert form not in got.stdout and form not in got.stderr
    files = [p for p in image.rglob("*") if p.is_file()]
    assert any(p.name.endswith(".bitlocker-ptcl-img.zst") for p in files)
    for path in files:
        data = path.read_bytes()
        for form in forms:
            assert form.encode() not in data, path
            assert form.encode("utf-16-le") not in data, path
