"""Volume layers are recognised by their own signatures, before any filesystem.

Real volumes only: LUKS1/LUKS2 headers written by cryptsetup into plain files,
an LVM2 physical volume written by pvcreate on a loop device (no device-mapper
needed for either, see TESTBED.md), and BitLocker volumes made by Windows, as
shipped in dissect.fve's source distribution on PyPI (fetched once per run).
"""

from __future__ import annotations

import gzip
import io
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from capabilities import need
from diskbench import run

from rescue.containers.stack import allocation_for, find_container
from rescue.filesystems.detect import allocation_for as filesystem_allocation

MiB = 1 << 20
LVM_CONFIG = "devices{use_devicesfile=0} backup{backup=0 archive=0}"


def luks_volume(path: Path, version: int) -> str:
    """A LUKS volume of 32 MiB in ``path``; returns the UUID cryptsetup gave it."""
    if shutil.which("cryptsetup") is None:
        pytest.skip("cryptsetup is not installed")
    key = path.with_suffix(".key")
    key.write_bytes(b"not-a-real-key")
    with path.open("wb") as f:
        f.truncate(32 * MiB)
    run(
        "cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", "--pbkdf", "pbkdf2",
        "--pbkdf-force-iterations", "1000", "--sector-size", "512", "--key-file", str(key),
        str(path),
    )  # fmt: skip
    if version == 1:  # LUKS1 is made by converting (it needs 512-byte sectors)
        run("cryptsetup", "convert", "--batch-mode", "--type", "luks1", str(path))
    return run("cryptsetup", "luksUUID", str(path)).strip()


def data_offset(path: Path) -> int:
    dump = run("cryptsetup", "luksDump", str(path))
    for line in dump.splitlines():
        words = line.split()
        if line.strip().startswith("Payload offset:"):  # LUKS1, in sectors
            return int(words[-1]) * 512
        if line.strip().startswith("offset:"):  # LUKS2, in bytes
            return int(words[1])
    raise AssertionError(f"no data offset in:\n{dump}")


@pytest.mark.parametrize("version", [1, 2])
def test_luks_is_recognised_with_its_uuid_and_data_offset(tmp_path: Path, version: int) -> None:
    vol = tmp_path / "luks.img"
    uuid = luks_volume(vol, version)
    with vol.open("rb") as f:
        found = find_container(f, vol.stat().st_size)
    assert found is not None
    assert (found.kind, found.name, found.uuid) == ("luks", f"LUKS{version}", uuid)
    assert found.data_offset == data_offset(vol)
    # the headers and the key material of each keyslot, as luksDump places them
    assert found.metadata[0][0] == 0
    assert all(o + n <= found.data_offset for o, n in found.metadata)
    assert keyslot_areas(vol) == list(found.metadata[1:])
    assert dict(found.details)["cipher"].startswith("aes-xts")


def keyslot_areas(path: Path) -> list[tuple[int, int]]:
    dump = run("cryptsetup", "luksDump", str(path))
    areas = []
    for line in dump.splitlines():
        words = line.replace(":", " ").split()
        if line.strip().startswith("Area offset"):  # LUKS2: in bytes, the length follows
            areas.append((int(words[2]), -1))
        elif line.strip().startswith("Area length"):
            areas[-1] = (areas[-1][0], int(words[2]))
        elif line.strip().startswith("Key material offset"):  # LUKS1: in sectors
            areas.append((int(words[3]) * 512, -1))
        elif line.strip().startswith("AF stripes") and areas and areas[-1][1] == -1:
            stripes = int(words[2])
            areas[-1] = (areas[-1][0], stripes * 64)  # 512-bit XTS key
    return areas


def test_a_luks_partition_is_stored_whole_with_the_reason(tmp_path: Path) -> None:
    vol = tmp_path / "luks.img"
    uuid = luks_volume(vol, 2)
    size = vol.stat().st_size
    with vol.open("rb") as f:
        alloc = allocation_for(f, size, "crypto_LUKS")
    assert alloc.fstype == "dd" and alloc.used_bytes == size
    (reason,) = alloc.warnings
    assert f"LUKS2 (UUID {uuid}) is an encrypted volume: stored whole" in reason


