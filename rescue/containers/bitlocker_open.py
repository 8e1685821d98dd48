"""Reading through BitLocker: unlock with dissect.fve, decrypt the sectors with OpenSSL.

dissect.fve parses the FVE metadata (the three copies, their datasets, the
encrypt-on-write bitmaps) and turns a password, recovery password, startup key
(``.bek``) or the clear key of a suspended volume into the full-volume
encryption key (FVEK). Its own stream decrypts in Python at about 2 MB/s, so the
sectors are decrypted here with ``cryptography`` (OpenSSL) in bulk:

* AES-XTS 128/256 (Windows 10 on): the tweak is the sector number.
* AES-CBC 128/256 without diffuser (Windows 7 to 8.1): each sector is CBC on its
  own, its IV the FVEK's AES-ECB of the sector's byte offset on the partition.
* AES-CBC with the Elephant diffuser (Vista, 7): dissect.fve's implementation
  (pure Python, slow, but correct; such volumes are old and rare).

What the inner NTFS sees differs from the partition in three places, as the
BitLocker driver presents it: its first sectors (the NTFS boot sector and what
follows) were moved by BitLocker to the "virtualized" block and are read from
there (Vista leaves them in place and only patches the boot sector); the FVE
metadata blocks and the moved header read as zeros; and sectors the conversion
has not reached yet (past the boundary of a paused conversion, or chunks an
encrypt-on-write bitmap marks clear) are plaintext already.
"""

from __future__ import annotations

import bisect
import io
import re
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from dissect.fve.bde.bde import BDE
from dissect.fve.bde.c_bde import CIPHER_MAP, FVE_KEY_PROTECTOR, FVE_KEY_TYPE, FVE_STATE
from dissect.fve.crypto import create_cipher

from rescue.containers.base import Container, Opened
from rescue.containers.keys import Secret, SecretKind
from rescue.errors import DeviceError, FilesystemError, WrongKeyError

VOLUME_NAME = "BitLocker volume"
READ_WITH = "dissect.fve (metadata, unlock) + OpenSSL (sectors)"
READ_WITH_DIFFUSER = "dissect.fve (metadata, unlock, Elephant diffuser sectors)"

_VISTA_PLAIN = 0x2000
"""Vista leaves the first 8 KiB of the volume unencrypted, in place."""

_ENCRYPTION_NAMES = {
    FVE_KEY_TYPE.AES_128_DIFFUSER: "AES-CBC 128 with Elephant diffuser",
    FVE_KEY_TYPE.AES_256_DIFFUSER: "AES-CBC 256 with Elephant diffuser",
    FVE_KEY_TYPE.AES_128: "AES-CBC 128",
    FVE_KEY_TYPE.AES_256: "AES-CBC 256",
    FVE_KEY_TYPE.AES_XTS_128: "AES-XTS 128",
    FVE_KEY_TYPE.AES_XTS_256: "AES-XTS 256",
}

_PROTECTOR_NAMES = {
    FVE_KEY_PROTECTOR.CLEAR: "clear key (protection suspended)",
    FVE_KEY_PROTECTOR.TPM: "TPM",
    FVE_KEY_PROTECTOR.EXTERNAL: "startup key (.bek file)",
    FVE_KEY_PROTECTOR.TPM_PIN: "TPM and PIN",
    FVE_KEY_PROTECTOR.RECOVERY_PASSWORD: "recovery password",
    FVE_KEY_PROTECTOR.PASSPHRASE: "password",
}

_RECOVERY_FORM = re.compile(r"\d{6}(?:[- ]?\d{6}){7}")
"""A recovery password as Windows shows it (eight groups of six digits), dashes optional."""


# --- sector ciphers -------------------------------------------------------------------


class SectorCipher(Protocol):
    def decrypt(self, data: bytes, sector: int) -> bytes:
        """Plaintext of whole sectors ``data`` whose first is partition sector ``sector``."""
        ...


