"""After a restore: does the restored system find its filesystems?

Every filesystem restored onto the target that can hold a Linux system (its
registry entry says ``linux_root``) is mounted read-only, journal replay off, in
a private folder; where it holds ``etc/fstab``, each entry naming a filesystem by UUID,
PARTUUID, LABEL or PARTLABEL (or their /dev/disk/by-* links) is looked up among
the target's partitions. What is missing is reported: a restored system that
would stop at boot waiting for a disk is found before the technician leaves.
"""

from __future__ import annotations

from dataclasses import dataclass

from rescue import kernel
from rescue.errors import ExternalToolError
from rescue.filesystems import registry

_BY = {
    "/dev/disk/by-uuid/": "UUID",
    "/dev/disk/by-partuuid/": "PARTUUID",
    "/dev/disk/by-label/": "LABEL",
    "/dev/disk/by-partlabel/": "PARTLABEL",
}
_SKIP_TYPES = {"proc", "sysfs", "tmpfs", "devpts", "nfs", "nfs4", "cifs", "none", "swap-file"}


@dataclass(frozen=True)
class FstabReport:
    partition: str
    checked: int
    missing: tuple[str, ...]
    """fstab entries whose filesystem is not on the target."""


def identities(node: str) -> dict[str, str]:
    """UUID, PARTUUID, LABEL, PARTLABEL of a partition (as blkid reads them now)."""
    out: dict[str, str] = {}
    for key, value in kernel.blkid(node).items():
        if key in ("UUID", "PART_ENTRY_UUID", "LABEL", "PART_ENTRY_NAME"):
            out[{"PART_ENTRY_UUID": "PARTUUID", "PART_ENTRY_NAME": "PARTLABEL"}.get(key, key)] = (
                value
            )
    return out


def fstab_specs(text: str) -> list[tuple[str, str, str]]:
    """(kind, value, mountpoint) of the fstab entries that name a filesystem by identity."""
    found = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        fields = line.split()
        if len(fields) < 3 or fields[2] in _SKIP_TYPES:
            continue
        spec, where = fields[0], fields[1]
        kind, value = None, None
        if "=" in spec and spec.split("=", 1)[0] in ("UUID", "PARTUUID", "LABEL", "PARTLABEL"):
            kind, value = spec.split("=", 1)
        for prefix, name in _BY.items():
            if spec.startswith(prefix):
                kind, value = name, spec[len(prefix) :]
        if kind and value:
            found.append((kind, value.strip('"'), where))
    return found


def check_fstabs(partitions: list[tuple[str, str | None]]) -> list[FstabReport]:
    """Check every fstab found on ``partitions`` ((node, fstype)) against all of them."""
    known: dict[str, set[str]] = {"UUID": set(), "PARTUUID": set(), "LABEL": set(),
                                  "PARTLABEL": set()}  # fmt: skip
    for node, _fs in partitions:
        for key, value in identities(node).items():
            known[key].add(value.lower() if key in ("UUID", "PARTUUID") else value)
    reports = []
    for node, fstype in partitions:
        fs = registry.get(fstype)
        if fs is None or not fs.linux_root:
            continue
        try:
            with fs.mounted(node) as root:
                fstab = root / "etc" / "fstab"
                if not fstab.is_file() or fstab.is_symlink():
                    continue
                specs = fstab_specs(fstab.read_text(errors="replace"))
        except (ExternalToolError, OSError):
            continue
        missing = tuple(
            f"{kind}={value} ({where})"
            for kind, value, where in specs
            if (value.lower() if kind in ("UUID", "PARTUUID") else value) not in known[kind]
        )
        reports.append(FstabReport(node, len(specs), missing))
    return reports
