"""The agent's default egress blocklist end to end (issue 10, item 3).

Every address here is refused by the agent's policy before it dials (the test checks that
in-process first, with the same flags, so nothing here ever leaves loopback), and client_a's
rules send every one of them through the relay, never out directly. The browser gets 403 and the
agent counts a `denied` dial; the fine-grained decisions are in tests/unit/test_policy.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Chain, Target
from helpers import curl
from support.procs import metric

from agent.policy import EgressPolicy
from client_a.rules import Rules

ALLOW = ("127.0.0.0/8", "2002::/16", "64:ff9b::/96")

# Special-purpose ranges, and IPv6 addresses embedding a blocked IPv4 address (judged as that
# IPv4 address even though the agent allows their 6to4 / NAT64 prefix).
REFUSED = [
    "192.0.0.8",
    "192.0.2.1",
    "198.18.0.1",
    "198.51.100.1",
    "203.0.113.1",
    "240.0.0.1",
    "255.255.255.255",
    "2001:db8::1",
    "fec0::1",
    "100::1",
    "::127.0.0.1",
    "64:ff9b::a9fe:a9fe",
    "64:ff9b:1::1",
    "2002:a9fe:a9fe::",
    "2002:a00:1::1",
]

RULES = "\n".join(
    [
        "192.0.0.0/24",
        "192.0.2.0/24",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "240.0.0.0/4",
        "::/96",
        "fec0::/10",
        "100::/64",
        "2001:db8::/32",
        "64:ff9b::/96",
        "64:ff9b:1::/48",
        "2002::/16",
    ]
)


def test_the_addresses_are_refused_before_any_dial() -> None:
    """The guard for the test below: the agent refuses each one, and client_a relays it."""
    policy = EgressPolicy(allow=ALLOW)
    rules = Rules.parse(RULES)
    for ip in REFUSED:
        assert not policy.check(ip, ip, 443).allowed, ip
        assert rules.matches(ip), ip


@pytest.fixture(scope="module")
def blocklist_chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    rules = tmp_path_factory.mktemp("blocklist-rules") / "rules.txt"
    rules.write_text(RULES + "\n")
    chain = Chain(tmp_path_factory.mktemp("blocklist-logs"))
    try:
        chain.start_relay("--connect-timeout", "2")
        chain.start_agent(*(arg for spec in ALLOW for arg in ("--allow", spec)))
        chain.start_client(Path(rules))
        yield chain
    finally:
        chain.stop()


@pytest.mark.parametrize("ip", REFUSED)
@pytest.mark.parametrize("mode", ["https", "http"])
def test_special_purpose_address_gets_403(
    blocklist_chain: Chain, target: Target, ip: str, mode: str
) -> None:
    test_the_addresses_are_refused_before_any_dial()  # never send one the agent would dial
    chain = blocklist_chain
    admin = chain.agents[0].ready["admin"]
    denied0, ok0 = (
        metric(admin, "fastrelay_agent_dials_total", result=r) for r in ("denied", "ok")
    )
    host = f"[{ip}]" if ":" in ip else ip
    out = ["--noproxy", "", "-o", "/dev/null", "-w", "%{http_code} %{http_connect}"]
    result = curl(chain, target, f"{mode}://{host}:443/", *out, max_time=15)
    http_code, connect_code = result.stdout.decode().split()
    assert int(connect_code if mode == "https" else http_code) == 403
    assert metric(admin, "fastrelay_agent_dials_total", result="denied") == denied0 + 1
    assert metric(admin, "fastrelay_agent_dials_total", result="ok") == ok0
