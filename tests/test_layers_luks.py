"""LUKS1 and LUKS2 partitions imaged by used blocks, kept encrypted, restored without a key.

Real volumes: ext4 filled in a file, encrypted in place offline by cryptsetup
(see layer_fixtures). The restored partition is checked by readers other than
rescue's: the volume key that cryptsetup gives, sectors decrypted by the test
itself, e2fsck and the kernel's ext4 on the plaintext; dissect.fve opens it with
the passphrase a second way; stock partclone.restore restores the stream.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from capabilities import need
from conftest import DiskFactory
from diskbench import LoopDisk, PartSpec, rescue_command, run, settle, tree_digest
from layer_fixtures import (
    PASSPHRASE,
    MiB,
    decrypt_copy,
    dissect_plaintext,
    make_luks_ext4,
    mounted_digest,
)
from test_tui_workflows import finish_job, make_app, run_ui, select_disk, wait_for
from textual.pilot import Pilot
from textual.widgets import Input

from rescue.cli import main
from rescue.errors import EXIT_REFUSED
from rescue.tui.app import RescueApp

pytestmark = need("root", "loop", "partclone")

PART_MIB = 96


def luks_disk(
    factory: DiskFactory,
    tmp: Path,
    version: int,
    sector: int = 512,
    cipher: str = "aes-xts-plain64",
) -> tuple[LoopDisk, dict[str, str]]:
    disk = factory(PART_MIB + 40, "gpt", [PartSpec(24, "ext4", "boot"), PartSpec(PART_MIB, None)])
    volume = tmp / f"luks{version}.img"
    size = int(run("blockdev", "--getsize64", disk.parts[1]))
    digest = make_luks_ext4(
        volume, size, version, tmp, seed=version, mib=12, sector=sector, cipher=cipher
    )
    with volume.open("rb") as src, open(disk.parts[1], "r+b") as dst:
        while chunk := src.read(4 * MiB):
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    volume.unlink()
    run("udevadm", "trigger", "--action=change", disk.parts[1], check=False)
    settle()
    return disk, digest


def passphrase_file(tmp: Path) -> Path:
    path = tmp / "pass.txt"
    path.write_text(PASSPHRASE + "\n")  # the first line is the passphrase
    return path


@pytest.mark.parametrize(
    ("version", "sector", "cipher"),
    [
        (1, 512, "aes-xts-plain64"),
        (2, 512, "aes-xts-plain64"),
        (2, 4096, "aes-xts-plain64"),
        (1, 512, "aes-cbc-essiv:sha256"),
    ],
    ids=["luks1", "luks2", "luks2-4k", "luks1-cbc-essiv"],
)
def test_luks_round_trip_keeps_it_encrypted_and_stores_only_used_blocks(
    version: int, sector: int, cipher: str, loop_disk_factory: DiskFactory, tmp_path: Path
) -> None:
    src, digest = luks_disk(loop_disk_factory, tmp_path, version, sector, cipher)
    image = tmp_path / "image"
    part = src.parts[1]
    key = f"{part}={passphrase_file(tmp_path)}"
    assert main(["capture", src.path, str(image), "--passphrase-file", key]) == 0
    assert main(["verify", str(image)]) == 0
    record = next(
        p for p in json.loads((image / "rescue.json").read_text())["partitions"]
        if p["name"] == Path(part).name
    )  # fmt: skip
    assert record["fstype"] == "luks" and record["stored_as"] == "partclone"
    (layer,) = record["layers"]
    assert layer["name"] == f"LUKS{version}" and layer["state"] == "read"
    (inner,) = layer["volumes"]
    assert inner["fstype"] == "ext4" and inner["used_bytes"] > 12 * MiB
    # the stream holds the used blocks and the header, nothing else
    assert record["used_bytes"] <= 1.05 * inner["used_bytes"] + layer["metadata_bytes"] + 8192
    stored = sum(f["size"] for f in record["files"])
    assert stored <= 1.05 * inner["used_bytes"] + layer["metadata_bytes"]
    assert stored < PART_MIB * MiB / 3

    # browse it with the key, without a restore
    mnt = tmp_path / "mnt"
    assert main(["mount", str(image), str(mnt), "--partition", "2", "--passphrase-file", key]) == 0
    try:
        assert tree_digest(mnt) == digest
    finally:
        assert main(["unmount", str(mnt)]) == 0
    out = tmp_path / "out"
    args = ["extract", str(image), "/docs", "--partition", "2", "--to", str(out)]
    assert main([*args, "--passphrase-file", str(passphrase_file(tmp_path))]) == 0
    assert tree_digest(out / "docs") == {
        k.removeprefix("docs/"): v for k, v in digest.items() if k.startswith("docs/")
    }
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("wrong\n")
    assert (
        main(["mount", str(image), str(mnt), "--partition", "2", "--passphrase-file", str(wrong)])
        == EXIT_REFUSED
    )
    assert main(["mount", str(image), str(mnt), "--partition", "2"]) == EXIT_REFUSED
    assert not any(mnt.iterdir())

    target = loop_disk_factory(PART_MIB + 60, None, [])  # a larger disk: the partition grows
    assert main(["restore", str(image), target.path, "--yes"]) == 0
    target.rescan()
    plain = tmp_path / "plain.img"
    size = int(run("blockdev", "--getsize64", target.parts[1]))
    decrypt_copy(target.parts[1], size, plain, tmp_path)
    assert mounted_digest(plain, tmp_path) == digest
    with plain.open("rb") as f:
        assert dissect_plaintext(target.parts[1], 0, MiB) == f.read(MiB)

    # stock partclone restores the stream too, to a volume that opens the same
    stream = next(image.glob(f"*{Path(part).name}.luks-ptcl-img.zst"))
    out = tmp_path / "partclone.img"
    size = int(run("blockdev", "--getsize64", part))
    with out.open("wb") as f:
        f.truncate(size)
    res = subprocess.run(
        f"zstd -dc {stream} | partclone.restore -s - -O {out} -L /dev/null",
        shell=True, capture_output=True, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    plain2 = tmp_path / "plain2.img"
    decrypt_copy(str(out), size, plain2, tmp_path)
    assert mounted_digest(plain2, tmp_path) == digest


def test_luks_wrong_key_writes_nothing_and_no_key_stores_it_whole(
    loop_disk_factory: DiskFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, _ = luks_disk(loop_disk_factory, tmp_path, 2)
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("not the passphrase\n")
    image = tmp_path / "image"
    part = src.parts[1]
    code = main(["capture", src.path, str(image), "--passphrase-file", f"{part}={wrong}"])
    assert code == EXIT_REFUSED
    assert "does not open it" in capsys.readouterr().err
    assert not image.exists()
    # a key for a partition the source does not have is refused the same way
    code = main(["capture", src.path, str(image), "--passphrase-file", f"nosuch9={wrong}"])
    assert code == EXIT_REFUSED and not image.exists()

    assert main(["capture", src.path, str(image)]) == 0
    said = capsys.readouterr()
    assert "locked" in said.out + said.err and "96.0 MiB" in said.out + said.err
    record = next(
        p for p in json.loads((image / "rescue.json").read_text())["partitions"]
        if p["name"] == Path(part).name
    )  # fmt: skip
    assert record["stored_as"] == "dd" and record["layers"][0]["state"] == "locked"


def test_keys_reach_no_file_log_output_or_argument(
    loop_disk_factory: DiskFactory, tmp_path: Path
) -> None:
    """The passphrase is searched for in the image, the --debug output and the arguments
    of every program rescue ran (recorded by wrappers first on PATH)."""
    src, _ = luks_disk(loop_disk_factory, tmp_path, 2)
    shims = tmp_path / "shims"
    shims.mkdir()
    argv_log = tmp_path / "argv.log"
    for tool in (
        "cryptsetup",
        "blkid",
        "sfdisk",
        "sgdisk",
        "dumpe2fs",
        "udevadm",
        "partclone.restore",
    ):
        real = run("sh", "-c", f"command -v {tool} || echo /usr/sbin/{tool}").strip()
        shim = shims / tool
        shim.write_text(f'#!/bin/sh\nprintf "%s\\n" "$0 $*" >> {argv_log}\nexec {real} "$@"\n')
        shim.chmod(0o755)
    image = tmp_path / "image"
    part = src.parts[1]
    got = rescue_command(
        "--debug", "capture", src.path, str(image),
        "--passphrase-file", f"{part}={passphrase_file(tmp_path)}",
        env={"PATH": f"{shims}:{os.environ['PATH']}"},
    )  # fmt: skip
    assert got.returncode == 0, got.stderr[-2000:]
    assert "cryptsetup luksDump" in argv_log.read_text()  # the wrapper saw the unlock
    assert "run: " in got.stderr  # --debug logged the programs it ran
    assert PASSPHRASE not in got.stdout and PASSPHRASE not in got.stderr
    assert PASSPHRASE not in argv_log.read_text()
    for path in image.rglob("*"):
        if path.is_file():
            assert PASSPHRASE.encode() not in path.read_bytes(), path


def test_the_capture_screen_asks_for_the_key_of_each_encrypted_partition(
    loop_disk_factory: DiskFactory, tmp_path: Path
) -> None:
    """The key typed into the capture screen's hidden field opens the volume; the image
    is then small and the layer read."""
    src, _ = luks_disk(loop_disk_factory, tmp_path, 2)
    dest = tmp_path / "dest"
    dest.mkdir()
    name = Path(src.parts[1]).name

    async def scenario(pilot: Pilot[int], app: RescueApp) -> None:
        select_disk(app, "disks", src.path)
        await pilot.press("c")
        await wait_for(pilot, lambda: bool(app.screen.query("#keys Input")))
        label = " ".join(str(w.render()) for w in app.screen.query("#keys Label"))
        assert name in label and "LUKS2" in label and "96.0 MiB" in label
        (key,) = app.screen.query("#keys Input").results(Input)
        assert key.password  # typed characters are not shown
        key.value = PASSPHRASE
        app.screen.query_one("#dest", Input).value = str(dest)
        app.screen.query_one("#name", Input).value = "pc-image"
        await pilot.press("ctrl+s")
        job = await finish_job(pilot, app)
        assert job.outcome == "ok", job.message

    run_ui(scenario, make_app())
    record = next(
        p for p in json.loads((dest / "pc-image" / "rescue.json").read_text())["partitions"]
        if p["name"] == name
    )  # fmt: skip
    assert record["stored_as"] == "partclone" and record["layers"][0]["state"] == "read"


def test_a_luks_key_file_opens_it_byte_for_byte(
    loop_disk_factory: DiskFactory, tmp_path: Path
) -> None:
    """A binary key file (newlines and all) added as a second keyslot opens the volume."""
    src, _ = luks_disk(loop_disk_factory, tmp_path, 2)
    keyfile = tmp_path / "volume.key"
    keyfile.write_bytes(bytes(range(256)) + b"\n\n")
    current = tmp_path / "current.pass"
    current.write_text(PASSPHRASE)
    run("cryptsetup", "luksAddKey", "--batch-mode", "--pbkdf", "pbkdf2",
        "--pbkdf-force-iterations", "1000", "--key-file", str(current), src.parts[1],
        str(keyfile))  # fmt: skip
    image = tmp_path / "image"
    assert main(["capture", src.path, str(image), "--key-file", f"{src.parts[1]}={keyfile}"]) == 0
    record = next(
        p for p in json.loads((image / "rescue.json").read_text())["partitions"]
        if p["name"] == Path(src.parts[1]).name
    )  # fmt: skip
    assert record["layers"][0]["state"] == "read"
    # the same bytes less the last newline are another key: refused, nothing written
    cut = tmp_path / "cut.key"
    cut.write_bytes(keyfile.read_bytes()[:-1])
    other = tmp_path / "other"
    code = main(["capture", src.path, str(other), "--key-file", f"{Path(src.parts[1]).name}={cut}"])
    assert code == EXIT_REFUSED and not other.exists()
