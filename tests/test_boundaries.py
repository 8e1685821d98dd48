"""The core never loads the UI toolkit: checked by importing each core module alone."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

import rescue

CORE = sorted(
    m.name
    for m in pkgutil.walk_packages(rescue.__path__, "rescue.")
    if not m.name.startswith(("rescue.tui", "rescue.__main__"))
)


@pytest.mark.parametrize("module", CORE)
def test_core_module_does_not_load_textual(module: str) -> None:
    code = f"import sys, {module}; sys.exit('textual' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert res.returncode == 0, f"{module} loads textual: {res.stderr}"


def test_the_list_covers_the_core() -> None:
    assert "rescue.copier" in CORE
    assert "rescue.devices.udev" in CORE
    assert "rescue.cli" in CORE
