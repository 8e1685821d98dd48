"""The wired network of the live system: what each interface has, and a static address.

At boot the live system asks DHCP for an address on every wired interface
(systemd-networkd, ``live-image/config/includes.chroot/etc/systemd/network``);
nothing waits for it, so a machine without a cable boots as fast. Here: the
interfaces and their addresses (``ip -j addr``), and a static address for one
of them, given to systemd-networkd as a runtime configuration
(``/run/systemd/network``, gone at the next boot) that takes precedence over
DHCP until it is removed again.
"""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path

from rescue import system
from rescue.errors import BadInputError, ExternalToolError

RUNTIME_DIR = Path("/run/systemd/network")
"""Where systemd-networkd reads runtime configuration (``$RESCUE_NETWORK_DIR`` in tests)."""
_SYS_NET = Path("/sys/class/net")


@dataclass(frozen=True)
class Interface:
    name: str
    mac: str
    wired: bool
    up: bool
    """The link is up with a carrier (a cable plugged in, for a wired one)."""
    addresses: tuple[str, ...]
    """IPv4 and global IPv6 addresses with their prefix length (``10.0.2.15/24``)."""
    driver: str | None = None


def _driver(name: str) -> str | None:
    link = _SYS_NET / name / "device" / "driver"
    try:
        return os.path.basename(os.readlink(link))
    except OSError:
        return None


def _wired(name: str, link_type: str) -> bool:
    if link_type != "ether" or (_SYS_NET / name / "wireless").exists():
        return False
    return (_SYS_NET / name / "device").exists()  # a real device, not a bridge or veth


def interfaces() -> list[Interface]:
    """Every network interface but loopback, wired ones first."""
    out = system.run(["ip", "-j", "addr", "show"], check=False, timeout=10)
    try:
        links = json.loads(out.stdout or b"[]")
    except ValueError:
        links = []
    found = []
    for link in links if isinstance(links, list) else []:
        name = str(link.get("ifname", ""))
        kind = str(link.get("link_type", ""))
        if not name or kind == "loopback":
            continue
        addrs = tuple(
            f"{a.get('local')}/{a.get('prefixlen')}"
            for a in link.get("addr_info", [])
            if a.get("family") == "inet"
            or (a.get("family") == "inet6" and a.get("scope") == "global")
        )
        flags = link.get("flags", [])
        found.append(
            Interface(
                name=name,
                mac=str(link.get("address", "")),
                wired=_wired(name, kind),
                up="LOWER_UP" in flags,
                addresses=addrs,
                driver=_driver(name),
            )
        )
    return sorted(found, key=lambda i: (not i.wired, i.name))


def summary(found: list[Interface]) -> str:
    """One line for the home screen: the addresses, or why there is none."""
    with_address = [i for i in found if i.addresses]
    if with_address:
        return "Network: " + ", ".join(f"{i.name} {i.addresses[0]}" for i in with_address)
    wired = [i for i in found if i.wired]
    if not wired:
        return "Network: none (no wired interface found)"
    if not any(i.up for i in wired):
        return "Network: none (no cable plugged in)"
    return "Network: waiting for an address (DHCP), or set one with N"


def _runtime_dir() -> Path:
    return Path(os.environ.get("RESCUE_NETWORK_DIR") or RUNTIME_DIR)


def _config_name(interface: str) -> str:
    return f"10-rescue-static-{interface}.network"


def _check_interface(name: str) -> None:
    if not name or "/" in name or name.startswith(".") or not (_SYS_NET / name).exists():
        raise BadInputError(
            f"{name!r} is not a network interface of this machine.",
            hint="rescue network lists them.",
        )


def static_config(
    interface: str, address: str, gateway: str | None = None, dns: tuple[str, ...] = ()
) -> str:
    """The systemd-networkd configuration of a static address; every value checked."""
    try:
        iface = ipaddress.ip_interface(address)
    except ValueError:
        raise BadInputError(
            f"{address!r} is not an address with its prefix length.",
            hint="Write it as 192.168.1.50/24.",
        ) from None
    if "/" not in address:
        raise BadInputError(
            f"{address!r} has no prefix length.", hint="Write it as 192.168.1.50/24."
        )
    lines = ["[Match]", f"Name={interface}", "", "[Network]", f"Address={iface.with_prefixlen}"]
    if gateway:
        try:
            gw = ipaddress.ip_address(gateway)
        except ValueError:
            raise BadInputError(f"{gateway!r} is not a gateway address.") from None
        if gw.version == iface.version and gw not in iface.network:
            raise BadInputError(f"The gateway {gw} is not in {iface.network}.")
        lines.append(f"Gateway={gw}")
    for server in dns:
        try:
            lines.append(f"DNS={ipaddress.ip_address(server)}")
        except ValueError:
            raise BadInputError(f"{server!r} is not a DNS server address.") from None
    lines += ["DHCP=no", "LLMNR=no", "MulticastDNS=no", ""]
    return "\n".join(lines)


def _apply(interface: str) -> None:
    try:
        system.run(["networkctl", "reload"], timeout=30)
        system.run(["networkctl", "reconfigure", interface], timeout=30)
    except ExternalToolError as exc:
        raise ExternalToolError(
            f"systemd-networkd did not take the new configuration of {interface}: {exc.message}",
            hint="The live system runs systemd-networkd; elsewhere, set the address by hand.",
        ) from exc


def set_static(
    interface: str, address: str, gateway: str | None = None, dns: tuple[str, ...] = ()
) -> Path:
    """Give ``interface`` a static address (until the next boot or :func:`use_dhcp`)."""
    text = static_config(interface, address, gateway, dns)  # what was typed, first
    _check_interface(interface)
    folder = _runtime_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / _config_name(interface)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    _apply(interface)
    return path


def use_dhcp(interface: str) -> None:
    """Back to DHCP on ``interface`` (the static address rescue set is removed)."""
    _check_interface(interface)
    (_runtime_dir() / _config_name(interface)).unlink(missing_ok=True)
    _apply(interface)
