"""Real encrypted and layered volumes for the layer tests, made without device-mapper.

An ext4 is made and filled in a plain file, shrunk to leave room for a header,
then encrypted in place, offline, by ``cryptsetup reencrypt --encrypt`` (LUKS1
by converting a LUKS2 made with 512-byte sectors), as TESTBED.md describes.

To check a restored volume independently of rescue's own reader, the volume
key comes from ``cryptsetup luksDump --dump-volume-key`` and the sectors are
decrypted here (AES-XTS, plain64 tweak), and dissect.fve opens it a second way.
"""

from __future__ import annotations

import hashlib
import shutil
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from diskbench import fill_tree, run, tree_digest
from dissect.fve.luks import LUKS

MiB = 1 << 20
PASSPHRASE = "correct horse battery staple 7"
"""The passphrase of the test volumes (tests grep for it afterwards)."""
REDUCE = 16 * MiB
"""Room ``reencrypt --reduce-device-size`` takes at the start for the header."""


def need_cryptsetup() -> None:
    if shutil.which("cryptsetup") is None:
        pytest.skip("cryptsetup is not installed")


def make_luks_ext4(
    path: Path,
    size: int,
    version: int,
    tmp: Path,
    seed: int,
    mib: int,
    sector: int = 512,
    cipher: str = "aes-xts-plain64",
) -> dict[str, str]:
    """A LUKS volume of ``size`` bytes holding a filled ext4; returns the files' digest."""
    need_cryptsetup()
    with path.open("wb") as f:
        f.truncate(size)
    run("mkfs.ext4", "-q", "-F", "-b", "4096", str(path), f"{(size - REDUCE) // 1024}k")
    mnt = tmp / f"fill-{path.name}"
    mnt.mkdir()
    run("mount", "-o", "loop", str(path), str(mnt))
    try:
        fill_tree(mnt, seed, mib)
        digest = tree_digest(mnt)
    finally:
        run("umount", str(mnt))
    keyfile = tmp / f"{path.name}.pass"
    keyfile.write_text(PASSPHRASE)  # no newline: what a typed passphrase is
    run(
        "cryptsetup", "reencrypt", "--encrypt", "--type", "luks2", "--reduce-device-size",
        str(REDUCE), "--batch-mode", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
        "--sector-size", str(sector), "--cipher", cipher, "--key-file", str(keyfile), str(path),
    )  # fmt: skip
    if version == 1:
        run("cryptsetup", "convert", "--batch-mode", "--type", "luks1", str(path))
    keyfile.unlink()
    return digest


def volume_key(device: str, tmp: Path) -> bytes:
    keyfile = tmp / "vk.pass"
    keyfile.write_text(PASSPHRASE)
    out = run("cryptsetup", "luksDump", "--dump-volume-key", "--batch-mode", "--key-file",
              str(keyfile), device)  # fmt: skip
    keyfile.unlink()
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("MK dump:"))
    hexes = [lines[start].split(":", 1)[1]]
    hexes += [line for line in lines[start + 1 :] if line.startswith("\t\t")]
    return bytes.fromhex("".join(hexes))


def payload(device: str) -> tuple[int, int]:
    """(data offset in bytes, encryption sector size) as luksDump prints them."""
    dump = run("cryptsetup", "luksDump", device)
    offset, sector = None, 512
    for line in dump.splitlines():
        words = line.split()
        if line.startswith("Payload offset:"):
            offset = int(words[-1]) * 512
        elif line.strip().startswith("offset:") and offset is None:
            offset = int(words[1])
        elif line.strip().startswith("sector:"):
            sector = int(words[1])
    assert offset is not None, dump
    return offset, sector


def cipher_mode(device: str) -> str:
    dump = run("cryptsetup", "luksDump", device)
    for line in dump.splitlines():
        if line.startswith("Cipher mode:"):  # LUKS1
            return line.split()[-1]
        if line.strip().startswith("cipher:"):  # LUKS2 segment
            return line.split()[-1].split("-", 1)[1]
    raise AssertionError(f"no cipher in:\n{dump}")


def decrypt_copy(device: str, size: int, out: Path, tmp: Path) -> None:
    """The plaintext of the LUKS volume on ``device``, decrypted here into ``out``
    (AES-XTS plain64 or AES-CBC ESSIV:SHA256, the two defaults cryptsetup has had)."""
    key = volume_key(device, tmp)
    offset, sector = payload(device)
    mode = cipher_mode(device)
    assert mode in ("xts-plain64", "cbc-essiv:sha256"), mode
    algo = algorithms.AES(key)
    essiv = Cipher(algorithms.AES(hashlib.sha256(key).digest()), modes.ECB()).encryptor()
    with open(device, "rb") as src, out.open("wb") as dst:
        src.seek(offset)
        n = 0
        while offset + n * sector < size:
            chunk = src.read(sector * 2048)
            if not chunk:
                break
            plain = bytearray()
            for i in range(len(chunk) // sector):
                # dm-crypt's IV counts 512-byte units, also for 4 KiB sectors
                tweak = struct.pack("<Q", (n + i) * (sector // 512)) + bytes(8)
                if mode == "xts-plain64":
                    dec = Cipher(algo, modes.XTS(tweak)).decryptor()
                else:
                    dec = Cipher(algo, modes.CBC(essiv.update(tweak))).decryptor()
                plain += dec.update(chunk[i * sector : (i + 1) * sector])
            dst.write(plain)
            n += len(chunk) // sector


def dissect_plaintext(device: str, offset: int, length: int) -> bytes:
    """``length`` bytes of the volume's plaintext at ``offset``, as dissect.fve reads them."""
    with open(device, "rb") as fh:
        volume = LUKS(fh)
        volume.unlock_with_passphrase(PASSPHRASE)
        stream = volume.open()
        stream.seek(offset)
        return bytes(stream.read(length))


def mounted_digest(plain: Path, tmp: Path) -> dict[str, str]:
    run("e2fsck", "-fn", str(plain))
    mnt = tmp / f"check-{plain.name}"
    mnt.mkdir()
    run("mount", "-o", "loop,ro", str(plain), str(mnt))
    try:
        return tree_digest(mnt)
    finally:
        run("umount", str(mnt))
