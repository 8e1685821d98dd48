"""Reading through BitLocker: every kind of key, every cipher the samples have.

The volumes are Windows' own (dissect.fve's test data, see bde_fixtures.py).
What rescue reads is checked against two independent readers: dislocker-fuse
(which also put a real NTFS with files inside) and dissect.fve's own
decrypting stream, on the same sectors.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from bde_fixtures import BEK, PASSWORD, RECOVERY, MiB, Samples, fill_with_ntfs
from dissect.fve.bde import BDE

from rescue.containers import bitlocker
from rescue.containers.base import Container, Opened, Volume, binary_view
from rescue.containers.bitlocker_open import recovery_password
from rescue.containers.keys import Secret, SecretKind
from rescue.errors import WrongKeyError
from rescue.filesystems.detect import allocation_for


@pytest.fixture(scope="session")
def samples(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Samples]:
    yield Samples(tmp_path_factory.mktemp("bde"))


def secret_for(sample: str, samples: Samples) -> Secret | None:
    """The key dissect.fve's tests open ``sample`` with, as a technician would give it."""
    if sample in RECOVERY:
        return Secret(SecretKind.PASSPHRASE, RECOVERY[sample].encode())
    if sample in BEK:
        return Secret(SecretKind.KEY_FILE, samples.get(BEK[sample]).read_bytes())
    if sample in ("suspended.bin", "decrypted.bin"):
        return None
    return Secret(SecretKind.PASSPHRASE, PASSWORD.encode())


def probe(raw: io.BufferedReader, size: int) -> Container:
    found = bitlocker.probe(raw.read(64 * 1024), raw, size)
    assert found is not None
    return found


def open_file(path: Path, secret: Secret | None) -> tuple[Opened, int]:
    raw = path.open("rb")
    size = path.stat().st_size
    return bitlocker.open_layer(raw, size, probe(raw, size), secret), size


def dissect_stream(path: Path, secret: Secret | None) -> io.RawIOBase:
    """dissect.fve's own plaintext stream of ``path``, unlocked the same way."""
    bde = BDE(path.open("rb"))
    if secret is None:
        if bde.encrypted:
            bde.unlock_with_clear_key()
    elif secret.kind == SecretKind.KEY_FILE:
        bde.unlock_with_bek(io.BytesIO(secret.value))
    elif (recovery := recovery_password(secret.value.decode())) is not None:
        bde.unlock_with_recovery_password(recovery)
    else:
        bde.unlock_with_passphrase(secret.value.decode())
    stream: io.RawIOBase = bde.open()
    return stream


def inside(ranges: tuple[tuple[int, int], ...], offset: int, length: int) -> bool:
    return any(o <= offset and offset + length <= o + n for o, n in ranges)


def used_ranges(vol: Volume) -> list[tuple[int, int]]:
    alloc = allocation_for(binary_view(vol), vol.size)
    assert alloc.fstype == "ntfs" and not alloc.raw, alloc.warnings
    bs = alloc.block_size
    return [(first * bs, count * bs) for first, count in alloc.runs()]


# --- real NTFS inside, compared with dislocker-fuse ----------------------------------

KEYS = [
    pytest.param("aes-xts_128.bin", "AES-XTS 128", id="xts128-password"),
    pytest.param("recovery_password.bin", "AES-XTS 128", id="xts128-recovery-password"),
    pytest.param("startup_key.bin", "AES-XTS 128", id="xts128-bek"),
    pytest.param("suspended.bin", "AES-XTS 128", id="xts128-clear-key"),
    pytest.param("aes-xts_256.bin", "AES-XTS 256", id="xts256-password"),
    pytest.param("aes_128.bin", "AES-CBC 128", id="cbc128-password"),
    pytest.param("aes_256.bin", "AES-CBC 256", id="cbc256-password"),
    pytest.param(
        "aes_128_diffuser.bin",
        "AES-CBC 128 with Elephant diffuser",
        id="cbc128-diffuser-password",
        marks=pytest.mark.slow,
    ),
]


