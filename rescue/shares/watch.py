"""A kernel share whose server has stopped answering, noticed in seconds.

A soft NFS mount gives up on a server that went away only after its timeouts
(15 s, then 30 s, then 45 s for each request, and a capture has many requests
in flight: minutes); a cifs write waits for the server's credits until the
server is back, woken only by the end of the process. While a command uses a
kernel share (cifs, nfs), a thread asks the mount for its free space every
:data:`PROBE_SECONDS` (``statfs`` always goes to the server); when no answer
(or only errors) came for :data:`STALL_SECONDS`, the server is taken for gone
and the mount is told to fail what waits on it: ``umount --force``, which runs
the filesystem's ``umount_begin`` (NFS ends its pending RPCs with an error) and
is then refused as busy, because the watch holds the mount's root open from
the start, so nothing is ever unmounted by it. The command's own read or write
fails and it stops with the resume advice instead of hanging. Where that does
not free it (cifs), ``on_stuck`` is called :data:`GRACE_SECONDS` later.

sshfs needs no watch: ssh's keepalives end the connection of a server that
stopped answering, and FUSE then fails every request.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from rescue import kernel
from rescue.errors import RescueError

log = logging.getLogger(__name__)

STALL_SECONDS = 30.0
"""A share that has not answered a ``statfs`` (no answer, or only errors) for this long is
taken for gone."""
PROBE_SECONDS = 5.0
GRACE_SECONDS = 15.0
"""How long after the waiting requests were failed the command may still be held up by the
gone server before ``on_stuck`` is called."""


class ShareWatch:
    """Watches the share mounted at ``mountpoint`` from ``start`` to ``stop`` (or a ``with``).

    ``on_stuck`` is called (from the watch's thread) when the server is still gone
    :data:`GRACE_SECONDS` after the waiting requests were failed and the command has not
    let go of the share: what waits in cifs for the server's credits is woken by nothing
    but the end of the process, so the CLI's ``on_stuck`` says how to go on and ends it.
    """

    def __init__(
        self,
        mountpoint: Path,
        *,
        stall_seconds: float = STALL_SECONDS,
        probe_seconds: float = PROBE_SECONDS,
        grace_seconds: float = GRACE_SECONDS,
        fail_waiting: Callable[[Path], None] = kernel.fail_waiting_requests,
        on_stuck: Callable[[], None] | None = None,
    ) -> None:
        self.mountpoint = mountpoint
        self.stall_seconds = stall_seconds
        self.probe_seconds = probe_seconds
        self.grace_seconds = grace_seconds
        self._fail_waiting = fail_waiting
        self._on_stuck = on_stuck
        self._fd: int | None = None
        self._answered_at = time.monotonic()
        self._lock = threading.Lock()
        self._done = threading.Event()
        self.gone_at: float | None = None
        """When (time.monotonic) the server was found gone; None while it answers."""

    @property
    def server_gone(self) -> bool:
        return self.gone_at is not None

    def start(self) -> ShareWatch:
        # opened while the server answers: this open file keeps the mount busy, so that
        # the forced unmount below only fails the waiting requests
        self._fd = os.open(self.mountpoint, os.O_RDONLY | os.O_DIRECTORY)
        self._answered_at = time.monotonic()
        threading.Thread(target=self._probe, name="share-probe", daemon=True).start()
        threading.Thread(target=self._watch, name="share-watch", daemon=True).start()
        return self

    def stop(self) -> None:
        self._done.set()
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> ShareWatch:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _probe(self) -> None:
        while not self._done.is_set():
            with self._lock:
                if self._fd is None:
                    return
                fd = os.dup(self._fd)
            try:
                os.fstatvfs(fd)
                self._answered_at = time.monotonic()
            except OSError as exc:
                log.debug("share probe of %s: %s", self.mountpoint, exc)
            finally:
                os.close(fd)
            self._done.wait(self.probe_seconds)

    def _watch(self) -> None:
        failed_at = 0.0
        while not self._done.wait(min(1.0, self.probe_seconds)):
            now = time.monotonic()
            if self.gone_at is None:
                silent = now - self._answered_at
                if silent < self.stall_seconds:
                    continue
                self.gone_at = now
                log.warning(
                    "the share at %s has not answered for %.0f s: taking its server for "
                    "gone and failing the requests that wait on it",
                    self.mountpoint, silent,
                )  # fmt: skip
            elif self._answered_at > self.gone_at:
                continue  # it answers again: what failed has failed, nothing more to do
            if now - failed_at >= self.probe_seconds:
                try:
                    self._fail_waiting(self.mountpoint)
                except RescueError as exc:
                    log.warning("could not fail the requests waiting on %s: %s",
                                self.mountpoint, exc)  # fmt: skip
                failed_at = now
            if self._on_stuck is not None and now - self.gone_at >= self.grace_seconds:
                self._on_stuck()
                return