@need("root", "loop")
def test_an_lvm_physical_volume_is_recognised(tmp_path: Path) -> None:
    if shutil.which("pvcreate") is None:
        pytest.skip("lvm2 is not installed")
    backing = tmp_path / "pv.img"
    with backing.open("wb") as f:
        f.truncate(64 * MiB)
    loop = run("losetup", "--find", "--show", str(backing)).strip()
    try:
        lvm = ["--devices", loop, "--config", LVM_CONFIG]
        run("pvcreate", "-q", *lvm, loop)
        report = run(
            "pvs", "--noheadings", "--units", "b", "--nosuffix", "-o", "pv_uuid,pe_start", *lvm
        ).split()
        with open(loop, "rb") as f:
            found = find_container(f, 64 * MiB)
    finally:
        run("losetup", "-d", loop, check=False)
    assert found is not None
    assert (found.kind, found.uuid, found.data_offset) == ("lvm2-pv", report[0], int(report[1]))
    assert found.metadata[0] == (0, 1024)  # the label sector (the second sector) and before it
    assert any(offset == 4096 for offset, _ in found.metadata[1:])  # the metadata area


@pytest.fixture(scope="session")
def bitlocker_samples(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """BitLocker volumes made by Windows, from dissect.fve's source distribution."""
    where = tmp_path_factory.mktemp("fve")
    got = subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
         "dissect.fve==4.6", "-d", str(where)],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    sdists = list(where.glob("dissect*fve-4.6.tar.gz"))
    if got.returncode != 0 or not sdists:
        pytest.skip(f"dissect.fve's source distribution could not be fetched: {got.stderr[-300:]}")
    with tarfile.open(sdists[0]) as tar:
        for member in tar.getmembers():
            if "/tests/_data/bde/" in member.name and member.name.endswith(
                ("aes_128.bin.gz", "vista.bin.gz")
            ):
                data = tar.extractfile(member)
                assert data is not None
                raw = gzip.decompress(data.read())
                (where / Path(member.name).name.removesuffix(".gz")).write_bytes(raw)
    yield where


@pytest.mark.parametrize(
    ("sample", "name", "copies", "fat_like"),
    [("aes_128.bin", "BitLocker", 3, True), ("vista.bin", "BitLocker (Windows Vista)", 1, False)],
)
def test_bitlocker_is_not_taken_for_fat(
    bitlocker_samples: Path, sample: str, name: str, copies: int, fat_like: bool
) -> None:
    raw = (bitlocker_samples / sample).read_bytes()
    found = find_container(io.BytesIO(raw), len(raw))
    assert found is not None
    assert (found.kind, found.name) == ("bitlocker", name)
    assert dict(found.details)["metadata copies"] == str(copies)
    for offset, _ in found.metadata[1:]:
        assert raw[offset : offset + 8] == b"-FVE-FS-"
    # from Windows 7 on, the filesystems alone take it for a damaged FAT; the stack says what it is
    alone = " ".join(filesystem_allocation(io.BytesIO(raw), len(raw)).warnings)
    assert ("FAT" in alone) is fat_like
    (reason,) = allocation_for(io.BytesIO(raw), len(raw)).warnings
    assert reason.startswith(f"{name} is an encrypted volume: stored whole")


def test_plain_filesystems_and_blank_space_are_no_container(tmp_path: Path) -> None:
    blank = io.BytesIO(bytes(4 * MiB))
    assert find_container(blank, 4 * MiB) is None
    fs = tmp_path / "ext4.img"
    with fs.open("wb") as f:
        f.truncate(16 * MiB)
    run("mkfs.ext4", "-q", "-F", str(fs))
    with fs.open("rb") as f:
        assert find_container(f, 16 * MiB) is None
        assert allocation_for(f, 16 * MiB).fstype == "ext4"