@pytest.mark.parametrize(("sample", "encryption"), KEYS)
def test_each_key_reads_the_ntfs_that_dislocker_wrote(
    samples: Samples, tmp_path: Path, sample: str, encryption: str
) -> None:
    filled = fill_with_ntfs(samples, sample, tmp_path)
    opened, size = open_file(filled.volume, secret_for(sample, samples))
    (vol,) = opened.volumes
    assert vol.name == "BitLocker volume"
    assert dict(opened.details)["encryption"] == encryption
    assert dict(opened.details)["read with"].startswith("dissect.fve")
    used = used_ranges(vol)
    assert sum(n for _, n in used) > 3 * MiB  # the files are in the map
    for offset, length in used:
        assert offset + length <= filled.ntfs_size
        assert vol.pread(offset, length) == filled.plaintext[offset : offset + length]
        for outer, n in vol.outer_ranges(offset, length):
            assert outer >= 0 and outer + n <= size
    # the NTFS boot sector and what follows were moved: they are stored where they lie
    (head,) = vol.outer_ranges(0, 8192)
    assert head[0] != 0 and inside(opened.metadata, *head)


# --- the same sectors as dissect.fve's own stream ------------------------------------

CIPHERS = [
    pytest.param("aes-xts_128.bin", 256 * 1024, id="xts128"),
    pytest.param("aes-xts_256.bin", 256 * 1024, id="xts256"),
    pytest.param("aes_128.bin", 256 * 1024, id="cbc128"),
    pytest.param("aes_256.bin", 256 * 1024, id="cbc256"),
    pytest.param("aes_128_diffuser.bin", 64 * 1024, id="cbc128-diffuser"),
    pytest.param("aes_256_diffuser.bin", 64 * 1024, id="cbc256-diffuser"),
    pytest.param("vista.bin", 64 * 1024, id="vista"),
    pytest.param("decrypted.bin", 256 * 1024, id="decrypted"),
]


@pytest.mark.parametrize(("sample", "span"), CIPHERS)
def test_plaintext_matches_dissect_fve_on_the_same_sectors(
    samples: Samples, sample: str, span: int
) -> None:
    path = samples.get(sample)
    secret = secret_for(sample, samples)
    opened, _ = open_file(path, secret)
    (vol,) = opened.volumes
    stream = dissect_stream(path, secret)
    # the moved header, a stretch of data, and every BitLocker area with its edges
    # (dissect.fve decrypts XTS at about 2 MB/s: the spans are short; dislocker
    # checks whole filesystems above)
    starts = [0, 4096 + 512, 3 * MiB]
    starts += [offset - 4096 for offset, _ in opened.metadata if offset >= 4096]
    for start in starts:
        length = min(span, vol.size - start)
        stream.seek(start)
        assert vol.pread(start, length) == stream.read(length), f"at {start}"
    assert vol.pread(0, 512)[3:11] == b"NTFS    "


def test_vista_shows_its_boot_sector_patched_in_place(samples: Samples) -> None:
    path = samples.get("vista.bin")
    opened, _ = open_file(path, secret_for("vista.bin", samples))
    (vol,) = opened.volumes
    assert list(vol.outer_ranges(0, 8192)) == [(0, 8192)]  # Vista moves nothing
    assert opened.metadata[0] == (0, 8192)  # its plaintext head is kept
    assert dict(opened.details)["protectors"] == "startup key (.bek file), recovery password"


def test_encrypt_on_write_chunks_follow_the_bitmaps(samples: Samples) -> None:
    """A volume Windows was converting chunk by chunk: clear chunks read as they are."""
    path = samples.get("eow_partial.bin")
    secret = secret_for("eow_partial.bin", samples)
    opened, _ = open_file(path, secret)
    (vol,) = opened.volumes
    stream = dissect_stream(path, secret)
    chunk = 0x800000
    for n in range(0, 33, 4):  # the region whose bitmap has clear and encrypted chunks
        start = 0x2202000 + n * chunk
        stream.seek(start)
        assert vol.pread(start, chunk) == stream.read(chunk), f"chunk {n}"
    assert "encrypt on write" in dict(opened.details)["conversion"]


@pytest.mark.slow
def test_a_paused_conversion_reads_plaintext_past_its_boundary(samples: Samples) -> None:
    path = samples.get("win7_partial.bin")  # 2.7 GiB sparse, Windows 7, paused half way
    opened, _ = open_file(path, None)  # suspended: the clear key opens it
    (vol,) = opened.volumes
    stream = dissect_stream(path, None)
    boundary = int(dict(opened.details)["converted up to"].split()[-1])
    for start in (0, boundary - MiB, boundary - 512, boundary, vol.size - MiB):
        stream.seek(start)
        assert vol.pread(start, MiB) == stream.read(MiB), f"at {start}"
    assert dict(opened.details)["state"] == "paused"


