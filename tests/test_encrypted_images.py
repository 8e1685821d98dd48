"""Encrypted images: every file sealed, opened only with the passphrase, checked without it.

Real disks (loop devices) and real filesystems throughout; stock partclone restores the
plain copy ``rescue decrypt`` makes.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from capabilities import need
from conftest import DiskFactory
from diskbench import LoopDisk, PartSpec, rescue_command, tree_digest
from failing_device import failing_loop

from rescue.cli import main
from rescue.errors import EXIT_UNREADABLE, ImageDamagedError, WrongKeyError
from rescue.image import folder as folder_mod
from rescue.image import sealing

pytestmark = need("root", "loop", "partclone", "fuse")

PASSPHRASE = "grey-heron 7 lantern"
MARKER = b"UNMISTAKABLE-CONTENT-0451"
LABEL = "VAULTLABEL"


@pytest.fixture(autouse=True)
def locked_again() -> Iterator[None]:
    """Each test starts and ends with no image unlocked in this process."""
    folder_mod._SEALED.clear()
    yield
    folder_mod._SEALED.clear()


def lock(image: Path) -> None:
    """Forget this process's key of ``image``: as a new command would find it."""
    folder_mod.forget_sealed(image)


@pytest.fixture
def secret_disk(loop_disk_factory: DiskFactory, tmp_path: Path) -> LoopDisk:
    disk = loop_disk_factory(160, "gpt", [PartSpec(96, "ext4", label=LABEL), PartSpec(None)])
    mnt = disk.mount(0, tmp_path / "fill")
    rng = random.Random(11)
    (mnt / "notes.txt").write_bytes(MARKER * 200)
    (mnt / "docs").mkdir()
    for i in range(20):
        (mnt / "docs" / f"page{i}.txt").write_bytes(b"line of text %d\n" % i * (i * 300 + 1))
    (mnt / "blob.bin").write_bytes(rng.randbytes(6 << 20))
    disk.umount(mnt)
    return disk


@pytest.fixture
def passfile(tmp_path: Path) -> Path:
    p = tmp_path / "pass.txt"
    p.write_text(PASSPHRASE + "\n")
    return p


def digest_of(part: str, mnt: Path) -> dict[str, str]:
    mnt.mkdir(exist_ok=True)
    subprocess.run(["mount", "-o", "ro", part, str(mnt)], check=True)
    try:
        return tree_digest(mnt)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def blank_disk(loop_disk_factory: DiskFactory, size_mib: int) -> LoopDisk:
    return loop_disk_factory(size_mib, None, [])


def every_byte(image: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(image.iterdir()) if p.is_file())


def capture_encrypted(disk: LoopDisk, image: Path, passfile: Path) -> None:
    assert main(["capture", disk.path, str(image), "--encrypt",
                 "--image-passphrase-file", str(passfile)]) == 0  # fmt: skip


