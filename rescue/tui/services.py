"""What the screens ask of the system, handed to every screen by the app.

The app fills it with the core's functions; tests give fixed answers where
they must (a snapshot cannot depend on the machine's disks). No screen reaches
the system any other way for these questions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rescue.devices import Disk
from rescue.devices.network import Interface, interfaces
from rescue.devices.smart import SmartSummary

if TYPE_CHECKING:
    from rescue.operations.job_finding import FoundJob
    from rescue.operations.unlock import EncryptedPartition

DiskLister = Callable[[], list[Disk]]
SmartReader = Callable[[str], SmartSummary | None]
UsedReader = Callable[[str, int, str | None], int | None]
ImageFinder = Callable[[], list[Path]]
EncryptedFinder = Callable[[str], "list[EncryptedPartition]"]
NetworkReader = Callable[[], list[Interface]]
JobFinder = Callable[[], "list[FoundJob]"]
AfterJob = Callable[[str], None]


# The core's functions behind the screens, each imported when first called: the home
# screen is drawn before the modules of capture, restore, images and jobs are read
# (under a slow console that is seconds of the boot). Each has the core's signature.


def used_bytes(path: str, size: int, fstype: str | None) -> int | None:
    from rescue.operations.estimate import used_bytes  # noqa: PLC0415

    return used_bytes(path, size, fstype)


def find_images_on_drives() -> list[Path]:
    from rescue.operations.finding import find_images_on_drives  # noqa: PLC0415

    return find_images_on_drives()


def encrypted_partitions(source_path: str) -> list[EncryptedPartition]:
    from rescue.operations.unlock import encrypted_partitions  # noqa: PLC0415

    return encrypted_partitions(source_path)


def every_job(list_disks: DiskLister) -> list[FoundJob]:
    """The jobs on the drives and on the kernel command line."""
    from rescue.operations.job_finding import every_job, read_cmdline  # noqa: PLC0415

    return every_job(list_disks(), read_cmdline())


def jobs_at_start(list_disks: DiskLister) -> list[FoundJob]:
    """The jobs on the drives and on the kernel command line, as the console starts (the
    drive a ``rescue.job=`` names waited for)."""
    from rescue.operations.job_finding import jobs_at_start, read_cmdline  # noqa: PLC0415

    return jobs_at_start(list_disks, read_cmdline())


def carry_out(after: str) -> None:
    from rescue.operations.jobs import carry_out  # noqa: PLC0415

    carry_out(after)


@dataclass(frozen=True)
class Services:
    """The disks, their health, the used bytes of a filesystem, the images on the drives,
    which partitions need a key, the network and the unattended jobs."""

    list_disks: DiskLister
    smart: SmartReader
    used: UsedReader
    find_images: ImageFinder
    encrypted: EncryptedFinder = encrypted_partitions
    """The encrypted partitions of a disk or partition (read from their headers)."""
    network: NetworkReader = interfaces
    """The network interfaces and their addresses."""
    find_jobs: JobFinder = list
    """The unattended jobs on the drives and the kernel command line (the app fills it)."""
    carry_out: AfterJob = carry_out
    """A job's ``after``: power off or restart the machine (tests record it instead)."""
