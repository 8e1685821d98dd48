"""BitLocker volumes (Windows Vista and later, BitLocker To Go aside).

The volume's first sector is a FAT-like boot sector whose OEM name is
``-FVE-FS-``; it must not be taken for FAT. From Windows 7 on it carries the
BitLocker GUID at 0xA0 and the offsets of the three copies of the FVE metadata
(keys protected by each protector, the encryption state) at 0xB0, 0xB8, 0xC0;
Vista's carries one, in clusters, at 0x38. Each metadata block starts with the
same signature.
"""

from __future__ import annotations

import struct
import uuid as uuid_mod
from typing import BinaryIO

from rescue.containers.base import Container, Opened, read_at
from rescue.containers.keys import Secret

SIGNATURE = b"-FVE-FS-"
BITLOCKER_GUID = uuid_mod.UUID("4967d63b-2e29-4ad8-8399-f6a339e3d001")
_METADATA_BLOCK = 64 * 1024
"""Room taken for each FVE metadata block (its header says less; this covers it)."""


def probe(head: bytes, f: BinaryIO, size: int) -> Container | None:
    if head[3:11] != SIGNATURE or len(head) < 512:
        return None
    if uuid_mod.UUID(bytes_le=head[0xA0:0xB0]) == BITLOCKER_GUID:
        offsets = struct.unpack_from("<3Q", head, 0xB0)
        name = "BitLocker"
    else:
        (cluster,) = struct.unpack_from("<Q", head, 0x38)
        bytes_per_sector, sectors_per_cluster = struct.unpack_from("<HB", head, 0x0B)
        offsets = (cluster * bytes_per_sector * sectors_per_cluster,)
        name = "BitLocker (Windows Vista)"
    found = [o for o in offsets if 0 < o < size and read_at(f, o, len(SIGNATURE)) == SIGNATURE]
    metadata = tuple((o, min(_METADATA_BLOCK, size - o)) for o in sorted(set(found)))
    return Container(
        kind="bitlocker",
        name=name,
        metadata=((0, 512), *metadata),
        details=(("metadata copies", str(len(metadata))),),
    )


def open_layer(f: BinaryIO, size: int, found: Container, secret: Secret | None) -> Opened:
    """Unlock the volume (with ``secret``, or its clear key) and read its plaintext.

    See :mod:`rescue.containers.bitlocker_open`; imported here on first use, so
    probing needs neither dissect.fve nor OpenSSL.
    """
    from rescue.containers.bitlocker_open import open_bitlocker  # noqa: PLC0415  (80 ms of imports)

    return open_bitlocker(f, size, found, secret)