def test_encrypted_image_restores_mounts_extracts_and_decrypts(
    secret_disk: LoopDisk, loop_disk_factory: DiskFactory, passfile: Path, tmp_path: Path
) -> None:
    source = digest_of(secret_disk.parts[0], tmp_path / "m0")
    image = tmp_path / "sealed"
    capture_encrypted(secret_disk, image, passfile)

    # nothing of the content, the labels or the passphrase lies in any file of the image
    blob = every_byte(image)
    for needle in (MARKER, LABEL.encode(), PASSPHRASE.encode(), b"page7.txt"):
        assert needle not in blob, needle
    plain = {"rescue.json", sealing.KEY_FILE, sealing.NOTE_FILE}
    names = {p.name for p in image.iterdir()}
    assert {n for n in names if not n.endswith(".sealed")} == plain
    assert "parts" not in names and "disk" not in names  # Clonezilla does not take it for one
    outer = json.loads((image / "rescue.json").read_text())
    assert outer["format_version"] == 2 and "partitions" not in outer
    assert {f["name"] for f in outer["files"]} == names - {"rescue.json"}

    # without the passphrase: the image says what it needs; verify checks the sealed files
    lock(image)
    locked = rescue_command("info", str(image))
    assert locked.returncode == 2 and "encrypted image" in locked.stderr
    assert "--image-passphrase-file" in locked.stderr
    checked = rescue_command("verify", str(image))
    assert checked.returncode == 0, checked.stderr
    assert "without its passphrase" in checked.stdout
    assert f"{len(outer['files'])} file(s) hashed" in checked.stdout
    ok = rescue_command("verify", str(image), "--image-passphrase-file", str(passfile))
    assert ok.returncode == 0 and "2 stream(s) decoded" in ok.stdout, ok.stderr
    shown = rescue_command("info", str(image), "--image-passphrase-file", str(passfile))
    assert shown.returncode == 0 and "encrypted" in shown.stdout, shown.stderr
    as_json = rescue_command("info", str(image), "--json", "--image-passphrase-file", str(passfile))
    assert LABEL in as_json.stdout

    # a wrong passphrase: exit 2, and the target is not touched
    target = blank_disk(loop_disk_factory, 160)
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("not it\n")
    before = Path(target.path).read_bytes()[: 1 << 20]
    refused = rescue_command("restore", str(image), target.path, "--yes",
                             "--image-passphrase-file", str(wrong))  # fmt: skip
    assert refused.returncode == 2 and "does not open" in refused.stderr
    assert Path(target.path).read_bytes()[: 1 << 20] == before

    # restore, with every file as it was
    done = rescue_command("restore", str(image), target.path, "--yes",
                          "--image-passphrase-file", str(passfile))  # fmt: skip
    assert done.returncode == 0, done.stderr
    target.rescan()
    assert digest_of(target.parts[0], tmp_path / "m1") == source

    # mount and extract straight from the sealed image
    mnt = tmp_path / "mnt"
    mounted = rescue_command("mount", str(image), str(mnt), "--partition", "1",
                             "--image-passphrase-file", str(passfile))  # fmt: skip
    assert mounted.returncode == 0, mounted.stderr
    try:
        assert (mnt / "notes.txt").read_bytes() == MARKER * 200
        assert tree_digest(mnt) == source
        # the server holds the key in memory only: not in its arguments or environment
        for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                env = Path(f"/proc/{pid}/environ").read_bytes()
            except OSError:
                continue
            if b"rescue.imagedev.server" in cmd:
                assert PASSPHRASE.encode() not in cmd + env
    finally:
        assert rescue_command("unmount", str(mnt)).returncode == 0
    out = tmp_path / "out"
    got = rescue_command("extract", str(image), "notes.txt", "docs", "--partition", "1",
                         "--to", str(out), "--image-passphrase-file", str(passfile))  # fmt: skip
    assert got.returncode == 0, got.stderr
    assert (out / "notes.txt").read_bytes() == MARKER * 200
    assert (out / "docs" / "page19.txt").read_bytes() == b"line of text 19\n" * (19 * 300 + 1)

    # decrypt: a plain Clonezilla image that stock partclone restores
    plain_dir = tmp_path / "plain"
    made = rescue_command("decrypt", str(image), str(plain_dir),
                          "--image-passphrase-file", str(passfile))  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert not any(p.name.endswith(".sealed") for p in plain_dir.iterdir())
    assert sealing.KEY_FILE not in {p.name for p in plain_dir.iterdir()}
    assert rescue_command("verify", str(plain_dir)).returncode == 0
    (stream,) = plain_dir.glob("*ext4-ptcl-img.zst")
    raw = tmp_path / "p1.raw"
    with raw.open("wb") as f:
        f.truncate(96 << 20)
    res = subprocess.run(f"zstd -dc {stream} | partclone.restore -s - -O {raw} -L /dev/null",
                         shell=True, capture_output=True, check=False)  # fmt: skip
    assert res.returncode == 0, res.stderr
    fsck = subprocess.run(["e2fsck", "-fn", str(raw)], capture_output=True, check=False)
    assert fsck.returncode == 0, fsck.stdout
    assert digest_of(str(raw), tmp_path / "m2") == source


def flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x10
    path.write_bytes(bytes(data))


