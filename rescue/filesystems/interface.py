"""One filesystem as rescue knows it: its names, what it can do, and how.

Each filesystem module (``ext.py``, ``ntfs.py``, ``fat.py``, ``exfat.py``,
``xfs.py``, ``btrfs.py``, ``swap.py``, ``raw.py``) declares one subclass of
:class:`Filesystem` and one instance of it, and
:mod:`rescue.filesystems.registry` collects the instances. An operation asks the
registry for a partition's filesystem and calls its methods or reads its
attributes; it never compares a filesystem name itself.

A filesystem supports an operation (:class:`Op`) by implementing it: by
overriding its method, or for the two mounts by declaring how it is mounted
(:attr:`Filesystem.kernel`, :attr:`Filesystem.fuse`). Every operation it does
not support is in :attr:`Filesystem.unsupported` with the reason, in words a
technician can act on; the registry refuses an entry that leaves an operation
undeclared or declares it both ways. Asking an unsupported operation raises
:class:`~rescue.errors.UnsupportedOperationError` with that reason.
"""

from __future__ import annotations

import contextlib
import enum
import threading
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, ClassVar

from rescue import kernel
from rescue.errors import ExternalToolError, UnsupportedOperationError
from rescue.filesystems.base import Allocation
from rescue.progress import ProgressReporter
from rescue.system import run, which


class Op(enum.StrEnum):
    """What can be asked of a filesystem (each is a method or a mount declaration)."""

    ALLOCATION = "allocation"
    """:meth:`Filesystem.read_allocation`: which blocks hold data (to image only those)."""
    BROWSE = "browse"
    """:meth:`Filesystem.mount_at` read-only: by the kernel with journal replay off, or FUSE."""
    MOUNT_RW = "mount-rw"
    """:meth:`Filesystem.mount_at` read-write (destination drives, new ids, online grow)."""
    CHECK = "check"
    """:meth:`Filesystem.check`: a read-only consistency check."""
    REPAIR = "repair"
    """:meth:`Filesystem.repair`: mend what the checker can, before the filesystem is changed."""
    GROW = "grow"
    """:meth:`Filesystem.grow`: fill a larger partition."""
    SHRINK = "shrink"
    """:meth:`Filesystem.shrink`: shrink in place (on a scratch view of the image)."""
    REBUILD = "rebuild"
    """:meth:`Filesystem.rebuild`: a new, smaller filesystem like the old one, files copied."""
    MINIMUM = "minimum"
    """:meth:`Filesystem.minimum_size`: the smallest partition that holds it."""
    NEW_ID = "new-id"
    """:meth:`Filesystem.new_id`: a new random UUID or serial."""
    DAMAGE = "damage"
    """:meth:`Filesystem.files_at`: the files holding given byte ranges."""
    SET_START = "set-start"
    """:meth:`Filesystem.record_start`: write a moved partition's start where the fs keeps it."""
    CREATE = "create"
    """:meth:`Filesystem.create`: make it anew from its identity (it is not imaged)."""


Tools = Mapping[Op, tuple[str, ...]]
"""The programs each supported operation runs."""
Reasons = Mapping[Op, str]
"""Each unsupported operation and why, in words a technician can act on."""

_METHODS: dict[Op, str] = {
    Op.ALLOCATION: "read_allocation",
    Op.CHECK: "check",
    Op.REPAIR: "repair",
    Op.GROW: "grow",
    Op.SHRINK: "shrink",
    Op.REBUILD: "rebuild",
    Op.MINIMUM: "minimum_size",
    Op.NEW_ID: "new_id",
    Op.DAMAGE: "files_at",
    Op.SET_START: "record_start",
    Op.CREATE: "create",
}
"""The method that implements each operation (the mounts are declared, not overridden)."""


@dataclass(frozen=True)
class KernelMount:
    """How the kernel mounts a filesystem."""

    type: str
    """``mount -t`` type and the name in /proc/filesystems (ext2/3 are mounted as ext4)."""
    read_only: str | None
    """Options of a read-only mount that writes nothing (no journal replay); None: never."""
    read_write: str = "rw"


@dataclass(frozen=True)
class FuseDriver:
    """A FUSE program that mounts a filesystem where the kernel cannot."""

    program: str
    package: str
    """The Debian package that installs ``program``."""
    writes: bool
    """Good for read-write mounts too (a destination drive), not only for reading."""


@dataclass(frozen=True)
class CheckResult:
    """What a filesystem checker said, judged by that checker's own exit-code rule."""

    tool: str
    code: int
    ok: bool
    output: str
    """Standard output and error, as text."""

    def last_lines(self, n: int = 3) -> list[str]:
        return self.output.strip().splitlines()[-n:]


def run_checker(argv: list[str], ok: Collection[int] = (0,)) -> CheckResult:
    """Run a checker; ``ok`` are the exit codes that mean "clean" (or "mended")."""
    res = run(argv, check=False)
    text = (res.stdout + res.stderr).decode(errors="replace")
    return CheckResult(argv[0], res.returncode, res.returncode in ok, text)


