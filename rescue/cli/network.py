"""`rescue network`: the live system's network interfaces, and a static address for one.

``rescue network`` lists the interfaces with their addresses; ``rescue network
static IFACE ADDRESS/PREFIX [--gateway IP] [--dns IP]`` sets a static address
until the next boot; ``rescue network dhcp IFACE`` goes back to DHCP.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

from rescue.devices import network
from rescue.text import shown


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "network", help="show the network interfaces; set a static address or DHCP"
    )
    p.add_argument("--json", action="store_true", help="the interfaces as JSON")
    how = p.add_subparsers(dest="network_command", metavar="ACTION")
    st = how.add_parser("static", help="a static address for an interface (until reboot)")
    st.add_argument("interface")
    st.add_argument("address", help="address with prefix length, e.g. 192.168.1.50/24")
    st.add_argument("--gateway", metavar="IP")
    st.add_argument("--dns", action="append", default=[], metavar="IP")
    dh = how.add_parser("dhcp", help="back to DHCP on an interface")
    dh.add_argument("interface")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.network_command == "static":
        network.set_static(args.interface, args.address, args.gateway, tuple(args.dns))
        print(f"{shown(args.interface)}: static address {shown(args.address)} set.")
    elif args.network_command == "dhcp":
        network.use_dhcp(args.interface)
        print(f"{shown(args.interface)}: DHCP again.")
    found = network.interfaces()
    if args.json:
        print(json.dumps([asdict(i) for i in found], indent=2))
        return 0
    for i in found:
        kind = "wired" if i.wired else "other"
        state = "link up" if i.up else "no link"
        addrs = ", ".join(i.addresses) or "no address"
        print(f"{shown(i.name):12} {kind:6} {shown(i.mac):17} {state:8} {addrs}")
    print(network.summary(found))
    return 0
