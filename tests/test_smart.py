"""SMART summaries from smartctl's JSON (this machine's disks have no SMART: recorded answers)."""

from __future__ import annotations

from rescue.devices.smart import parse


def test_ata_disk_with_pending_sectors_is_flagged() -> None:
    doc = {
        "smart_status": {"passed": True},
        "ata_smart_attributes": {
            "table": [
                {"id": 5, "name": "Reallocated_Sector_Ct", "raw": {"value": 0}},
                {"id": 197, "name": "Current_Pending_Sector", "raw": {"value": 8}},
                {"id": 198, "name": "Offline_Uncorrectable", "raw": {"value": 2}},
            ]
        },
        "temperature": {"current": 41},
        "power_on_time": {"hours": 30123},
    }
    s = parse(doc)
    assert s is not None
    assert s.failing and s.bad_sectors == {"pending": 8, "uncorrectable": 2}
    assert s.short() == "WARN 10 bad"
    assert s.describe() == "8 pending sectors, 2 uncorrectable sectors"
    assert (s.temperature, s.power_on_hours) == (41, 30123)


def test_failed_verdict_and_nvme_media_errors() -> None:
    s = parse({"smart_status": {"passed": False},
               "nvme_smart_health_information_log": {"media_errors": 3}})  # fmt: skip
    assert s is not None and s.failing and s.short() == "FAILING"
    assert "FAILING" in s.describe() and "3 media errors sectors" in s.describe()


def test_healthy_and_absent() -> None:
    s = parse({"smart_status": {"passed": True}, "temperature": {"current": 30}})
    assert s is not None and not s.failing and s.short() == "ok" and s.describe() == "healthy"
    assert parse({"smartctl": {"exit_status": 2}}) is None  # a loop device: no SMART at all