class Filesystem:
    """Base of one filesystem's entry: declarations, and methods that say "not supported".

    A subclass sets the class attributes below and overrides the methods of the
    operations it supports; each other operation gets a reason in
    :attr:`unsupported`.
    """

    names: ClassVar[tuple[str, ...]]
    """blkid names it answers to, kept as they are (ext2, ext3, ext4); the first is its name."""
    aliases: ClassVar[tuple[str, ...]] = ()
    """Other names for it (ntfs3; fat12, fat16, fat32, fat, msdos); they mean :attr:`name`."""
    mount_types: ClassVar[tuple[str, ...]] = ()
    """Types the mount table shows for it (findmnt FSTYPE), FUSE ones included."""
    human_name: ClassVar[str]
    """How a technician calls it: "ext2/3/4", "NTFS", "FAT", "exFAT", ..."""
    partclone_name: ClassVar[str | None] = None
    """Its name in a partclone header (EXTFS, NTFS, ...); None when it is never imaged."""
    kernel: ClassVar[KernelMount | None] = None
    fuse: ClassVar[FuseDriver | None] = None
    linux_root: ClassVar[bool] = False
    """Can hold a Linux system (its etc/fstab and boot configuration)."""
    esp: ClassVar[bool] = False
    """Can be an EFI system partition (the UEFI firmware reads it)."""
    raw: ClassVar[bool] = False
    """No filesystem at all: bytes copied as they are."""
    layer: ClassVar[bool] = False
    """Not a filesystem: a volume layer (LUKS, BitLocker, LVM) stored as its own sectors,
    with filesystems inside it (see :mod:`rescue.filesystems.layers`)."""
    encrypted: ClassVar[bool] = False
    """A layer whose inside needs a key to be read."""
    keeps_size: ClassVar[str | None] = None
    """Why its partition must keep its size on a larger disk (None: it may grow)."""
    max_file_size: ClassVar[int | None] = None
    """The largest file it holds (image streams written there are split to fit)."""
    tools: ClassVar[Tools] = {}
    """The programs each supported operation runs, to say which are missing."""
    unsupported: ClassVar[Reasons] = {}
    """Each operation it does not support, with the reason and what to do instead."""

    # --- what it is ----------------------------------------------------------------

    @property
    def name(self) -> str:
        """Its blkid name (the first of :attr:`names`)."""
        return self.names[0]

    def canonical(self, name: str) -> str:
        """``name`` itself when it is one of :attr:`names`, else (an alias) :attr:`name`."""
        return name if name in self.names else self.name

    def __repr__(self) -> str:
        return f"<filesystem {'/'.join(self.names)}>"

    # --- what it supports -------------------------------------------------------------

    def implements(self, op: Op) -> bool:
        """The entry provides ``op`` (a method overridden, or a mount declared)."""
        if op is Op.BROWSE:
            k = self.kernel
            return (k is not None and k.read_only is not None) or self.fuse is not None
        if op is Op.MOUNT_RW:
            k = self.kernel
            return k is not None or (self.fuse is not None and self.fuse.writes)
        method = _METHODS[op]
        return getattr(type(self), method) is not getattr(Filesystem, method)

    def supports(self, op: Op) -> bool:
        return op not in self.unsupported

    def declaration_problems(self) -> list[str]:
        """What is wrong with this entry's declarations (empty when each op is declared once)."""
        problems = []
        for op in Op:
            reason = self.unsupported.get(op)
            if self.implements(op) and reason is not None:
                problems.append(f"{self.name}: {op} is implemented and declared unsupported")
            elif not self.implements(op) and reason is None:
                problems.append(f"{self.name}: {op} is neither implemented nor given a reason")
            elif reason is not None and not reason.strip():
                problems.append(f"{self.name}: {op} is unsupported without a reason")
        problems.extend(
            f"{self.name}: tools declared for unsupported {op}"
            for op in self.tools
            if op in self.unsupported
        )
        return problems

    def refusal(self, op: Op) -> UnsupportedOperationError:
        """The error for asking ``op``, which this filesystem does not support."""
        reason = self.unsupported.get(op) or f"{self.human_name}: {op} is not supported."
        return UnsupportedOperationError(reason)

    def missing_tools(self, op: Op) -> list[str]:
        """The programs ``op`` needs that are not installed."""
        return [t for t in self.tools.get(op, ()) if which(t) is None]

    @property
    def imaged(self) -> bool:
        """Its used blocks are imaged (swap is not: it is recreated)."""
        return self.supports(Op.ALLOCATION)

    @property
    def recreated(self) -> bool:
        """Made anew on restore from its identity instead of being imaged."""
        return self.supports(Op.CREATE)

    @property
    def can_grow(self) -> bool:
        return self.supports(Op.GROW)

    @property
    def can_shrink(self) -> bool:
        """Shrinks in place."""
        return self.supports(Op.SHRINK)

    @property
    def can_rebuild(self) -> bool:
        """Cannot shrink, but a new smaller one can be made and the files copied in."""
        return self.supports(Op.REBUILD)

    @property
    def restores_smaller(self) -> bool:
        """A restore can put it into a smaller partition (shrunk, or rebuilt)."""
        return self.supports(Op.MINIMUM) and (self.can_shrink or self.can_rebuild)

    @property
    def records_start(self) -> bool:
        """Keeps its partition's start sector, to be updated when the partition moves."""
        return self.supports(Op.SET_START)

    # --- mounting -----------------------------------------------------------------------

    def mount_at(self, dev: str, mountpoint: Path | str, *, writable: bool = False) -> str:
        """Mount ``dev`` at ``mountpoint``: by the kernel, or its FUSE driver where the kernel
        cannot. Read-only mounts write nothing (no journal replay). Returns the driver
        used: "kernel" or the FUSE program.
        """
        op = Op.MOUNT_RW if writable else Op.BROWSE
        if not self.supports(op):
            raise self.refusal(op)
        k = self.kernel
        options = None if k is None else k.read_write if writable else k.read_only
        fuse = self.fuse if self.fuse is not None and (self.fuse.writes or not writable) else None
        if (
            k is not None
            and options is not None
            and (fuse is None or kernel.kernel_supports(k.type))
        ):
            kernel.mount(dev, mountpoint, options, k.type)
            return "kernel"
        if fuse is None:
            raise self.refusal(op)
        if which(fuse.program) is None:
            raise ExternalToolError(
                f"Mounting {self.name} needs {fuse.program}, which is not installed.",
                hint=f"Install it with: apt-get install {fuse.package}",
            )
        kernel.mount_fuse(fuse.program, dev, mountpoint, "rw" if writable else "ro")
        return fuse.program

    @contextlib.contextmanager
    def mounted(self, dev: str, *, writable: bool = False) -> Iterator[Path]:
        """``dev`` mounted by the kernel in a private temporary folder until the block ends."""
        op = Op.MOUNT_RW if writable else Op.BROWSE
        if not self.supports(op):
            raise self.refusal(op)
        k = self.kernel
        options = None if k is None else k.read_write if writable else k.read_only
        if k is None or options is None:
            raise UnsupportedOperationError(
                f"{self.human_name} is not mounted by the kernel here"
                + (f" (rescue reads it through {self.fuse.program})." if self.fuse else ".")
            )
        with kernel.private_mount(dev, k.type, options) as folder:
            yield folder

    # --- the operations: each says "not supported" unless a subclass implements it -----

    def read_allocation(self, f: BinaryIO, size: int) -> Allocation:
        """The used blocks of the filesystem in ``f`` (a partition of ``size`` bytes).

        Raises :class:`~rescue.errors.FilesystemError` when its structures cannot be
        trusted (the caller then images every block).
        """
        raise self.refusal(Op.ALLOCATION)

    def check(self, dev: str) -> CheckResult:
        """Check the filesystem on ``dev`` without changing it."""
        raise self.refusal(Op.CHECK)

    def repair(self, dev: str) -> CheckResult:
        """Mend what its checker can on ``dev`` (before a resize or a new UUID)."""
        raise self.refusal(Op.REPAIR)

    def grow(self, dev: str, size: int) -> str | None:
        """Grow the filesystem on ``dev`` to fill its ``size``-byte partition.

        Returns what was done when there is more to say than "grown".
        """
        raise self.refusal(Op.GROW)

    def shrink(self, dev: str, size: int) -> None:
        """Shrink the filesystem on ``dev`` (a writable view) to at most ``size`` bytes."""
        raise self.refusal(Op.SHRINK)

    def rebuild(
        self, src: str, dst: str, progress: ProgressReporter, cancel: threading.Event | None
    ) -> None:
        """A new filesystem on ``dst`` like the one on ``src`` (identity, features), files
        copied in."""
        raise self.refusal(Op.REBUILD)

    def minimum_size(self, dev: str) -> int:
        """Bytes of the smallest partition the filesystem on ``dev`` can be made to fit."""
        raise self.refusal(Op.MINIMUM)

    def new_id(self, dev: str) -> str | None:
        """Give the filesystem on ``dev`` a new random UUID/serial; returns it (None: unchanged)."""
        raise self.refusal(Op.NEW_ID)

    def files_at(self, dev: str, ranges: list[tuple[int, int]], block_size: int) -> list[str]:
        """Paths of the files holding the (offset, length) byte ranges of ``dev``.

        Bytes that no file holds are "(filesystem metadata)".
        """
        raise self.refusal(Op.DAMAGE)

    def record_start(self, fd: int, base: int, size: int, start_sector: int) -> None:
        """Record the partition's new start (the filesystem is ``size`` bytes at ``base``)."""
        raise self.refusal(Op.SET_START)

    def create(
        self, path: str, *, offset: int, size: int, uuid: str | None, label: str | None
    ) -> None:
        """Make the filesystem anew in ``size`` bytes at ``offset`` of ``path`` (0: all of it)."""
        raise self.refusal(Op.CREATE)