# --- keys that do not open it --------------------------------------------------------

WRONG = [
    pytest.param(
        "aes-xts_128.bin",
        Secret(SecretKind.PASSPHRASE, b"Not-the-password-9"),
        "The password given for this BitLocker volume does not open it.",
        id="password",
    ),
    pytest.param(
        "recovery_password.bin",
        Secret(SecretKind.PASSPHRASE, b"000000-000000-000000-000000-000000-000000-000000-000000"),
        "The recovery password given for this BitLocker volume does not open it.",
        id="recovery-password",
    ),
    pytest.param(
        "recovery_password.bin",
        Secret(SecretKind.PASSPHRASE, b"123456-123456-123456-123456-123456-123456-123456-123456"),
        "The recovery password given for this BitLocker volume does not open it.",
        id="recovery-password-bad-checksum",
    ),
    pytest.param(
        "startup_key.bin",
        Secret(SecretKind.KEY_FILE, b"\x01" * 156),
        "The startup key (.bek file) given for this BitLocker volume does not open it.",
        id="garbage-bek",
    ),
]


@pytest.mark.parametrize(("sample", "secret", "message"), WRONG)
def test_a_wrong_key_is_refused_without_showing_it(
    samples: Samples, caplog: pytest.LogCaptureFixture, sample: str, secret: Secret, message: str
) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(WrongKeyError) as info:
        open_file(samples.get(sample), secret)
    assert info.value.message == message
    shown = [str(info.value), repr(info.value), caplog.text, repr(info.value.__cause__)]
    for text in shown:
        assert secret.value.decode("latin-1") not in text
        assert secret.value.hex() not in text
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_another_volumes_startup_key_is_refused(samples: Samples) -> None:
    other = Secret(SecretKind.KEY_FILE, samples.get("recovery_key.bek").read_bytes())
    with pytest.raises(WrongKeyError, match=r"startup key \(\.bek file\) given .* does not open"):
        open_file(samples.get("startup_key.bin"), other)


@pytest.mark.parametrize(
    ("sample", "opens", "protectors"),
    [
        ("recovery_password.bin", "recovery password, password", "recovery password, password"),
        (
            "startup_key.bin",
            "password, startup key (.bek file)",
            "startup key (.bek file), password",
        ),
    ],
)
def test_no_key_names_the_protectors(
    samples: Samples, sample: str, opens: str, protectors: str
) -> None:
    with pytest.raises(WrongKeyError) as info:
        open_file(samples.get(sample), None)
    assert info.value.message == f"This BitLocker volume needs a key; keys that open it: {opens}."
    assert info.value.hint == f"Its protectors: {protectors}."


def test_a_key_of_a_kind_the_volume_lacks_says_which_kinds_it_has(samples: Samples) -> None:
    recovery = Secret(SecretKind.PASSPHRASE, RECOVERY["recovery_password.bin"].encode())
    with pytest.raises(WrongKeyError, match="has no recovery password protector; keys that open"):
        open_file(samples.get("aes-xts_128.bin"), recovery)


def test_the_volume_and_what_it_opened_to_never_show_the_key(samples: Samples) -> None:
    opened, _ = open_file(samples.get("aes-xts_128.bin"), secret_for("aes-xts_128.bin", samples))
    # the FVEK as dissect.fve's tests give it for this volume (verified: it decrypts it)
    fvek = "4eb949c473f0edfc379ad041670ddb9c4da0abdb4482a2c8bb47250493aa1ed5"
    assert fvek not in repr(opened) and PASSWORD not in repr(opened)
    assert fvek not in repr(opened.volumes[0].__dict__).replace("\\x", "")


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("284867-596541-514998-422114-660297-261613-215424-199408", True),
        (" 284867596541514998422114660297261613215424199408\n", True),
        ("284867 596541 514998 422114 660297 261613 215424 199408", True),
        ("password12!@", False),
        ("284867-596541-514998-422114-660297-261613-215424", False),
    ],
)
def test_recovery_passwords_are_told_from_passwords_by_their_form(
    typed: str, expected: bool
) -> None:
    got = recovery_password(typed)
    assert (got is not None) is expected
    if got is not None:
        assert got == "284867-596541-514998-422114-660297-261613-215424-199408"
