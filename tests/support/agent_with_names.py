"""``fastrelay agent`` with a fixed table of host names, the tests' stand-in for DNS.

Chromium sends loopback hosts (127.0.0.0/8, their IPv4-mapped forms, localhost) direct before
it asks a PAC, and the sandbox has no DNS for any other name; so a browser test that needs the
PAC to decide uses a made-up name, which this agent resolves from FASTRELAY_TEST_NAMES
(``name=address,...``, loopback addresses only).  Every other name goes to the real resolver,
and the rest of the agent is the real program.

Usage: python tests/support/agent_with_names.py AGENT-ARGS...
"""

from __future__ import annotations

import ipaddress
import os
import sys

import agent.dialer as dialer
from fastrelay.cli import main

NAMES = {
    name: address
    for name, _, address in (
        item.partition("=") for item in os.environ["FASTRELAY_TEST_NAMES"].split(",") if item
    )
}
assert all(ipaddress.ip_address(a).is_loopback for a in NAMES.values()), NAMES
_real_resolve = dialer.resolve


async def resolve(host: str, port: int) -> list[str]:
    if host in NAMES:
        return [NAMES[host]]
    return await _real_resolve(host, port)


dialer.resolve = resolve
sys.exit(main(["agent", *sys.argv[1:]]))
