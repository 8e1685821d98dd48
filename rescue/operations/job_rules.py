"""The rules a job picks its disk by, and the disk each one picks: exactly one, or an error.

A job names its disk by a rule, not by a kernel name (``sda`` on one machine is
the USB stick on the next): ``internal`` (the one internal disk), ``serial:XYZ``
or ``size:500G``. A rule that matches no disk, or more than one, is an error
listing every disk seen and why each was not taken; nothing is ever guessed.

Loop devices are never picked by a rule: on the rescue system they are the
live image itself or a file someone attached. Tests, whose disks are loop
devices, turn that off with ``allow_loop=True`` or the test hook
:data:`ALLOW_LOOP_ENV`, which only :func:`pick_disk` reads.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from rescue.devices.model import FLAG_BOOT_MEDIUM, Disk
from rescue.devices.safety import describe
from rescue.errors import BadInputError
from rescue.units import human_size

ALLOW_LOOP_ENV = "RESCUE_TEST_HOOK_JOB_LOOP_DISKS"
"""Test hook: set to ``1``, rules may pick loop devices (the tests' disks). Never set it on
a rescue system: its live image is a loop device."""

SIZE_TOLERANCE = Decimal("0.01")
"""A ``size:`` rule takes a disk within 1% of the size given (vendors round, tables differ)."""

_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2,
    "g": 1000**3, "gb": 1000**3, "t": 1000**4, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}  # fmt: skip
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")
_SERIAL = re.compile(r"[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?")
"""A serial as udev and sysfs give it: printable (udev's own give ``_`` for a space)."""

RULE_FORMS = '"internal", "serial:XYZ" or "size:500G"'


@dataclass(frozen=True)
class Rule:
    """How a job picks its disk."""

    kind: str
    """``internal``, ``serial`` or ``size``."""
    text: str
    """The rule as the job file writes it (for messages)."""
    serial: str | None = None
    size: int | None = None
    """Bytes (``size:`` rules)."""


def parse_size(text: str) -> int:
    """Bytes in ``500G``, ``1.5T``, ``476GiB``: K/M/G/T decimal as disk vendors count, the
    ``KiB``-style suffixes binary. Raises ValueError naming the forms it takes."""
    m = _SIZE.fullmatch(text)
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _UNITS:
        raise ValueError(
            f"{text!r} is not a size: write a number and a unit, e.g. 500G, 1.5T (decimal, as "
            "on the disk's label) or 476GiB (binary)"
        )
    try:
        value = int(Decimal(m.group(1)) * _UNITS[unit])
    except InvalidOperation as exc:  # pragma: no cover - the pattern admits only numbers
        raise ValueError(f"{text!r} is not a size") from exc
    if value <= 0:
        raise ValueError(f"{text!r} is not a size a disk has")
    return value


def parse_rule(text: str, where: str) -> Rule:
    """The rule in ``text``; ``where`` names the file and key for the message."""
    kind, sep, value = text.partition(":")
    kind = kind.strip().lower()
    if kind == "internal" and not sep:
        return Rule("internal", text)
    if kind == "serial" and sep:
        serial = value.strip()
        if not _SERIAL.fullmatch(serial):
            raise BadInputError(
                f"{where}: {text!r} gives no serial a disk has (printable characters).",
                hint="Copy the serial from rescue list.",
            )
        return Rule("serial", text, serial=serial)
    if kind == "size" and sep:
        try:
            size = parse_size(value)
        except ValueError as exc:
            raise BadInputError(f"{where}: {exc}.") from exc
        return Rule("size", text, size=size)
    raise BadInputError(
        f"{where}: {text!r} is not a rule rescue knows: write {RULE_FORMS}.",
    )


class RuleMatchError(BadInputError):
    """A rule matched no disk or several; ``seen`` holds every disk looked at, for a front
    end to show and ask. Nothing was written."""

    def __init__(
        self,
        message: str,
        *,
        seen: Sequence[Disk],
        matched: Sequence[Disk] = (),
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.seen = tuple(seen)
        self.matched = tuple(matched)
        """The disks the rule matched (none, or several)."""


def loop_disks_allowed() -> bool:
    """The test hook :data:`ALLOW_LOOP_ENV` is set."""
    return os.environ.get(ALLOW_LOOP_ENV) == "1"


def _internal(disk: Disk) -> bool:
    return not disk.removable and disk.transport != "usb"


def _why_not(rule: Rule, disk: Disk, job_disk: str | None, allow_loop: bool) -> str | None:
    """Why ``rule`` does not pick ``disk`` (None: it does)."""
    if disk.transport == "loop" and not allow_loop:
        return "a loop device (rules never pick one)"
    if rule.kind == "serial":
        if disk.serial != rule.serial:
            return "another serial" if disk.serial else "no serial"
        return None
    if disk.path == job_disk:
        return "it holds the job file"
    if FLAG_BOOT_MEDIUM in disk.flags:
        return "it holds the running rescue system"
    if rule.kind == "internal":
        return None if _internal(disk) else "removable or on USB"
    assert rule.size is not None
    off = abs(Decimal(disk.size - rule.size)) / rule.size
    if off > SIZE_TOLERANCE:
        return f"{off * 100:.1f}% off the size {human_size(rule.size)} ({rule.size} bytes)"
    return None


def pick_disk(
    rule: Rule,
    disks: Sequence[Disk],
    *,
    job_disk: str | None = None,
    where: str = "the job",
    allow_loop: bool | None = None,
) -> Disk:
    """The one disk of ``disks`` that ``rule`` picks, or :class:`RuleMatchError`.

    ``internal`` and ``size:`` rules never pick ``job_disk`` (the disk holding the
    job file) or the boot medium; a ``serial:`` rule picks the disk it names
    whatever it is, and the job's own safety checks refuse it with their reason.
    ``allow_loop`` (default: the test hook :data:`ALLOW_LOOP_ENV`) lets rules pick
    loop devices.
    """
    if allow_loop is None:
        allow_loop = loop_disks_allowed()
    verdicts = [(d, _why_not(rule, d, job_disk, allow_loop)) for d in disks]
    picked = [d for d, why in verdicts if why is None]
    if len(picked) == 1:
        return picked[0]
    lines = [f"  {describe(d)}: {f'not taken, {why}' if why else 'matches'}" for d, why in verdicts]
    seen = "\n".join(lines) if lines else "  (none)"
    if not picked:
        raise RuleMatchError(
            f"{where}: the rule {rule.text!r} matches no disk. The disks seen:\n{seen}",
            seen=disks,
            matched=picked,
            hint="Check that the disk is plugged in (rescue list), or correct the rule.",
        )
    raise RuleMatchError(
        f"{where}: the rule {rule.text!r} matches {len(picked)} disks, and a job never "
        f"guesses. The disks seen:\n{seen}",
        seen=disks,
        matched=picked,
        hint='Name the disk by its serial (target = "serial:..."; rescue list shows it).',
    )
