"""What may be written: the checks every destructive step goes through."""

from __future__ import annotations

import sys
from collections.abc import Callable

from rescue.devices.model import FLAG_REASONS, Disk, Partition
from rescue.errors import RefusedError
from rescue.units import human_size


def check_target(dev: Disk | Partition, *, source: Disk | Partition | None = None) -> None:
    """Raise RefusedError when ``dev`` must not be written, naming the reason."""
    for flag in dev.flags:
        reason = FLAG_REASONS.get(flag)
        if reason:
            raise RefusedError(
                f"Refusing to write to {dev.path}: {reason}.",
                hint=_hint(flag),
            )
    if source is not None and _overlaps(dev, source):
        raise RefusedError(
            f"Refusing to write to {dev.path}: it is (or holds) the source {source.path}."
        )


def _hint(flag: str) -> str | None:
    return {
        "mounted": "Unmount it first (umount), or choose another disk.",
        "swap-active": "Turn the swap off first (swapoff), or choose another disk.",
        "in-use": "Stop the LVM volume group / RAID array using it, or choose another disk.",
        "boot-medium": "Choose another disk: this one runs the rescue system itself.",
    }.get(flag)


def _disk_of(dev: Disk | Partition) -> str:
    return dev.disk if isinstance(dev, Partition) else dev.path


def _overlaps(a: Disk | Partition, b: Disk | Partition) -> bool:
    if a.path == b.path:
        return True
    if isinstance(a, Disk) or isinstance(b, Disk):
        return _disk_of(a) == _disk_of(b)
    return False


def describe(dev: Disk | Partition) -> str:
    """Model, serial, size and path: what a confirmation must name."""
    bits = [dev.path]
    if isinstance(dev, Disk):
        if dev.model:
            bits.append(f"model {dev.model}")
        if dev.serial:
            bits.append(f"serial {dev.serial}")
        if dev.backing_file:
            bits.append(f"file {dev.backing_file}")
    else:
        bits.append(f"partition {dev.number} of {dev.disk}")
        if dev.fstype:
            bits.append(f"{dev.fstype}{' ' + repr(dev.label) if dev.label else ''}")
    bits.append(f"{human_size(dev.size)} ({dev.size} bytes)")
    return ", ".join(bits)


def confirm(
    device_path: str,
    *,
    yes: bool,
    ask: Callable[[str], str] | None = None,
    interactive: bool | None = None,
) -> None:
    """The one place a destructive step is confirmed.

    ``yes`` (``--yes``) answers for scripts. Otherwise the technician must type
    the device's name (``sdb``, ``loop3``); without a terminal, refuse.
    """
    if yes:
        return
    if interactive is None:
        interactive = sys.stdin.isatty()
    if ask is None:
        if not interactive:
            raise RefusedError(
                f"Not writing to {device_path}: no terminal to confirm on.",
                hint="Run it on a terminal, or add --yes if a script already chose this disk.",
            )
        ask = input
    name = device_path.rsplit("/", 1)[-1]
    try:
        answer = ask(f"Type {name!r} to overwrite {device_path}, anything else cancels: ")
    except EOFError:
        answer = ""
    if answer.strip() != name:
        raise RefusedError(f"Not confirmed: nothing was written to {device_path}.")
