"""LUKS1 and LUKS2 encrypted volumes (cryptsetup's on-disk format).

Both start with ``LUKS\\xba\\xbe`` and a big-endian version. LUKS1 records the
start of the encrypted data (in 512-byte sectors) in its binary header; LUKS2
keeps a JSON area after its binary header (and a second copy of both after the
first) whose ``segments`` say where the data starts. Everything before the data
is the layer's metadata: headers and keyslots.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from rescue import system
from rescue.containers.base import Container, Opened, read_at
from rescue.containers.keys import Secret, SecretKind
from rescue.containers.sectors import SectorCipher, UnsupportedCipherError
from rescue.errors import ExternalToolError, FilesystemError, WrongKeyError

MAGIC = b"LUKS\xba\xbe"
_LUKS2_HEADER_SIZES = {1 << n for n in range(14, 23)}  # 16 KiB ... 4 MiB, as the spec allows


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("ascii", errors="replace")


def probe(head: bytes, f: BinaryIO, size: int) -> Container | None:
    if head[:6] != MAGIC or len(head) < 512:
        return None
    (version,) = struct.unpack_from(">H", head, 6)
    uuid = _text(head[168:208]) or None
    if version == 1:
        return _luks1(head, size, uuid)
    if version == 2:
        return _luks2(head, f, size, uuid)
    return None


_LUKS1_ACTIVE = 0x00AC71F3
_LUKS1_SLOTS = 8


def _luks1_keyslots(head: bytes, data: int) -> list[tuple[int, int]]:
    """The key material of each active LUKS1 keyslot (offset in sectors, stripes x key bytes)."""
    (key_bytes,) = struct.unpack_from(">I", head, 108)
    out = []
    for slot in range(_LUKS1_SLOTS):
        at = 208 + slot * 48  # active, iterations, salt[32], material offset, stripes
        (active,) = struct.unpack_from(">I", head, at)
        material, stripes = struct.unpack_from(">II", head, at + 40)
        if active == _LUKS1_ACTIVE and 0 < material * 512 < data:
            length = -(-(stripes * key_bytes) // 512) * 512
            out.append((material * 512, min(length, data - material * 512)))
    return out


def _luks1(head: bytes, size: int, uuid: str | None) -> Container:
    cipher = f"{_text(head[8:40])}-{_text(head[40:72])}"
    (payload,) = struct.unpack_from(">I", head, 104)
    data = payload * 512 if 0 < payload * 512 <= size else None
    # the header's first sector, and the key material of the active keyslots: the rest
    # of the room before the data holds nothing (or what the disk held before)
    metadata = [(0, 4096), *_luks1_keyslots(head, data)] if data else []
    return Container(
        kind="luks",
        name="LUKS1",
        uuid=uuid,
        metadata=tuple(metadata),
        data_offset=data,
        details=(("cipher", cipher),),
    )


def _luks2(head: bytes, f: BinaryIO, size: int, uuid: str | None) -> Container:
    (hdr_size,) = struct.unpack_from(">Q", head, 8)
    label = _text(head[24:72])
    data: int | None = None
    cipher: str | None = None
    areas: list[tuple[int, int]] = []
    if hdr_size in _LUKS2_HEADER_SIZES and 2 * hdr_size <= size:
        area = read_at(f, 4096, hdr_size - 4096)
        try:
            doc = json.loads(area.split(b"\0", 1)[0])
            segments = list(doc["segments"].values())
            data = min(int(s["offset"]) for s in segments)
            cipher = str(segments[0].get("encryption"))
            areas = [
                (int(k["area"]["offset"]), int(k["area"]["size"])) for k in doc["keyslots"].values()
            ]
        except (ValueError, KeyError, TypeError, AttributeError):
            data = None
    details = [("label", label)] if label else []
    if cipher:
        details.append(("cipher", cipher))
    ok = data is not None and 2 * hdr_size <= data <= size
    # both copies of the binary header and JSON area, and every keyslot's key material
    # (the room between holds nothing, or what the disk held before)
    if ok and data and all(2 * hdr_size <= o and o + n <= data for o, n in areas):
        metadata = ((0, 2 * hdr_size), *sorted(areas))
    else:
        metadata = ((0, data),) if ok and data else ()
    return Container(
        kind="luks",
        name="LUKS2",
        uuid=uuid,
        metadata=metadata,
        data_offset=data if ok else None,
        details=tuple(details),
    )


MAX_HEADER = 128 << 20
"""The most a LUKS header with its keyslots may take before the data (LUKS2 allows up to
the data offset; cryptsetup makes 16 MiB)."""
_READ_CHUNK = 1 << 20


@dataclass
class LuksVolume:
    """The plaintext of an unlocked LUKS volume, decrypted sector by sector."""

    f: BinaryIO = field(repr=False)
    offset: int
    size: int
    cipher: SectorCipher = field(repr=False)
    name: str = "LUKS volume"

    def pread(self, offset: int, size: int) -> bytes:
        size = max(0, min(size, self.size - offset))
        if size == 0:
            return b""
        sector = self.cipher.sector_size
        first = offset // sector
        last = -(-(offset + size) // sector)
        out = bytearray()
        at = first
        while at < last:
            n = min(last - at, max(1, _READ_CHUNK // sector))
            data = read_at(self.f, self.offset + at * sector, n * sector)
            whole = len(data) // sector * sector
            if whole == 0:
                break
            out += self.cipher.decrypt(at, data[:whole])
            if whole < n * sector:
                break
            at += n
        skip = offset - first * sector
        return bytes(out[skip : skip + size])

    def outer_ranges(self, offset: int, length: int) -> Iterator[tuple[int, int]]:
        """Whole encryption sectors: a used 1 KiB block inside a 4 KiB sector takes the sector."""
        end = min(offset + length, self.size)
        if end <= offset:
            return
        sector = self.cipher.sector_size
        lo = offset // sector * sector
        hi = min(-(-end // sector) * sector, self.size)
        yield self.offset + lo, hi - lo


@dataclass(frozen=True)
class _Segment:
    offset: int
    size: int
    spec: str
    sector_size: int
    iv_tweak: int


def _header_bytes(f: BinaryIO, found: Container) -> bytes:
    end = found.data_offset
    if end is None or end > MAX_HEADER:
        raise FilesystemError(
            f"{found.name}: the header does not say where the encrypted data starts"
            if end is None
            else f"{found.name}: a header of {end} bytes is past any cryptsetup makes"
        )
    data = read_at(f, 0, end)
    if len(data) != end:
        raise FilesystemError(f"{found.name}: the partition ends inside the header")
    return data


def _segment(header: bytes, found: Container, size: int) -> _Segment:
    """Where the data lies and how it is encrypted, from the header's own fields."""
    if found.name == "LUKS1":
        cipher = f"{_text(header[8:40])}-{_text(header[40:72])}"
        assert found.data_offset is not None
        return _Segment(found.data_offset, size - found.data_offset, cipher, 512, 0)
    (hdr_size,) = struct.unpack_from(">Q", header, 8)
    try:
        doc: Any = json.loads(header[4096:hdr_size].split(b"\0", 1)[0])
        segments = doc["segments"]
        requirements = doc.get("config", {}).get("requirements", {}).get("mandatory", [])
    except (ValueError, KeyError, TypeError, AttributeError):
        raise FilesystemError(f"{found.name}: the JSON metadata cannot be read") from None
    if requirements:
        raise UnsupportedCipherError(
            f"the volume needs {', '.join(map(str, requirements))} (a re-encryption was "
            "interrupted?); open it once with cryptsetup to finish that"
        )
    if not isinstance(segments, dict) or len(segments) != 1:
        raise UnsupportedCipherError("the volume has several data segments (re-encryption?)")
    (seg,) = segments.values()
    try:
        if seg.get("type") != "crypt":
            raise UnsupportedCipherError(f"a data segment of type {seg.get('type')!r}")
        offset = int(seg["offset"])
        length = size - offset if seg["size"] == "dynamic" else int(seg["size"])
        sector = int(seg.get("sector_size", 512))
        tweak = int(seg.get("iv_tweak", "0"))
        spec = str(seg["encryption"])
    except (KeyError, TypeError, ValueError):
        raise FilesystemError(f"{found.name}: the data segment cannot be read") from None
    if sector not in (512, 1024, 2048, 4096) or not 0 < offset < size or length <= 0:
        raise FilesystemError(f"{found.name}: the data segment does not fit the partition")
    return _Segment(offset, min(length, size - offset), spec, sector, tweak)


