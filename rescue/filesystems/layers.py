"""Partitions stored through a volume layer: their registry entries (:data:`LAYERS`).

A LUKS or BitLocker volume, or an LVM physical volume, is not a filesystem; but
when capture reads through it (see :mod:`rescue.containers`), the partition is
stored as a partclone stream of its own bytes — ciphertext as it is, the layer's
metadata, and only the sectors that hold used blocks of the filesystems inside.
These entries say what a restore and the other operations can do with such a
stream: write it back to the same offsets (no key needed), grow the partition
around it (the layers inside keep their size), nothing else on their own.

Reading inside, the layers' structures and their keys live in
:mod:`rescue.containers`; an entry here only names the stream.
"""

from __future__ import annotations

from typing import BinaryIO, ClassVar

from rescue.filesystems.base import Allocation, bitmap_from_runs
from rescue.filesystems.interface import Filesystem, Op, Reasons
from rescue.filesystems.raw import RAW_BLOCK


def layer_block_size(size: int) -> int:
    """The block of a layered partition's stream: 4 KiB, or 512 bytes when the partition
    is not a whole number of 4 KiB (partclone blocks never pass the partition's end)."""
    return RAW_BLOCK if size % RAW_BLOCK == 0 else 512


class Layered(Filesystem):
    """A partition whose stream holds a volume layer's sectors as they are on disk."""

    layer = True

    @staticmethod
    def reasons(what: str, inside: str, grow: str) -> Reasons:
        """The refusals of a layer: ``what`` it is, how to reach ``inside``, what ``grow`` does."""
        return {
            Op.BROWSE: f"The partition is {what}: browse it with {inside}.",
            Op.MOUNT_RW: f"The partition is {what}: it cannot hold images as it is.",
            Op.CHECK: f"The partition is {what}: its filesystems are checked inside it.",
            Op.REPAIR: f"The partition is {what}: its filesystems are mended inside it.",
            Op.GROW: grow,
            Op.SHRINK: f"The partition is {what}: rescue does not shrink the layers inside, "
            "so it is restored onto a partition at least as large as the source.",
            Op.REBUILD: f"The partition is {what}: it cannot be rebuilt smaller.",
            Op.MINIMUM: f"The partition is {what}: it needs all of its size.",
            Op.NEW_ID: f"The partition is {what}: it keeps its identity (its UUID is in "
            "its own header).",
            Op.DAMAGE: f"The partition is {what}: unreadable sectors are reported by offset.",
            Op.SET_START: f"The partition is {what}: nothing in it records its start.",
            Op.CREATE: f"The partition is {what}: its sectors are restored, not created anew.",
        }

    def read_allocation(self, f: BinaryIO, size: int) -> Allocation:
        """Every block, as this layer's stream, when nothing inside is read.

        Capture reads inside through :mod:`rescue.containers` and gives the sparse
        map; this is the answer that needs no key and no knowledge of the layer.
        """
        block = layer_block_size(size)
        total = size // block
        bitmap = bitmap_from_runs(total, [(0, total)])
        assert self.partclone_name is not None
        return Allocation(
            fstype=self.name, partclone_fs=self.partclone_name, block_size=block,
            total_blocks=total, device_size=size, bitmap=bytes(bitmap), used_blocks=total,
            fs_used_blocks=total,
        )  # fmt: skip


_GROW_ENCRYPTED = (
    "The partition grows; the encrypted volume and the filesystem inside keep their size "
    "(after the first boot: {resize}, then grow the filesystem)."
)


class Luks(Layered):
    encrypted = True
    names = ("luks",)
    aliases = ("crypto_LUKS",)
    human_name = "LUKS encrypted volume"
    partclone_name = "LUKS"
    unsupported: ClassVar[Reasons] = Layered.reasons(
        "a LUKS encrypted volume",
        "its passphrase or key file (rescue mount --passphrase-file)",
        _GROW_ENCRYPTED.format(resize="cryptsetup resize NAME"),
    )


class BitLocker(Layered):
    encrypted = True
    names = ("bitlocker",)
    aliases = ("BitLocker",)
    human_name = "BitLocker encrypted volume"
    partclone_name = "BITLOCKER"
    unsupported: ClassVar[Reasons] = Layered.reasons(
        "a BitLocker encrypted volume",
        "its recovery password, password or .bek file (rescue mount --passphrase-file)",
        "The partition grows; the BitLocker volume keeps its size (extend the volume in "
        "Windows Disk Management after the first boot).",
    )


class LvmPhysicalVolume(Layered):
    names = ("lvm2",)
    aliases = ("LVM2_member",)
    human_name = "LVM2 physical volume"
    partclone_name = "LVM2"
    unsupported: ClassVar[Reasons] = Layered.reasons(
        "an LVM2 physical volume",
        "rescue mount --volume VG/LV",
        "The partition grows; the physical volume keeps its size (after the first boot: "
        "pvresize, then lvextend -r).",
    )


class MdMember(Layered):
    names = ("md",)
    aliases = ("linux_raid_member",)
    human_name = "Linux RAID (md) member"
    partclone_name = "MD"
    unsupported: ClassVar[Reasons] = Layered.reasons(
        "a Linux RAID (md) member",
        "rescue mount (a RAID1 member's filesystem is opened directly)",
        "A RAID member's partition keeps its size: md superblocks 1.0 and 0.90 lie at "
        "its end, where mdadm looks for them.",
    )
    keeps_size = (
        "a Linux RAID (md) member keeps its size on a larger disk (superblocks 1.0 and 0.90 "
        "lie at the partition's end, where mdadm looks for them)"
    )


LUKS = Luks()
BITLOCKER = BitLocker()
LVM2 = LvmPhysicalVolume()
MD = MdMember()
LAYERS = (LUKS, BITLOCKER, LVM2, MD)
