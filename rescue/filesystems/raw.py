"""No filesystem rescue reads: every block is used (a dd stream), and the :data:`RAW` entry.

Zero regions cost nothing once compressed. The entry answers to ``dd``, the
name of such a stream in image file names; nothing but the copy itself can be
done with its bytes.
"""

from __future__ import annotations

from typing import BinaryIO, ClassVar

from rescue.filesystems.base import RAW_FSTYPE, Allocation
from rescue.filesystems.interface import Filesystem, Op, Reasons

RAW_BLOCK = 4096


def raw_allocation(size: int, *, reason: str | None = None) -> Allocation:
    """All of ``size`` bytes, as 4 KiB blocks; the last block may be partial.

    ``device_size`` is authoritative: readers stop there, so a partition whose
    size is not a multiple of 4 KiB is copied to its last byte and no further.
    """
    total = -(-size // RAW_BLOCK)
    bitmap = bytearray(b"\xff" * (total // 8))
    if total % 8:
        bitmap.append((1 << (total % 8)) - 1)
    return Allocation(
        fstype=RAW_FSTYPE,
        partclone_fs="raw",
        block_size=RAW_BLOCK,
        total_blocks=total,
        device_size=size,
        bitmap=bytes(bitmap),
        used_blocks=total,
        fs_used_blocks=total,
        warnings=(reason,) if reason else (),
    )


_NO_FS = "no filesystem rescue can read (a raw copy)"


class Raw(Filesystem):
    """A raw copy: every byte, no filesystem known."""

    names = (RAW_FSTYPE,)
    human_name = "raw data"
    partclone_name = "raw"
    raw = True
    unsupported: ClassVar[Reasons] = {
        Op.BROWSE: "The partition holds no filesystem that can be recognised; "
        "it cannot be browsed.",
        Op.MOUNT_RW: f"The partition holds {_NO_FS}: it cannot be mounted.",
        Op.CHECK: f"The partition holds {_NO_FS}: there is nothing to check.",
        Op.REPAIR: f"The partition holds {_NO_FS}: there is nothing to mend.",
        Op.GROW: f"The partition holds {_NO_FS}: only the partition can grow.",
        Op.SHRINK: f"The partition holds {_NO_FS}: it cannot be shrunk; restore onto a "
        "partition at least as large as the source.",
        Op.REBUILD: f"The partition holds {_NO_FS}: it cannot be rebuilt smaller.",
        Op.MINIMUM: f"The partition holds {_NO_FS}: it needs all of its size.",
        Op.NEW_ID: f"The partition holds {_NO_FS}: it keeps its identity.",
        Op.DAMAGE: f"The partition holds {_NO_FS}: no file can be named.",
        Op.SET_START: f"The partition holds {_NO_FS}: nothing records its start.",
        Op.CREATE: "A raw copy is restored byte for byte, not created anew.",
    }

    def read_allocation(self, f: BinaryIO, size: int) -> Allocation:
        return raw_allocation(size)


RAW = Raw()