_KEY_LINE = re.compile(rb"^(?:MK dump|Volume key):\s*(.*)$")


def volume_key(header: bytes, secret: Secret, what: str) -> bytes:
    """The volume key, from cryptsetup reading a copy of the header in memory.

    The secret goes to cryptsetup through its standard input (``--key-file -``,
    read to its end: a passphrase without its line ending, a key file as is), the
    header through a memory file: nothing touches a disk or an argument list.
    """
    fd = os.memfd_create("rescue-luks-header", os.MFD_CLOEXEC)
    try:
        os.pwrite(fd, header, 0)
        try:
            result = system.run(
                ["cryptsetup", "luksDump", "--dump-volume-key", "--batch-mode",
                 "--key-file", "-", f"/proc/self/fd/{fd}"],
                input=secret.value, check=False, timeout=300, pass_fds=(fd,),
            )  # fmt: skip
        except ExternalToolError as exc:
            raise ExternalToolError(exc.message, hint=exc.hint) from None
    finally:
        os.close(fd)
    if result.returncode == 2 or b"No key available" in result.stderr:
        given = "passphrase" if secret.kind == SecretKind.PASSPHRASE else "key file"
        raise WrongKeyError(
            f"The {given} given for {what} does not open it.",
            hint="Check the passphrase (or key file) and try again; nothing was written.",
        )
    if result.returncode != 0:
        raise ExternalToolError(
            f"cryptsetup could not read the header of {what} (exit {result.returncode}): "
            + result.stderr.decode(errors="replace").strip()[-300:]
        )
    key = bytearray()
    collecting = False
    for line in result.stdout.splitlines():
        m = _KEY_LINE.match(line.strip())
        if m:
            collecting = True
            hexes = m.group(1)
        elif collecting and re.fullmatch(rb"[\s0-9a-fA-F]+", line.strip() or b"x"):
            hexes = line
        else:
            collecting = False
            continue
        key += bytes.fromhex(hexes.decode("ascii"))
    if not key:
        raise ExternalToolError(f"cryptsetup gave no volume key for {what}.")
    return bytes(key)


