"""LVM2 physical volumes.

A label sector (``LABELONE`` ... ``LVM2 001``) in one of the first four sectors
points to the PV header: the PV's UUID, its size, the data area (where the
physical extents start, ``pe_start``) and the metadata areas, which hold the
volume group's text metadata (a ring buffer after the label, usually in the
first MiB).
"""

from __future__ import annotations

import struct
from typing import BinaryIO

from rescue.containers.base import Container

LABEL = b"LABELONE"
TYPE = b"LVM2 001"
_MAX_AREAS = 16


def _uuid(raw: bytes) -> str:
    text = raw.decode("ascii", errors="replace")
    cuts = (6, 4, 4, 4, 4, 4, 6)
    out, pos = [], 0
    for n in cuts:
        out.append(text[pos : pos + n])
        pos += n
    return "-".join(out)


def _areas(head: bytes, pos: int) -> tuple[list[tuple[int, int]], int]:
    """A zero-terminated list of (offset, size) disk areas at ``pos``; and where it ends."""
    found = []
    for _ in range(_MAX_AREAS):
        if pos + 16 > len(head):
            break
        offset, size = struct.unpack_from("<QQ", head, pos)
        pos += 16
        if offset == 0:
            break
        found.append((offset, size))
    return found, pos


def probe(head: bytes, f: BinaryIO, size: int) -> Container | None:
    for sector in range(4):
        at = sector * 512
        if head[at : at + 8] == LABEL and head[at + 24 : at + 32] == TYPE:
            break
    else:
        return None
    (offset,) = struct.unpack_from("<I", head, at + 20)
    pv = at + offset
    if pv + 40 > len(head):
        return None
    uuid = _uuid(head[pv : pv + 32])
    data, pos = _areas(head, pv + 40)
    meta, _ = _areas(head, pos)
    pe_start = data[0][0] if data else None
    metadata = [(0, at + 512)]
    metadata += [(o, n) for o, n in meta if 0 < o < size]
    return Container(
        kind="lvm2-pv",
        name="LVM2 physical volume",
        uuid=uuid,
        metadata=tuple(metadata),
        data_offset=pe_start if pe_start and pe_start < size else None,
    )
