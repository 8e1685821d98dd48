"""What the screens ask of the system, handed to every screen by the app.

The app fills it with the core's functions; tests give fixed answers where
they must (a snapshot cannot depend on the machine's disks). No screen reaches
the system any other way for these questions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rescue.devices import Disk
from rescue.devices.network import Interface, interfaces
from rescue.devices.smart import SmartSummary
from rescue.operations.job_finding import FoundJob
from rescue.operations.jobs import carry_out
from rescue.operations.unlock import EncryptedPartition, encrypted_partitions

DiskLister = Callable[[], list[Disk]]
SmartReader = Callable[[str], SmartSummary | None]
UsedReader = Callable[[str, int, str | None], int | None]
ImageFinder = Callable[[], list[Path]]
EncryptedFinder = Callable[[str], list[EncryptedPartition]]
NetworkReader = Callable[[], list[Interface]]
JobFinder = Callable[[], list[FoundJob]]
AfterJob = Callable[[str], None]


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