class _XtsSectors:
    """AES-XTS: the FVEK is the data key and the tweak key, the tweak the sector number."""

    def __init__(self, key: bytes, sector_size: int) -> None:
        self._algorithm = algorithms.AES(key)
        self._sector_size = sector_size

    def decrypt(self, data: bytes, sector: int) -> bytes:
        size = self._sector_size
        view = memoryview(data)
        out = []
        for n, start in enumerate(range(0, len(data), size), sector):
            tweak = n.to_bytes(16, "little")
            dec = Cipher(self._algorithm, modes.XTS(tweak)).decryptor()
            out.append(dec.update(view[start : start + size]))
        return b"".join(out)


class _CbcSectors:
    """AES-CBC per sector, the IV being AES-ECB(FVEK, byte offset of the sector).

    CBC decryption is ECB decryption XORed with the previous ciphertext block (the
    IV for a sector's first): one ECB call over every block, one call for the
    IVs, and one XOR over the whole buffer as Python integers.
    """

    def __init__(self, key: bytes, sector_size: int) -> None:
        self._ecb = Cipher(algorithms.AES(key), modes.ECB())  # noqa: S305 (CBC done by hand)
        self._sector_size = sector_size

    def decrypt(self, data: bytes, sector: int) -> bytes:
        size = self._sector_size
        count = len(data) // size
        offsets = b"".join(((sector + i) * size).to_bytes(16, "little") for i in range(count))
        ivs = self._ecb.encryptor().update(offsets)
        plain_blocks = self._ecb.decryptor().update(data)
        view = memoryview(data)
        previous = b"".join(
            ivs[16 * i : 16 * i + 16] + view[i * size : (i + 1) * size - 16] for i in range(count)
        )
        mixed = int.from_bytes(plain_blocks, "little") ^ int.from_bytes(previous, "little")
        return mixed.to_bytes(len(data), "little")


class _DissectSectors:
    """dissect.fve's own cipher (used for the Elephant diffuser, in pure Python)."""

    def __init__(self, key_type: FVE_KEY_TYPE, key: bytes, sector_size: int) -> None:
        self._cipher = create_cipher(
            CIPHER_MAP[key_type], key, sector_size=sector_size, iv_sector_size=sector_size
        )

    def decrypt(self, data: bytes, sector: int) -> bytes:
        result: bytes = self._cipher.decrypt(data, sector)
        return result


def sector_cipher(key_type: FVE_KEY_TYPE, fvek: bytes, sector_size: int) -> SectorCipher:
    """The bulk decrypter for a volume's encryption method and FVEK."""
    if key_type == FVE_KEY_TYPE.AES_XTS_128:
        return _XtsSectors(fvek[:32], sector_size)
    if key_type == FVE_KEY_TYPE.AES_XTS_256:
        return _XtsSectors(fvek[:64], sector_size)
    if key_type == FVE_KEY_TYPE.AES_128:
        return _CbcSectors(fvek[:16], sector_size)
    if key_type == FVE_KEY_TYPE.AES_256:
        return _CbcSectors(fvek[:32], sector_size)
    if key_type in (FVE_KEY_TYPE.AES_128_DIFFUSER, FVE_KEY_TYPE.AES_256_DIFFUSER):
        return _DissectSectors(key_type, fvek, sector_size)
    raise FilesystemError(f"BitLocker encryption method 0x{int(key_type):04x} is not known.")


# --- where each sector of the inner volume comes from ---------------------------------

_PLAIN, _ENCRYPTED, _ZERO, _VISTA_HEADER = range(4)
"""Kinds of run: read as is, decrypt, zeros (BitLocker's own areas), Vista's boot sector."""

_FIXED, _MAPPED = range(2)
"""Segments of the inner volume: of one kind throughout, or following the conversion state."""


@dataclass(frozen=True)
class _Bitmap:
    """One encrypt-on-write bitmap: which chunks of its region are encrypted."""

    first: int
    """First partition sector of the region."""
    end: int
    bits: bytes
    nbits: int


