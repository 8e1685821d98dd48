"""Disk health from SMART (smartctl), when the disk and the tool can tell."""

from __future__ import annotations

import json
from dataclasses import dataclass

from rescue.system import run, which

# attributes that count sectors a failing disk loses
_BAD_SECTOR_IDS = {5: "reallocated", 197: "pending", 198: "uncorrectable"}


@dataclass(frozen=True)
class SmartSummary:
    passed: bool | None
    """The drive's own overall verdict; None when it gave none."""
    bad_sectors: dict[str, int]
    """Raw counts of reallocated, pending and uncorrectable sectors (non-zero ones)."""
    temperature: int | None
    power_on_hours: int | None

    @property
    def failing(self) -> bool:
        return self.passed is False or bool(self.bad_sectors)

    def describe(self) -> str:
        bits = []
        if self.passed is False:
            bits.append("the drive reports itself FAILING")
        bits += [f"{v} {k} sectors" for k, v in self.bad_sectors.items()]
        return ", ".join(bits) or "healthy"

    def short(self) -> str:
        if self.passed is False:
            return "FAILING"
        if self.bad_sectors:
            return f"WARN {sum(self.bad_sectors.values())} bad"
        return "ok" if self.passed else "?"


def parse(doc: dict[str, object]) -> SmartSummary | None:
    status = doc.get("smart_status")
    passed = status.get("passed") if isinstance(status, dict) else None
    bad: dict[str, int] = {}
    table = doc.get("ata_smart_attributes")
    rows = table.get("table", []) if isinstance(table, dict) else []
    for row in rows if isinstance(rows, list) else []:
        name = _BAD_SECTOR_IDS.get(int(row.get("id", 0)))
        raw = row.get("raw", {}).get("value", 0) if isinstance(row.get("raw"), dict) else 0
        if name and int(raw):
            bad[name] = int(raw)
    nvme = doc.get("nvme_smart_health_information_log")
    if isinstance(nvme, dict) and int(nvme.get("media_errors", 0) or 0):
        bad["media errors"] = int(nvme["media_errors"])
    temp = doc.get("temperature")
    hours = doc.get("power_on_time")
    if passed is None and not bad and not isinstance(temp, dict):
        return None
    return SmartSummary(
        passed=bool(passed) if passed is not None else None,
        bad_sectors=bad,
        temperature=int(temp["current"]) if isinstance(temp, dict) and "current" in temp else None,
        power_on_hours=int(hours["hours"])
        if isinstance(hours, dict) and "hours" in hours
        else None,
    )


def smart_summary(path: str) -> SmartSummary | None:
    """SMART health of the disk at ``path``; None without smartctl or SMART (loop, virtio)."""
    if which("smartctl") is None:
        return None
    result = run(["smartctl", "-H", "-A", "-j", path], check=False, timeout=30)
    try:
        doc = json.loads(result.stdout.decode(errors="replace") or "{}")
    except ValueError:
        return None
    return parse(doc) if isinstance(doc, dict) else None
