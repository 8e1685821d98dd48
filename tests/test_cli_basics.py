"""The command line's contract: exit codes, no tracebacks, help."""

from __future__ import annotations

import subprocess
import sys

from rescue.cli import main
from rescue.errors import EXIT_REFUSED


def test_version_runs_as_module() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "rescue", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("rescue ")


def test_unknown_command_is_bad_input(capsys) -> None:
    assert main(["no-such-command"]) == EXIT_REFUSED
    assert "invalid choice" in capsys.readouterr().err