def test_a_flipped_bit_in_any_file_is_found_with_and_without_the_passphrase(
    secret_disk: LoopDisk, passfile: Path, tmp_path: Path
) -> None:
    image = tmp_path / "sealed"
    capture_encrypted(secret_disk, image, passfile)
    lock(image)
    (stream,) = image.glob("*ext4-ptcl-img.zst.sealed")
    kinds = {
        "stream": (stream.name, stream.stat().st_size // 2),
        "layout file": ("blkid.list.sealed", 40),
        "sealed manifest": ("rescue.json.sealed", 100),
        "partition table": (next(p.name for p in image.glob("*-pt.sf.sealed")), 50),
        "key header": (sealing.KEY_FILE, 120),
    }
    for kind, (name, at) in kinds.items():
        copy = tmp_path / f"copy-{kind.replace(' ', '-')}"
        shutil.copytree(image, copy)
        flip(copy / name, at)
        without = rescue_command("verify", str(copy))
        assert without.returncode != 0, kind
        assert name in without.stderr, (kind, without.stderr)
        opened = rescue_command("verify", str(copy), "--image-passphrase-file", str(passfile))
        assert opened.returncode != 0, kind
        assert name in opened.stderr, (kind, opened.stderr)
    # the chunk named in the message is where the damage is
    copy = tmp_path / "copy-stream"
    err = rescue_command("verify", str(copy), "--image-passphrase-file", str(passfile)).stderr
    assert "fails its authentication" in err or "SHA-256" in err


def test_sealed_files_cannot_be_swapped_cut_or_reordered(tmp_path: Path) -> None:
    header, key = sealing.new_key_header(b"x")
    sealer = sealing.Sealer(key, header.image_id)
    data = random.Random(5).randbytes(3 * sealing.CHUNK + 100)
    sealed = sealer.seal_bytes("a.list", data)
    assert sealer.open_bytes("a.list", sealed, "a") == data
    span = sealing.CHUNK + sealing.OVERHEAD
    head = sealing.HEADER.size
    chunks = [sealed[head + i * span : head + (i + 1) * span] for i in range(4)]
    swapped = sealed[:head] + chunks[1] + chunks[0] + b"".join(chunks[2:])
    other_key = sealing.Sealer(b"k" * 32, header.image_id).seal_bytes("a.list", data)
    attempts = {
        "another file's name": ("b.list", sealed),
        "the last chunk cut off": ("a.list", sealed[: head + 3 * span]),
        "two chunks swapped": ("a.list", swapped),
        "a byte cut": ("a.list", sealed[:-1]),
        "another key": ("a.list", other_key),
    }
    for what, (name, blob) in attempts.items():
        with pytest.raises(ImageDamagedError):
            sealer.open_bytes(name, blob, what)
    for n in (0, 1, sealing.CHUNK - 1, sealing.CHUNK, sealing.CHUNK + 1):
        blob = sealer.seal_bytes("n", bytes(n))
        assert len(blob) == sealing.sealed_size(n) and sealing.plain_size(len(blob)) == n
        assert sealer.open_bytes("n", blob, "n") == bytes(n)
    with pytest.raises(WrongKeyError):
        sealing.open_data_key(b"y", header)
    assert sealing.open_data_key(b"x", header) == key
    assert "k" * 8 not in repr(sealer) and key.hex() not in repr(sealer)


def stream_bytes(image: Path) -> int:
    """Bytes of the sealed stream volumes written so far (files come and go meanwhile)."""
    total = 0
    for p in image.glob("*-ptcl-img.zst.sealed.*") if image.exists() else ():
        with contextlib.suppress(FileNotFoundError):
            total += p.stat().st_size
    return total


def test_a_killed_encrypted_capture_resumes_to_the_plain_capture_s_streams(
    loop_disk_factory: DiskFactory, passfile: Path, tmp_path: Path
) -> None:
    """Sealed chunks carry fresh nonces, so compare the plain streams the two hold."""
    disk = loop_disk_factory(300, "gpt", [PartSpec(260, "ext4")])
    mnt = disk.mount(0, tmp_path / "fill")
    rng = random.Random(8)
    for i in range(5):
        (mnt / f"data{i}.bin").write_bytes(rng.randbytes(30 << 20))
    disk.umount(mnt)
    clean = tmp_path / "clean"
    assert main(["capture", disk.path, str(clean), "--split", "40M"]) == 0

    image = tmp_path / "sealed"
    env = {**os.environ, "RESCUE_CHECKPOINT_SECONDS": "0.1"}
    argv = [sys.executable, "-m", "rescue", "capture"]
    opts = ["--split", "40M", "--image-passphrase-file", str(passfile)]

    def start(*args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen([*argv, *args, *opts], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=env)  # fmt: skip

    proc = start(disk.path, str(image), "--encrypt")
    kills = 0
    while True:
        deadline = time.monotonic() + 60
        begun = stream_bytes(image)
        while proc.poll() is None:
            size = stream_bytes(image)
            if size > begun + (25 << 20):
                break
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.02)
        proc.kill()
        code = proc.wait()
        if code == 0 or (image / "rescue.json").exists():
            break
        kills += 1
        assert (image / ".rescue-capture-map.json.sealed").exists()
        assert not (image / ".rescue-capture-map.json").exists()
        proc = start("--resume", str(image))
    assert kills >= 2
    # resuming needs the passphrase
    assert (image / "rescue.json").exists()
    lock(image)
    assert (
        rescue_command("verify", str(image), "--image-passphrase-file", str(passfile)).returncode
        == 0
    )
    plain = tmp_path / "plain"
    assert rescue_command("decrypt", str(image), str(plain),
                          "--image-passphrase-file", str(passfile)).returncode == 0  # fmt: skip
    streams = sorted(p.name for p in clean.glob("*-ptcl-img.zst*"))
    assert streams == sorted(p.name for p in plain.glob("*-ptcl-img.zst*"))
    for name in streams:
        assert (plain / name).read_bytes() == (clean / name).read_bytes(), name


def test_the_passphrase_is_asked_for_properly_and_never_shown(
    secret_disk: LoopDisk, passfile: Path, tmp_path: Path
) -> None:
    image = tmp_path / "img"
    no_pass = rescue_command("capture", secret_disk.path, str(image), "--encrypt")
    assert no_pass.returncode == 2 and "--image-passphrase-file" in no_pass.stderr
    assert not image.exists()
    stray = rescue_command("capture", secret_disk.path, str(image),
                           "--image-passphrase-file", str(passfile))  # fmt: skip
    assert stray.returncode == 2 and "--encrypt" in stray.stderr
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    assert rescue_command("capture", secret_disk.path, str(image), "--encrypt",
                          "--image-passphrase-file", str(empty)).returncode == 2  # fmt: skip
    debug = subprocess.run(
        [sys.executable, "-m", "rescue", "--debug", "capture", secret_disk.path, str(image),
         "--encrypt", "--image-passphrase-file", str(passfile)],
        capture_output=True, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert debug.returncode == 0, debug.stderr
    assert PASSPHRASE.encode() not in debug.stdout + debug.stderr
    assert PASSPHRASE.encode() not in every_byte(image)
    # an older reader's view: format 2 is refused in words (this reader: with a passphrase)
    doc = json.loads((image / "rescue.json").read_text())
    doc["format_version"] = 4  # newer than any this rescue reads
    (image / "rescue.json").write_text(json.dumps(doc))
    newer = rescue_command("info", str(image), "--image-passphrase-file", str(passfile))
    assert newer.returncode == 2 and "format 4" in newer.stderr


def test_an_encrypted_capture_of_a_failing_disk_holds_what_a_plain_one_holds(
    tmp_path: Path, passfile: Path
) -> None:
    """Bad sectors: the retries' recovered bytes are patched into sealed chunks (each
    resealed) and the damage report is sealed; the plain streams match a plain capture's."""
    img = tmp_path / "source.img"
    with img.open("wb") as f:
        f.truncate(64 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "4096", str(img)], check=True)
    mnt = tmp_path / "m"
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], check=True)
    try:
        (mnt / "victim.bin").write_bytes(random.Random(4).randbytes(6 << 20))
        (mnt / "notes.txt").write_bytes(MARKER * 100)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    out = subprocess.run(["debugfs", "-R", "blocks /victim.bin", str(img)],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    victim = [int(b) for b in out.split()]
    bad = [(victim[10] * 4096, 4096), (victim[700] * 4096, 3 * 4096)]
    plain, sealed = tmp_path / "plain", tmp_path / "sealed"
    with failing_loop(img, bad, tmp_path) as dev:
        assert main(["capture", dev, str(plain), "--retries", "1"]) == EXIT_UNREADABLE
        assert main(["capture", dev, str(sealed), "--retries", "1", "--encrypt",
                     "--image-passphrase-file", str(passfile)]) == EXIT_UNREADABLE  # fmt: skip
    assert (sealed / "damage-report.txt.sealed").is_file()
    assert not (sealed / "damage-report.txt").exists()
    assert b"victim.bin" not in every_byte(sealed) and MARKER not in every_byte(sealed)
    lock(sealed)
    key = ("--image-passphrase-file", str(passfile))
    assert rescue_command("verify", str(sealed), *key).returncode == 0
    opened = tmp_path / "opened"
    assert rescue_command("decrypt", str(sealed), str(opened), *key).returncode == 0
    assert "/victim.bin" in (opened / "damage-report.txt").read_text()
    (stream,) = [p.name for p in plain.glob("*-ptcl-img.zst")]
    assert (opened / stream).read_bytes() == (plain / stream).read_bytes()
    a = json.loads((plain / "rescue.json").read_text())["partitions"][0]
    b = json.loads((opened / "rescue.json").read_text())["partitions"][0]
    assert a["unreadable"] == b["unreadable"] and a["damaged_files"] == b["damaged_files"]
