"""Shared test set-up: the capability header and the real-disk bench."""

from __future__ import annotations

import os

from capabilities import capabilities

# System tools live in sbin; make them visible however pytest was started.
os.environ["PATH"] = os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin"


def pytest_report_header() -> str:
    caps = capabilities()
    have = " ".join(f"{k}={'yes' if v else 'no'}" for k, v in caps.items())
    return f"rescue test bench capabilities: {have}"
