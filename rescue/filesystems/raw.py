"""The fallback: every block is used. Zero regions cost nothing once compressed."""

from __future__ import annotations

from rescue.filesystems.base import Allocation

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
        fstype="dd",
        partclone_fs="raw",
        block_size=RAW_BLOCK,
        total_blocks=total,
        device_size=size,
        bitmap=bytes(bitmap),
        used_blocks=total,
        fs_used_blocks=total,
        warnings=(reason,) if reason else (),
    )
