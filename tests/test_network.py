"""The live system's network: interfaces read from this machine, a static address checked
and written as systemd-networkd reads it. Applying it (networkctl) is done for real in the
boot test inside the live ISO: this machine's own network is never touched here."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from textual.widgets import Input, Static

from rescue.cli import main
from rescue.devices import network
from rescue.devices.network import Interface
from rescue.errors import BadInputError
from rescue.tui.app import RescueApp
from rescue.tui.home import NetworkDialog


def test_interfaces_of_this_machine_are_read() -> None:
    found = network.interfaces()
    assert all(i.name != "lo" for i in found)
    for i in found:
        assert all("/" in a for a in i.addresses)
    assert network.summary(found).startswith("Network: ")


def test_the_summary_says_why_there_is_no_address() -> None:
    cable = Interface("enp1s0", "52:54:00:00:00:01", wired=True, up=False, addresses=())
    assert network.summary([cable]) == "Network: none (no cable plugged in)"
    waiting = Interface("enp1s0", "52:54:00:00:00:01", wired=True, up=True, addresses=())
    assert "waiting for an address" in network.summary([waiting])
    assert "no wired interface" in network.summary([])
    got = Interface("enp1s0", "52:54:00:00:00:01", True, True, ("10.0.2.15/24",))
    assert network.summary([got, waiting]) == "Network: enp1s0 10.0.2.15/24"


def test_a_static_address_is_checked_before_anything_is_written() -> None:
    text = network.static_config("enp1s0", "192.168.1.50/24", "192.168.1.1", ("9.9.9.9",))
    assert "Name=enp1s0" in text and "Address=192.168.1.50/24" in text
    assert "Gateway=192.168.1.1" in text and "DNS=9.9.9.9" in text and "DHCP=no" in text
    for bad in ("192.168.1.50", "300.1.1.1/24", "x/24"):
        with pytest.raises(BadInputError):
            network.static_config("enp1s0", bad)
    with pytest.raises(BadInputError, match="not in"):
        network.static_config("enp1s0", "192.168.1.50/24", "10.0.0.1")
    with pytest.raises(BadInputError):
        network.static_config("enp1s0", "192.168.1.50/24", dns=("nine",))


def test_the_cli_refuses_an_unknown_interface_and_a_bad_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RESCUE_NETWORK_DIR", str(tmp_path))
    assert main(["network", "static", "no-such-if0", "10.0.0.2/24"]) == 2
    assert main(["network", "static", "lo", "10.0.0.2"]) == 2
    assert main(["network", "dhcp", "no-such-if0"]) == 2
    assert list(tmp_path.iterdir()) == []
    assert main(["network"]) == 0


def test_the_home_screen_shows_the_address_and_the_dialog_checks_what_is_typed() -> None:
    wired = [Interface("enp1s0", "52:54:00:12:34:56", True, True, ("192.168.1.23/24",))]
    app = RescueApp(disks_source=list, smart=lambda _p: None, find_images=list,
                    network=lambda: wired, hotplug=False)  # fmt: skip

    async def go() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause(0.3)
            await app.workers.wait_for_complete()
            await pilot.pause(0.1)
            line = app.screen.query_one("#network", Static)
            assert "enp1s0 192.168.1.23/24" in str(line.render())
            await pilot.press("n")
            await pilot.pause()
            assert isinstance(app.screen, NetworkDialog)
            assert app.screen.query_one("#net-iface", Input).value == "enp1s0"
            app.screen.query_one("#net-address", Input).focus()
            await pilot.press(*"300.1.1.1/24", "enter")
            await pilot.pause()
            assert isinstance(app.screen, NetworkDialog)  # refused, said why, nothing applied
            assert "not an address" in str(app.screen.query_one("#net-error", Static).render())
            await pilot.press("escape")
            await pilot.pause()
            assert not isinstance(app.screen, NetworkDialog)

    asyncio.run(go())
