"""LUKS1 and LUKS2 encrypted volumes (cryptsetup's on-disk format).

Both start with ``LUKS\\xba\\xbe`` and a big-endian version. LUKS1 records the
start of the encrypted data (in 512-byte sectors) in its binary header; LUKS2
keeps a JSON area after its binary header (and a second copy of both after the
first) whose ``segments`` say where the data starts. Everything before the data
is the layer's metadata: headers and keyslots.
"""

from __future__ import annotations

import json
import struct
from typing import BinaryIO

from rescue.containers.base import Container, read_at

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


def _luks1(head: bytes, size: int, uuid: str | None) -> Container:
    cipher = f"{_text(head[8:40])}-{_text(head[40:72])}"
    (payload,) = struct.unpack_from(">I", head, 104)
    data = payload * 512 if 0 < payload * 512 <= size else None
    return Container(
        kind="luks",
        name="LUKS1",
        uuid=uuid,
        metadata=((0, data),) if data else (),
        data_offset=data,
        details=(("cipher", cipher),),
    )


def _luks2(head: bytes, f: BinaryIO, size: int, uuid: str | None) -> Container:
    (hdr_size,) = struct.unpack_from(">Q", head, 8)
    label = _text(head[24:72])
    data: int | None = None
    cipher: str | None = None
    if hdr_size in _LUKS2_HEADER_SIZES and hdr_size <= size:
        area = read_at(f, 4096, hdr_size - 4096)
        try:
            doc = json.loads(area.split(b"\0", 1)[0])
            segments = list(doc["segments"].values())
            data = min(int(s["offset"]) for s in segments)
            cipher = str(segments[0].get("encryption"))
        except (ValueError, KeyError, TypeError, AttributeError):
            data = None
    details = [("label", label)] if label else []
    if cipher:
        details.append(("cipher", cipher))
    ok = data is not None and 0 < data <= size
    return Container(
        kind="luks",
        name="LUKS2",
        uuid=uuid,
        metadata=((0, data),) if ok and data else (),
        data_offset=data if ok else None,
        details=tuple(details),
    )
