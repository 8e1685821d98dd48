"""LVM physical volumes, plain and inside LUKS2, through the CLI: capture, restore, browse.

The volumes are real: LVM's own tools make the PV, VG and LVs (no device-mapper,
see lvm_fixtures), each LV's filesystem is made and filled through a loop device
at its extents, and the LUKS2 around Ubuntu's layout (LVM with a root and a swap
LV) is made offline by ``cryptsetup reencrypt``. Capture stores the LVs' used
blocks only; what a restore wrote is judged by readers other than rescue's: LVM's
tools for the layout, e2fsck/xfs_repair and the kernel's filesystems for the
files, cryptsetup's volume key with the test's own AES-XTS (and dissect.fve) for
the encrypted one, and stock partclone.restore for the stream.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from capabilities import need
from conftest import DiskFactory
from diskbench import LoopDisk, PartSpec, run, tree_digest
from layer_fixtures import (
    PASSPHRASE,
    REDUCE,
    decrypt_copy,
    dissect_plaintext,
    make_luks_ext4,
    mounted_digest,
    need_cryptsetup,
)
from lvm_fixtures import (
    LVM_PART_TYPE,
    Layout,
    Lvm,
    MiB,
    attached,
    blkid_at,
    checked_digest,
    make_filesystem,
    need_lvm,
    sparse_file,
    write_into,
)

from rescue.cli import main
from rescue.errors import EXIT_REFUSED

pytestmark = [need("root", "loop", "partclone", "fuse"), pytest.mark.usefixtures("private_run_dir")]

VG = "rlvme_two"
LVS = {"home": ("ext4", 96), "srv": ("xfs", 320)}
"""LV -> (filesystem, MiB); XFS needs at least 300 MB."""
FILL_MIB = 24


def partition_record(image: Path, part: str) -> dict[str, Any]:
    record: dict[str, Any] = next(
        p for p in json.loads((image / "rescue.json").read_text())["partitions"]
        if p["name"] == Path(part).name
    )  # fmt: skip
    return record


def stored_bytes(record: dict[str, Any]) -> int:
    return sum(int(f["size"]) for f in record["files"])


def partclone_restore(stream: Path, out: Path, size: int) -> None:
    """Stock partclone.restore of ``stream`` into a file of ``size`` bytes."""
    sparse_file(out, size)
    res = subprocess.run(
        f"zstd -dc {stream} | partclone.restore -s - -O {out} -L /dev/null",
        shell=True, capture_output=True, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr


def prefixed(digest: dict[str, str], prefix: str) -> dict[str, str]:
    return {k.removeprefix(prefix): v for k, v in digest.items() if k.startswith(prefix)}


# --- a PV with two LVs on a GPT partition ---


@dataclass
class TwoLvs:
    disk: LoopDisk
    layout: Layout
    digests: dict[str, dict[str, str]]

    @property
    def pv(self) -> str:
        return self.disk.parts[1]


def two_lv_disk(factory: DiskFactory, tmp: Path) -> TwoLvs:
    """An ESP and a PV: LVs home (ext4) and srv (xfs), free extents between and after."""
    disk = factory(720, "gpt", [PartSpec(8, "vfat"), PartSpec(None, type=LVM_PART_TYPE)])
    pv = disk.parts[1]
    lvm = Lvm(pv)
    lvm("pvcreate", "-q", pv)
    lvm("vgcreate", "-q", "-s", "4m", VG, pv)
    lvm.lv("lvcreate", "-an", "-Zn", "-q", "-L", f"{LVS['home'][1]}m", "-n", "home", VG)
    lvm.lv("lvcreate", "-an", "-Zn", "-q", "-L", "32m", "-n", "gap", VG)
    lvm.lv("lvcreate", "-an", "-Zn", "-q", "-L", f"{LVS['srv'][1]}m", "-n", "srv", VG)
    lvm.lv("lvremove", "-q", "-f", f"{VG}/gap")  # 32 MiB of free extents between the LVs
    layout = lvm.layout()
    assert set(layout.lvs) == set(LVS)
    mkfs = {"ext4": ["mkfs.ext4", "-q", "-F"], "xfs": ["mkfs.xfs", "-q", "-f"]}
    digests = {
        lv: make_filesystem(pv, *layout.where(lv), mkfs[fs], seed, FILL_MIB, tmp / f"fill-{lv}")
        for seed, (lv, (fs, _)) in enumerate(LVS.items())
    }
    return TwoLvs(disk, layout, digests)


def check_pv(device: str, want: TwoLvs, tmp: Path, tag: str) -> None:
    """The PV on ``device`` has the source's layout, and every LV its filesystem and files."""
    assert Lvm(device).layout() == want.layout
    for lv, (fstype, _) in LVS.items():
        at, size = want.layout.where(lv)
        assert checked_digest(device, at, size, fstype, tmp / f"{tag}-{lv}") == want.digests[lv]


