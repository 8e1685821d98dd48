"""Running a real command under a time bound and an address-space limit, measuring its
peak resident memory: what the hostile-folder tests need of a child process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

GiB = 1 << 30
AS_LIMIT = 3 * GiB
"""Address space of the child: room for rescue's threads, far below what the attacks ask
(it keeps a run of the unguarded code from taking the machine down)."""
TIMEOUT = 60.0


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    seconds: float
    max_rss: int
    """Bytes."""
    timed_out: bool


def _pump(stream: object, into: list[bytes]) -> None:
    into.append(stream.read())  # type: ignore[attr-defined]


LAUNCHER = """
import json, os, resource, subprocess, sys
result, limit, *argv = sys.argv[1:]
resource.setrlimit(resource.RLIMIT_AS, (int(limit), int(limit)))
proc = subprocess.Popen(argv)
_pid, status, usage = os.wait4(proc.pid, 0)
proc.returncode = os.waitstatus_to_exitcode(status)
with open(result, "w") as f:
    json.dump({"code": proc.returncode, "max_rss": usage.ru_maxrss * 1024}, f)
"""
"""Runs the command and reports its exit and peak RSS. A child's ``ru_maxrss`` counts the
memory of the process it was forked from (the kernel keeps the high-water mark across
exec): forked from this small launcher, not from pytest, it measures the command."""


def run_limited(argv: list[str], env: dict[str, str], timeout: float = TIMEOUT) -> Outcome:
    """Run ``argv`` with the address-space limit; its exit, output, time and peak RSS."""
    fd, result = tempfile.mkstemp(prefix="rescue-hostile-", suffix=".json")
    os.close(fd)
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, result, str(AS_LIMIT), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    killed = threading.Event()

    def kill() -> None:
        killed.set()
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher's own group: it and the command

    timer = threading.Timer(timeout, kill)
    timer.start()
    out: list[bytes] = []
    err: list[bytes] = []
    readers = [
        threading.Thread(target=_pump, args=(proc.stdout, out)),
        threading.Thread(target=_pump, args=(proc.stderr, err)),
    ]
    for t in readers:
        t.start()
    proc.wait()
    seconds = time.monotonic() - started
    timer.cancel()
    for t in readers:
        t.join(10)
    try:
        doc = json.loads(Path(result).read_text() or "{}")
    finally:
        os.unlink(result)
    return Outcome(
        code=int(doc.get("code", -9)),
        stdout=b"".join(out).decode(errors="replace"),
        stderr=b"".join(err).decode(errors="replace"),
        seconds=seconds,
        max_rss=int(doc.get("max_rss", 0)),
        timed_out=killed.is_set(),
    )
