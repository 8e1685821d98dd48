"""Every file name inside an image folder: Clonezilla's conventions plus our own.

docs/FORMAT.md section 1 lists the same names; a name used in an image folder
is declared here and nowhere else. ``disk`` is the image's disk name (``sda``),
``part`` a partition name (``sda1``).
"""

from __future__ import annotations

# --- Clonezilla's files --------------------------------------------------------------

DISK_FILE = "disk"
"""The disk name, one line (a whole-disk image only)."""
PARTS_FILE = "parts"
"""The partition names, space separated."""
DEV_FS_LIST = "dev-fs.list"
BLKID_LIST = "blkid.list"
BLKDEV_LIST = "blkdev.list"
CLONEZILLA_LOG = "clonezilla-img"
"""A short log; ours starts with :data:`rescue.image.layout.LOG_SIGNATURE`."""
IMG_ID_FILE = "Info-img-id.txt"
SAVED_BY_CMD_FILE = "Info-saved-by-cmd.txt"


def sfdisk_dump(disk: str) -> str:
    """``sda-pt.sf``: ``sfdisk -d`` of the disk."""
    return f"{disk}-pt.sf"


def chs_file(disk: str) -> str:
    return f"{disk}-chs.sf"


def parted_file(disk: str, *, compact: bool = False) -> str:
    return f"{disk}-pt.parted.compact" if compact else f"{disk}-pt.parted"


def mbr_file(disk: str) -> str:
    """The first 512 bytes of the disk."""
    return f"{disk}-mbr"


def gpt_primary_file(disk: str) -> str:
    return f"{disk}-gpt-1st"


def gpt_backup_file(disk: str) -> str:
    return f"{disk}-gpt-2nd"


def gdisk_backup_file(disk: str) -> str:
    return f"{disk}-gpt.gdisk"


def hidden_data_file(disk: str) -> str:
    """Bytes between the MBR and the first partition (boot loader core images)."""
    return f"{disk}-hidden-data-after-mbr"


def swap_info_file(part: str) -> str:
    return f"swappt-{part}.info"


STREAM_SUFFIX = "-ptcl-img"
"""Partition streams are ``PART.FSTYPE-ptcl-img.COMPRESSION`` (``sda1.ext4-ptcl-img.zst``)."""


def stream_name(part: str, fstype: str) -> str:
    """``sda1.ext4-ptcl-img.zst``; a raw stream is ``sda1.dd-ptcl-img.zst``."""
    return f"{part.replace('/', '-')}.{fstype}{STREAM_SUFFIX}.zst"


def delta_stream_name(part: str, fstype: str) -> str:
    """``sda1.ext4-rescue-delta.zst``: the stream of an incremental image's partition, which
    holds only what changed since its base. Clonezilla's patterns (``*-ptcl-img.*``) never
    take it for a stream it could restore alone."""
    return f"{part.replace('/', '-')}.{fstype}-rescue-delta.zst"


# --- rescue's own files -----------------------------------------------------------------

MANIFEST_NAME = "rescue.json"
"""rescue's manifest, written last."""
INCOMPLETE_MARKER = "rescue.incomplete"
"""Written first by a capture and removed after rescue.json: its presence means unfinished."""
CAPTURE_MAP = ".rescue-capture-map.json"
"""What an unfinished capture has safely written, for ``--resume``."""
DAMAGE_REPORT = "damage-report.txt"
"""The unreadable ranges of a failing disk and the files that held them."""
INDEX_DIR = ".rescue-index"
"""Seek indexes (and seekable copies) built by ``rescue mount`` for Clonezilla's streams."""