def test_two_lvs_round_trip_by_used_blocks_and_browse_each(
    loop_disk_factory: DiskFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    need_lvm()
    src = two_lv_disk(loop_disk_factory, tmp_path)
    image = tmp_path / "image"
    assert main(["capture", src.disk.path, str(image)]) == 0  # LVM needs no key
    assert main(["verify", str(image)]) == 0
    record = partition_record(image, src.pv)
    assert record["fstype"] == "lvm2" and record["stored_as"] == "partclone"
    (layer,) = record["layers"]
    assert layer["kind"] == "lvm2-pv" and layer["state"] == "read"
    volumes = {v["name"]: v for v in layer["volumes"]}
    assert set(volumes) == {f"{VG}/{lv}" for lv in LVS}
    for lv, (fstype, mib) in LVS.items():
        vol = volumes[f"{VG}/{lv}"]
        assert vol["fstype"] == fstype and vol["size"] == mib * MiB
        assert FILL_MIB * MiB / 2 < vol["used_bytes"] < mib * MiB / 2
    # the stream holds the LVs' used blocks and the PV's metadata, nothing else
    used = sum(v["used_bytes"] for v in volumes.values())
    assert record["used_bytes"] <= 1.05 * used + layer["metadata_bytes"]
    assert stored_bytes(record) <= 1.05 * used + layer["metadata_bytes"]
    part_size = int(run("blockdev", "--getsize64", src.pv))
    assert record["used_bytes"] < part_size / 4 and stored_bytes(record) < part_size / 8

    # restored onto a larger blank disk: LVM's tools and the filesystems' own checkers
    target = loop_disk_factory(800, None, [])
    assert main(["restore", str(image), target.path, "--yes"]) == 0
    target.rescan()
    check_pv(target.parts[1], src, tmp_path, "restored")

    # stock partclone restores the stream to the same PV
    (stream,) = image.glob(f"*{Path(src.pv).name}.lvm2-ptcl-img.zst")
    out = tmp_path / "partclone.img"
    partclone_restore(stream, out, part_size)
    with attached(out, read_only=True) as loop:
        check_pv(loop, src, tmp_path, "partclone")
    out.unlink()

    # browsed without a restore: each LV by name
    mnt = tmp_path / "mnt"
    for lv in LVS:
        args = ["mount", str(image), str(mnt), "--partition", "2", "--volume", f"{VG}/{lv}"]
        assert main(args) == 0
        try:
            assert tree_digest(mnt) == src.digests[lv]
        finally:
            assert main(["unmount", str(mnt)]) == 0
    got = tmp_path / "got"
    args = ["extract", str(image), "/docs", "--partition", "2", "--to", str(got)]
    assert main([*args, "--volume", f"{VG}/srv"]) == 0
    assert tree_digest(got / "docs") == prefixed(src.digests["srv"], "docs/")
    capsys.readouterr()
    assert main(["mount", str(image), str(mnt), "--partition", "2"]) == EXIT_REFUSED
    said = capsys.readouterr().err
    assert f"{VG}/home" in said and f"{VG}/srv" in said, said
    args = ["mount", str(image), str(mnt), "--partition", "2", "--volume", "nosuch/lv"]
    assert main(args) == EXIT_REFUSED
    assert "nosuch/lv" in capsys.readouterr().err
    assert not any(mnt.iterdir())
    assert main(["info", str(image)]) == 0
    said = capsys.readouterr().out
    assert f"{VG}/home" in said and f"{VG}/srv" in said, said


# --- LUKS2 holding LVM with a root and a swap LV (Ubuntu's encrypted install) ---

CRYPT_VG = "rlvme_crypt"
CRYPT_MIB = 120
"""The LUKS partition; the PV inside is 16 MiB smaller (the room the header takes)."""
ROOT_MIB, SWAP_MIB, ROOT_FILL_MIB = 64, 16, 12
CRYPT_PART = 3


@dataclass(frozen=True)
class Encrypted:
    volume: Path
    """The LUKS partition's bytes, to write into a partition."""
    layout: Layout
    digest: dict[str, str]
    """The root LV's files."""
    swap: dict[str, str]
    """blkid of the swap LV."""


@pytest.fixture(scope="module")
def encrypted_lvm(tmp_path_factory: pytest.TempPathFactory) -> Encrypted:
    """A LUKS2 volume whose plaintext is a PV with LVs root (ext4, filled) and swap_1.

    The PV is made on a loop device 16 MiB shorter than the file, since
    ``reencrypt --encrypt --reduce-device-size`` moves the data to make room for
    the header and needs that much free at the end.
    """
    need_lvm()
    need_cryptsetup()
    tmp = tmp_path_factory.mktemp("luks-lvm")
    volume = sparse_file(tmp / "luks-lvm.img", CRYPT_MIB * MiB)
    with attached(volume, size=CRYPT_MIB * MiB - REDUCE) as pv:
        lvm = Lvm(pv)
        lvm("pvcreate", "-q", pv)
        lvm("vgcreate", "-q", "-s", "4m", CRYPT_VG, pv)
        lvm.lv("lvcreate", "-an", "-Zn", "-q", "-L", f"{ROOT_MIB}m", "-n", "root", CRYPT_VG)
        lvm.lv("lvcreate", "-an", "-Zn", "-q", "-L", f"{SWAP_MIB}m", "-n", "swap_1", CRYPT_VG)
        layout = lvm.layout()
        root = layout.where("root")
        digest = make_filesystem(pv, *root, ["mkfs.ext4", "-q", "-F"], 7, ROOT_FILL_MIB,
                                 tmp / "fill-root")  # fmt: skip
        with attached(pv, *layout.where("swap_1")) as swap:
            run("mkswap", "-q", swap)
        swap_id = blkid_at(pv, *layout.where("swap_1"))
    assert swap_id["TYPE"] == "swap" and swap_id["UUID"]
    keyfile = tmp / "key.pass"
    keyfile.write_text(PASSPHRASE)  # no newline: what a typed passphrase is
    run(
        "cryptsetup", "reencrypt", "--encrypt", "--type", "luks2", "--reduce-device-size",
        str(REDUCE), "--batch-mode", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
        "--sector-size", "512", "--key-file", str(keyfile), str(volume),
    )  # fmt: skip
    keyfile.unlink()
    return Encrypted(volume, layout, digest, swap_id)


def encrypted_disk(factory: DiskFactory, encrypted: Encrypted) -> LoopDisk:
    """An ESP, /boot and the LUKS partition, as Ubuntu's installer lays them out."""
    disk = factory(
        CRYPT_MIB + 40,
        "gpt",
        [PartSpec(8, "vfat"), PartSpec(24, "ext4", "boot"), PartSpec(CRYPT_MIB, None)],
    )
    write_into(encrypted.volume, disk.parts[CRYPT_PART - 1])
    return disk


def passphrase_file(tmp: Path, text: str = PASSPHRASE) -> Path:
    path = tmp / "pass.txt"
    path.write_text(text + "\n")  # the first line is the passphrase
    return path


def test_luks2_lvm_root_and_swap_round_trip(
    encrypted_lvm: Encrypted,
    loop_disk_factory: DiskFactory,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    src = encrypted_disk(loop_disk_factory, encrypted_lvm)
    part = src.parts[CRYPT_PART - 1]
    image = tmp_path / "image"
    key = passphrase_file(tmp_path)
    assert main(["capture", src.path, str(image), "--passphrase-file", f"{part}={key}"]) == 0
    assert main(["verify", str(image)]) == 0
    record = partition_record(image, part)
    assert record["fstype"] == "luks" and record["stored_as"] == "partclone"
    (luks,) = record["layers"]
    assert (luks["kind"], luks["name"], luks["state"]) == ("luks", "LUKS2", "read")
    (plain,) = luks["volumes"]
    (lvm,) = plain["layers"]
    assert (lvm["kind"], lvm["state"]) == ("lvm2-pv", "read")
    assert dict(lvm["details"])["volume group"] == CRYPT_VG
    lvs = {v["name"]: v for v in lvm["volumes"]}
    assert set(lvs) == {f"{CRYPT_VG}/root", f"{CRYPT_VG}/swap_1"}
    root, swap = lvs[f"{CRYPT_VG}/root"], lvs[f"{CRYPT_VG}/swap_1"]
    assert root["fstype"] == "ext4" and root["size"] == ROOT_MIB * MiB
    assert ROOT_FILL_MIB * MiB / 2 < root["used_bytes"] < ROOT_MIB * MiB / 2
    assert swap["fstype"] == "swap" and swap["size"] == SWAP_MIB * MiB
    assert swap["used_bytes"] == 64 * 1024 and "only its header" in swap["note"]
    assert plain["note"] is None  # said once, on swap_1 itself
    # the root's used blocks, both layers' metadata and the swap header: nothing else
    most = 1.05 * root["used_bytes"] + luks["metadata_bytes"] + lvm["metadata_bytes"] + 64 * 1024
    assert record["used_bytes"] <= most and stored_bytes(record) <= most
    assert stored_bytes(record) < CRYPT_MIB * MiB / 4

    # restored onto a larger disk with no key, then opened by readers other than rescue's
    target = loop_disk_factory(CRYPT_MIB + 64, None, [])
    assert main(["restore", str(image), target.path, "--yes"]) == 0
    target.rescan()
    restored = target.parts[CRYPT_PART - 1]
    plaintext = tmp_path / "plain.img"
    decrypt_copy(restored, CRYPT_MIB * MiB, plaintext, tmp_path)
    with plaintext.open("rb") as f:
        assert dissect_plaintext(restored, 0, MiB) == f.read(MiB)
    with attached(plaintext, read_only=True) as pv:
        assert Lvm(pv).layout() == encrypted_lvm.layout
        at, size = encrypted_lvm.layout.where("root")
        assert checked_digest(pv, at, size, "ext4", tmp_path / "root") == encrypted_lvm.digest
        swap_id = blkid_at(pv, *encrypted_lvm.layout.where("swap_1"))
    assert (swap_id["TYPE"], swap_id["UUID"]) == ("swap", encrypted_lvm.swap["UUID"])
    plaintext.unlink()

    # browsed with the passphrase, without a restore
    mnt = tmp_path / "mnt"
    args = ["mount", str(image), str(mnt), "--partition", str(CRYPT_PART)]
    assert main([*args, "--volume", f"{CRYPT_VG}/root", "--passphrase-file", str(key)]) == 0
    try:
        assert tree_digest(mnt) == encrypted_lvm.digest
    finally:
        assert main(["unmount", str(mnt)]) == 0
    capsys.readouterr()
    swap_args = [*args, "--volume", f"{CRYPT_VG}/swap_1", "--passphrase-file", str(key)]
    assert main(swap_args) == EXIT_REFUSED
    assert "swap holds no files" in capsys.readouterr().err
    assert main([*args, "--volume", f"{CRYPT_VG}/root"]) == EXIT_REFUSED  # no key
    assert "is locked" in capsys.readouterr().err
    assert not any(mnt.iterdir())
    assert main(["info", str(image)]) == 0
    said = capsys.readouterr().out
    assert f"{CRYPT_VG}/root" in said and f"{CRYPT_VG}/swap_1: 16.0 MiB, swap" in said, said
    assert said.count("only its header") == 2, said  # on swap_1, and in the warnings


def test_luks2_lvm_wrong_passphrase_stores_nothing(
    encrypted_lvm: Encrypted,
    loop_disk_factory: DiskFactory,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    src = encrypted_disk(loop_disk_factory, encrypted_lvm)
    part = src.parts[CRYPT_PART - 1]
    wrong = passphrase_file(tmp_path, "not the passphrase")
    image = tmp_path / "image"
    code = main(["capture", src.path, str(image), "--passphrase-file", f"{part}={wrong}"])
    assert code == EXIT_REFUSED
    assert "does not open it" in capsys.readouterr().err
    assert not image.exists()


def test_luks_inside_an_lv_is_read_with_the_partitions_key(
    loop_disk_factory: DiskFactory, tmp_path: Path
) -> None:
    """LUKS inside an LV (LVM first, then encryption per volume): the key given for the
    partition opens the LV's LUKS volume; its ext4 is stored by used blocks."""
    disk = loop_disk_factory(200, "gpt", [PartSpec(None, type=LVM_PART_TYPE)])
    pv = disk.parts[0]
    lvm = Lvm(pv)
    lvm("pvcreate", "-q", pv)
    lvm("vgcreate", "-q", "-s", "4m", "rlvme_inner", pv)
    lvm.lv("lvcreate", "-an", "-Zn", "-q", "-L", "96m", "-n", "secret", "rlvme_inner")
    at, size = lvm.layout().where("secret")
    volume = tmp_path / "luks.img"
    digest = make_luks_ext4(volume, size, 2, tmp_path, seed=5, mib=12)
    with attached(pv, at, size) as lv:
        write_into(volume, lv)
    image = tmp_path / "image"
    key = f"{pv}={passphrase_file(tmp_path)}"
    assert main(["capture", disk.path, str(image), "--passphrase-file", key]) == 0
    record = partition_record(image, Path(pv).name)
    (layer,) = record["layers"]
    assert (layer["name"], layer["state"]) == ("LVM2 physical volume", "read")
    (lv_info,) = layer["volumes"]
    (inner,) = lv_info["layers"]
    assert (inner["name"], inner["state"]) == ("LUKS2", "read")
    assert inner["volumes"][0]["fstype"] == "ext4"
    assert stored_bytes(record) < size / 2
    target = loop_disk_factory(220, None, [])
    assert main(["restore", str(image), target.path, "--yes"]) == 0
    target.rescan()
    plain = tmp_path / "plain.img"
    with attached(target.parts[0], at, size, read_only=True) as lv:
        decrypt_copy(lv, size, plain, tmp_path)
    assert mounted_digest(plain, tmp_path) == digest