@dataclass(frozen=True)
class Layout:
    """Where BitLocker keeps each sector of the inner volume, in partition sectors."""

    sector_size: int
    sectors: int
    segments: tuple[tuple[int, int, int, int], ...]
    """``(first, end, segment kind or run kind, outer first)``, in order, covering all."""
    encrypted: bool
    """The volume has an FVEK (it is not fully decrypted)."""
    boundary: int | None
    """First sector that the conversion has not reached (plaintext from there), if any."""
    bitmaps: tuple[_Bitmap, ...] = ()
    chunk_sectors: int = 0
    vista_mft2: int | None = None
    """Vista: the MFT mirror's cluster, patched into the boot sector it shows."""

    def runs(self, first: int, count: int) -> Iterator[tuple[int, int, int]]:
        """``(run kind, partition sector, count)`` for inner sectors ``first`` on, merged."""
        pending: list[int] | None = None
        for kind, outer, n in self._raw_runs(first, count):
            if pending and pending[0] == kind and pending[1] + pending[2] == outer:
                pending[2] += n
                continue
            if pending:
                yield pending[0], pending[1], pending[2]
            pending = [kind, outer, n]
        if pending:
            yield pending[0], pending[1], pending[2]

    def _raw_runs(self, first: int, count: int) -> Iterator[tuple[int, int, int]]:
        starts = [s[0] for s in self.segments]
        index = bisect.bisect_right(starts, first) - 1
        sector, end = first, min(first + count, self.sectors)
        while sector < end:
            seg_first, seg_end, kind, outer_first = self.segments[index]
            n = min(seg_end, end) - sector
            outer = outer_first + sector - seg_first
            if kind == _MAPPED:
                yield from self._state_runs(outer, n)
            else:
                yield kind, outer, n
            sector += n
            index += 1

    def _state_runs(self, outer: int, count: int) -> Iterator[tuple[int, int, int]]:
        """Encrypted or plaintext, as the conversion left partition sectors ``outer`` on."""
        if not self.encrypted:
            yield _PLAIN, outer, count
            return
        if self.bitmaps:
            yield from self._bitmap_runs(outer, count)
            return
        if self.boundary is not None and outer < self.boundary:
            n = min(count, self.boundary - outer)
            yield _ENCRYPTED, outer, n
            outer, count = outer + n, count - n
        if count:
            yield (_PLAIN if self.boundary is not None else _ENCRYPTED), outer, count

    def _bitmap_runs(self, outer: int, count: int) -> Iterator[tuple[int, int, int]]:
        firsts = [b.first for b in self.bitmaps]
        end = outer + count
        while outer < end:
            index = bisect.bisect_right(firsts, outer) - 1
            bitmap = self.bitmaps[index] if index >= 0 else None
            if bitmap is None or outer >= bitmap.end:
                # outside every bitmap's region: never converted
                later = firsts[index + 1] if index + 1 < len(firsts) else end
                n = min(end, later) - outer
                yield _PLAIN, outer, n
                outer += n
                continue
            chunk = (outer - bitmap.first) // self.chunk_sectors
            chunk_end = bitmap.first + (chunk + 1) * self.chunk_sectors
            n = min(end, chunk_end, bitmap.end) - outer
            bit = chunk < bitmap.nbits and bitmap.bits[chunk >> 3] >> (chunk & 7) & 1
            yield (_ENCRYPTED if bit else _PLAIN), outer, n
            outer += n

    def outer_ranges(self, offset: int, length: int) -> Iterator[tuple[int, int]]:
        """Byte ranges of the partition that hold inner bytes ``offset`` to ``offset + length``."""
        ss = self.sector_size
        end = min(offset + length, self.sectors * ss)
        if offset >= end:
            return
        starts = [s[0] for s in self.segments]
        index = bisect.bisect_right(starts, offset // ss) - 1
        pending: tuple[int, int] | None = None
        pos = offset
        while pos < end:
            seg_first, seg_end, _kind, outer_first = self.segments[index]
            stop = min(end, seg_end * ss)
            start = outer_first * ss + pos - seg_first * ss
            if pending and pending[0] + pending[1] == start:
                pending = (pending[0], pending[1] + stop - pos)
            else:
                if pending:
                    yield pending
                pending = (start, stop - pos)
            pos = stop
            index += 1
        if pending:
            yield pending


def _merge(regions: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """``(first, end)`` intervals sorted and merged where they touch or overlap."""
    merged: list[tuple[int, int]] = []
    for first, end in sorted(regions):
        if merged and first <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        elif end > first:
            merged.append((first, end))
    return merged


def layout_of(bde: BDE, size: int) -> Layout:
    """The map of the inner volume from dissect.fve's parse of the FVE metadata."""
    ss = int(bde.sector_size)
    if ss < 512 or ss & (ss - 1):
        raise FilesystemError(f"BitLocker sector size {ss} is not possible.")
    sectors = size // ss
    info = bde.information
    version = int(bde.version)
    fixed: list[tuple[int, int, int, int]] = []  # (first, end, kind, outer first)
    if version == 1:
        head = min(_VISTA_PLAIN // ss, sectors)
        fixed.append((0, 1, _VISTA_HEADER, 0))
        fixed.append((1, head, _PLAIN, 1))
    else:
        head = min(int(info.virtualized_sectors), sectors)
        base = int(info.virtualized_block_offset) // ss
        if head and base + head > sectors:
            raise FilesystemError("BitLocker's metadata puts the volume header past the partition.")
        if head:
            fixed.append((0, head, _MAPPED, base))
    zeros = _merge(
        [(max(first, head), min(first + n, sectors)) for first, n in bde.reserved_regions()]
    )
    segments: list[tuple[int, int, int, int]] = list(fixed)
    pos = head
    for first, end in zeros:
        if first >= sectors:
            break
        if first > pos:
            segments.append((pos, first, _MAPPED, pos))
        segments.append((first, end, _ZERO, first))
        pos = end
    if pos < sectors:
        segments.append((pos, sectors, _MAPPED, pos))
    segments = [s for s in segments if s[1] > s[0]]

    state_offset = int(info.state_offset)
    boundary = state_offset // ss if state_offset else None
    bitmaps: list[_Bitmap] = []
    chunk_sectors = 0
    eow = bde.eow_information
    if eow is not None:
        chunk_sectors = int(eow.chunk_size) // ss
        if chunk_sectors <= 0:
            raise FilesystemError("The BitLocker encrypt-on-write chunk size is not possible.")
        for bitmap in eow.bitmaps:
            record = bitmap.active_record
            first = int(bitmap.region_offset) // ss
            bitmaps.append(
                _Bitmap(
                    first=first,
                    end=first + int(bitmap.region_size) // ss,
                    bits=bytes(record.bitmap),
                    nbits=min(int(record.bitmap_size), 8 * len(bytes(record.bitmap))),
                )
            )
        bitmaps.sort(key=lambda b: b.first)
    return Layout(
        sector_size=ss,
        sectors=sectors,
        segments=tuple(segments),
        encrypted=bool(bde.encrypted),
        boundary=boundary,
        bitmaps=tuple(bitmaps),
        chunk_sectors=chunk_sectors,
        vista_mft2=int(info.header.Mft2StartLcn) if version == 1 else None,
    )


# --- the volume -----------------------------------------------------------------------


class BitLockerVolume:
    """The plaintext of an unlocked BitLocker volume: the NTFS (or FAT, exFAT) inside."""

    name = VOLUME_NAME

    def __init__(self, f: BinaryIO, layout: Layout, cipher: SectorCipher | None) -> None:
        self._f = f
        self.layout = layout
        self._cipher = cipher
        self.size = layout.sectors * layout.sector_size

    def __repr__(self) -> str:  # never the key
        return f"<{self.name} {self.size} bytes>"

    def _read(self, sector: int, count: int) -> bytes:
        ss = self.layout.sector_size
        self._f.seek(sector * ss)
        data = self._f.read(count * ss)
        if len(data) != count * ss:
            raise DeviceError(f"The BitLocker partition ends before its sector {sector + count}.")
        return data

    def pread(self, offset: int, size: int) -> bytes:
        ss = self.layout.sector_size
        end = min(offset + size, self.size)
        if offset < 0 or size < 0:
            raise ValueError("negative offset or size")
        if offset >= end:
            return b""
        first = offset // ss
        count = -(-end // ss) - first
        parts: list[bytes] = []
        for kind, outer, n in self.layout.runs(first, count):
            if kind == _ZERO:
                parts.append(bytes(n * ss))
                continue
            data = self._read(outer, n)
            if kind == _ENCRYPTED:
                if self._cipher is None:
                    raise FilesystemError("The BitLocker volume has encrypted sectors but no key.")
                data = self._cipher.decrypt(data, outer)
            elif kind == _VISTA_HEADER and self.layout.vista_mft2 is not None:
                patched = bytearray(data)
                patched[0x03:0x0B] = b"NTFS    "
                patched[0x38:0x40] = struct.pack("<Q", self.layout.vista_mft2)
                data = bytes(patched)
            parts.append(data)
        joined = b"".join(parts)
        skip = offset - first * ss
        return joined[skip : skip + end - offset]

    def outer_ranges(self, offset: int, length: int) -> Iterator[tuple[int, int]]:
        return self.layout.outer_ranges(offset, length)


# --- unlocking ------------------------------------------------------------------------


def protectors(bde: BDE) -> list[str]:
    """Names of the protectors whose key opens the volume, as the metadata lists them."""
    names: list[str] = []
    for vmk in bde.information.dataset.find_vmk(max_priority=0xFFFF):
        kind = int(vmk.priority.value) & 0xFF00
        try:
            name = _PROTECTOR_NAMES[FVE_KEY_PROTECTOR(kind)]
        except (KeyError, ValueError):
            name = f"protector 0x{kind:04x}"
        if name not in names:
            names.append(name)
    return names


def _usable(bde: BDE) -> list[str]:
    """Key kinds a technician can give that would open this volume."""
    kinds = []
    if bde.has_recovery_password():
        kinds.append("recovery password")
    if bde.has_passphrase():
        kinds.append("password")
    if bde.has_bek():
        kinds.append("startup key (.bek file)")
    return kinds


def recovery_password(text: str) -> str | None:
    """``text`` as dissect.fve wants a recovery password (dash-separated), if it is one."""
    compact = text.strip()
    if not _RECOVERY_FORM.fullmatch(compact):
        return None
    digits = re.sub(r"[- ]", "", compact)
    return "-".join(digits[i : i + 6] for i in range(0, 48, 6))


def _wrong(kind: str) -> WrongKeyError:
    return WrongKeyError(
        f"The {kind} given for this BitLocker volume does not open it.",
        hint="Check the key belongs to this volume (BitLocker shows the recovery key ID).",
    )


def _needs(bde: BDE, what: str) -> WrongKeyError:
    usable = _usable(bde)
    opens = ", ".join(usable) if usable else "none that can be given here"
    listed = ", ".join(protectors(bde)) or "none"
    return WrongKeyError(
        f"This BitLocker volume {what}; keys that open it: {opens}.",
        hint=f"Its protectors: {listed}.",
    )


def unlock(bde: BDE, secret: Secret | None) -> None:
    """Unlock ``bde`` in place, or raise :class:`WrongKeyError` (never showing the key)."""
    if not bde.encrypted:
        return
    if secret is None:
        if not bde.has_clear_key():
            raise _needs(bde, "needs a key")
        try:
            bde.unlock_with_clear_key()
        except Exception:  # noqa: BLE001 (any failure of the library means the key did not open it)
            raise _wrong("clear key") from None
        return
    if secret.kind == SecretKind.KEY_FILE:
        if not bde.has_bek():
            raise _needs(bde, "has no startup key protector")
        try:
            bde.unlock_with_bek(io.BytesIO(secret.value))
        except Exception:  # noqa: BLE001
            raise _wrong("startup key (.bek file)") from None
        return
    try:
        text = secret.value.decode("utf-8")
    except UnicodeDecodeError:
        raise _wrong("password") from None
    recovery = recovery_password(text)
    if recovery is not None:
        if not bde.has_recovery_password():
            raise _needs(bde, "has no recovery password protector")
        try:
            bde.unlock_with_recovery_password(recovery)
        except Exception:  # noqa: BLE001
            raise _wrong("recovery password") from None
        return
    if not bde.has_passphrase():
        raise _needs(bde, "has no password protector")
    try:
        bde.unlock_with_passphrase(text)
    except Exception:  # noqa: BLE001
        raise _wrong("password") from None


def _metadata(bde: BDE, layout: Layout, size: int) -> tuple[tuple[int, int], ...]:
    """The partition's ranges BitLocker keeps for itself: stored always, as they are."""
    ss = layout.sector_size
    info = bde.information
    head = _VISTA_PLAIN if int(bde.version) == 1 else max(1, int(info.virtualized_sectors)) * ss
    regions = [(0, head)]
    for first, n in bde.reserved_regions():  # FVE blocks, moved header, EOW bitmaps, logs
        regions.append((first * ss, (first + n) * ss))
    block = max(n for _first, n in bde.reserved_regions()[:1]) * ss
    # every copy, valid or not
    regions.extend((int(o), int(o) + block) for o in bde.boot_sector.information_offsets)
    clipped = [(a, min(b, size)) for a, b in regions if a < size]
    return tuple((a, b - a) for a, b in _merge(clipped))


def open_bitlocker(f: BinaryIO, size: int, found: Container, secret: Secret | None) -> Opened:
    """Unlock the BitLocker volume in ``f`` and give its plaintext as one volume."""
    try:
        f.seek(0)
        bde = BDE(f)
    except Exception:  # noqa: BLE001 (the library's parse errors come in many kinds)
        raise FilesystemError(
            f"The {found.name} metadata here cannot be read (all copies damaged?)."
        ) from None
    unlock(bde, secret)
    layout = layout_of(bde, size)
    # dissect.fve keeps the unlocked FVEK and its type in these attributes
    key_type = bde._fvek_type
    fvek = bde._fvek
    cipher: SectorCipher | None = None
    encryption = "none (decrypted)"
    read_with = READ_WITH
    if bde.encrypted:
        if key_type is None or fvek is None:
            raise _needs(bde, "needs a key")
        key_type = FVE_KEY_TYPE(key_type)
        cipher = sector_cipher(key_type, bytes(fvek), layout.sector_size)
        encryption = _ENCRYPTION_NAMES.get(key_type, key_type.name)
        if isinstance(cipher, _DissectSectors):
            read_with = READ_WITH_DIFFUSER
    state = FVE_STATE(bde.information.current_state).name.lower().replace("_", " ")
    details = [
        ("encryption", encryption),
        ("protectors", ", ".join(protectors(bde)) or "none"),
        ("state", state),
        ("read with", read_with),
    ]
    if layout.boundary is not None and layout.boundary < layout.sectors and not layout.bitmaps:
        details.append(("converted up to", f"byte {layout.boundary * layout.sector_size}"))
    if layout.bitmaps:
        details.append(("conversion", "encrypt on write (bitmaps say which chunks)"))
    return Opened(
        volumes=(BitLockerVolume(f, layout, cipher),),
        metadata=_metadata(bde, layout, size),
        details=tuple(details),
    )