def open_layer(f: BinaryIO, size: int, found: Container, secret: Secret | None) -> Opened:
    """The plaintext of the LUKS volume in ``f``, unlocked with ``secret``.

    Without a secret the volume stays locked: :class:`WrongKeyError` says so (the
    caller stores it whole). A cipher rescue cannot decrypt raises
    :class:`UnsupportedCipherError` (stored whole, with that reason).
    """
    what = f"the {found.name} volume" + (f" {found.uuid}" if found.uuid else "")
    if secret is None:
        raise WrongKeyError(
            f"{what} is locked: give its passphrase (--passphrase-file) or key file (--key-file)."
        )
    header = _header_bytes(f, found)
    seg = _segment(header, found, size)
    key = volume_key(header, secret, what)
    # IVs count 512-byte units whatever the encryption sector (cryptsetup does not set
    # dm-crypt's iv_large_sectors for LUKS2): sector n of 4 KiB has IV 8n; iv_tweak too
    shift = (seg.sector_size // 512).bit_length() - 1
    cipher = SectorCipher(
        seg.spec, key, sector_size=seg.sector_size, iv_shift=shift, iv_offset=seg.iv_tweak
    )
    volume = LuksVolume(f, seg.offset, seg.size, cipher, name=f"{found.name} volume")
    return Opened(
        volumes=(volume,),
        details=(
            ("cipher", f"{seg.spec}, {len(key) * 8}-bit key, {seg.sector_size}-byte sectors"),
            ("read with", "cryptsetup (header, unlock) + OpenSSL (sectors)"),
        ),
    )
