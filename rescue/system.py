"""The one place that runs external programs.

Every call to sfdisk, sgdisk, mkswap, mount, losetup, ... goes through
:func:`run`, so there is one place to log them and to turn their failures into
:class:`~rescue.errors.ExternalToolError` with the tool's own words.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence

from rescue.errors import ExternalToolError

log = logging.getLogger(__name__)

# Where system tools live on Debian; a sudo or systemd PATH may lack the sbin folders.
_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def which(tool: str) -> str | None:
    """Full path of ``tool``, also looking in the sbin folders."""
    found = shutil.which(tool)
    if found:
        return found
    path = os.pathsep.join(_SBIN)
    return shutil.which(tool, path=path)


def require(tool: str, package: str | None = None) -> str:
    """Full path of ``tool`` or an error naming the Debian package to install."""
    found = which(tool)
    if found is None:
        pkg = package or tool
        raise ExternalToolError(
            f"The program {tool!r} is not installed.",
            hint=f"Install it with: apt-get install {pkg}",
        )
    return found


def run(
    argv: Sequence[str],
    *,
    input: bytes | None = None,
    check: bool = True,
    timeout: float | None = None,
    env: dict[str, str] | None = None,
    pass_fds: Sequence[int] = (),
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` and return its result; raise ExternalToolError when it fails.

    ``input`` (which may be a key) is never logged; only the argument list is.
    """
    tool = require(argv[0])
    cmd = [tool, *argv[1:]]
    log.debug("run: %s", " ".join(cmd))
    full_env = None
    if env is not None:
        full_env = {**os.environ, **env}
    try:
        result = subprocess.run(
            cmd,
            input=input,
            capture_output=True,
            check=False,
            timeout=timeout,
            env=full_env,
            pass_fds=tuple(pass_fds),
        )
    except subprocess.TimeoutExpired as exc:
        raise ExternalToolError(f"{argv[0]} did not finish within {timeout} s.") from exc
    except OSError as exc:
        raise ExternalToolError(f"Could not start {argv[0]}: {exc.strerror}.") from exc
    if check and result.returncode != 0:
        err = (
            result.stderr.decode(errors="replace").strip()
            or result.stdout.decode(errors="replace").strip()
        )
        raise ExternalToolError(
            f"{' '.join(argv)} failed (exit {result.returncode}): {err or 'no message'}"
        )
    return result


MAX_PIPED_SECRET = 4096
"""A secret handed over on a pipe fits its buffer at once (Linux's is 64 KiB)."""


@contextlib.contextmanager
def secret_pipe(secret: bytes) -> Iterator[int]:
    """The read end of a pipe that holds ``secret`` and then ends, for ``pass_fds``.

    For tools that read a secret from an inherited descriptor (mount.cifs's
    ``PASSWD_FD``): the secret never shows in an argument list, the environment
    (which holds only the descriptor's number) or a file.
    """
    if len(secret) > MAX_PIPED_SECRET:
        raise ValueError("secret too long for a pipe")
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, secret)
    finally:
        os.close(write_end)
    try:
        yield read_end
    finally:
        os.close(read_end)


def output(argv: Sequence[str], *, input: bytes | None = None, timeout: float | None = None) -> str:
    """Run ``argv`` and return its standard output as text."""
    return run(argv, input=input, timeout=timeout).stdout.decode(errors="replace")
