"""Name look-ups, through the whole chain, against a real DNS server on loopback: the agent's
(the relay route) and client_a's (the direct route).

A tenant who opens tunnels to names whose authority never answers (their own zone, a dead
server) must cost only those opens. Under getaddrinfo two such names took every thread libuv
lets look-ups use, and every later open to a name, of every tenant, waited ~10 s behind them;
on client_a, one dead site held up the browser's other direct connections the same way. Both
now ask c-ares on their event loop (fastrelay/resolver.py).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import LISTED, Chain, Target, curl_path
from helpers import raw_exchange, response_head
from support import dns_server
from support.procs import metric, wait_until

STALLED = 20


@pytest.fixture(scope="module")
def dns_chain(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Chain, dns_server.DnsServer]]:
    """client_a sends every .test name through the relay and every .example name direct; both
    the agent and client_a ask our DNS server, where good.* are the target's address and every
    name under stall.* goes unanswered."""
    rules = tmp_path_factory.mktemp("dns") / "rules.txt"
    rules.write_text(f".test\n{LISTED}/32\n")
    table = {"good.test": [LISTED], "other.test": [LISTED], "good.example": [LISTED]}
    with dns_server.running(table, stall=["stall.test", "stall.example"]) as (server, address):
        chain = Chain(tmp_path_factory.mktemp("chain-logs"))
        try:
            chain.start_relay("--connect-timeout", "30")
            chain.start_agent("--allow", "127.0.0.0/8", "--dns-server", address)
            chain.start_client(rules, "--dns-server", address)
            yield chain, server
        finally:
            chain.stop()


def lookups(chain: Chain, result: str, route: str = "relay") -> float:
    """The agent's look-ups (relay route) or client_a's (direct route)."""
    admin = (chain.agents if route == "relay" else chain.clients)[0].ready["admin"]
    return metric(admin, "fastrelay_dns_lookups_total", result=result)


def requests(chain: Chain, route: str, result: str) -> float:
    admin = chain.clients[0].ready["admin"]
    return metric(admin, "fastrelay_client_requests_total", route=route, result=result)


def curl_through(chain: Chain, url: str, *args: str) -> subprocess.Popen[bytes]:
    """curl `url` through client_a with a CONNECT tunnel; prints the CONNECT status, then the
    body."""
    return subprocess.Popen(
        [
            curl_path(),
            *("-s", "-p", "-x", chain.proxy, "--max-time", "60"),
            *("-w", "\n%{http_connect}"),
            *args,
            url,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )


def connect(chain: Chain, host: str, port: int) -> tuple[int, str]:
    head = f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    reply = raw_exchange(chain.clients[0].ready["listen"], head, timeout=60)
    status, _headers = response_head(reply)
    return status, reply.partition(b"\r\n\r\n")[2].decode("utf-8", errors="replace")


def test_a_name_resolves_through_the_agents_dns_server_and_is_kept_for_its_ttl(
    dns_chain: tuple[Chain, dns_server.DnsServer], target: Target
) -> None:
    chain, server = dns_chain
    url = f"http://other.test:{target.port(LISTED, 'http')}/hello"
    ok, cached = lookups(chain, "ok"), lookups(chain, "cached")
    for _ in range(3):
        out, _ = curl_through(chain, url).communicate(timeout=90)
        body, _, status = out.decode().rpartition("\n")
        assert status == "200", out
        assert "hello" in body
    assert lookups(chain, "ok") == ok + 1
    assert lookups(chain, "cached") == cached + 2
    assert server.questions["other.test"] == 2  # A and AAAA, once


@pytest.mark.parametrize(("route", "suffix"), [("relay", "test"), ("direct", "example")])
def test_names_whose_dns_never_answers_hold_up_no_other_open(
    dns_chain: tuple[Chain, dns_server.DnsServer], target: Target, route: str, suffix: str
) -> None:
    chain, server = dns_chain
    port = target.port(LISTED, "http")

    def asked() -> int:
        return sum(n for name, n in server.questions.items() if name.endswith(f".stall.{suffix}"))

    before, ok = asked(), requests(chain, route, "ok")
    stalled = [curl_through(chain, f"http://n{i}.stall.{suffix}:{port}/") for i in range(STALLED)]
    try:
        # Every stalled name has reached the DNS server, which will never answer it.
        wait_until(lambda: asked() >= before + STALLED, timeout=30, what="stalled questions")
        url = f"http://good.{suffix}:{port}/hello"
        out, _ = curl_through(chain, url).communicate(timeout=90)
        still_waiting = sum(proc.poll() is None for proc in stalled)
        assert out.decode().rpartition("\n")[2] == "200", out
        assert requests(chain, route, "ok") == ok + 1  # by the route under test
        assert still_waiting == STALLED
        # Each stalled open is answered in the end: c-ares gives up on the name (502), or
        # --dial-timeout (10 s) ends the open (504). Never a hang, never a 200.
        statuses = []
        for proc in stalled:
            out, _ = proc.communicate(timeout=90)
            statuses.append(out.decode().rpartition("\n")[2])
        assert set(statuses) <= {"502", "504"}, statuses
    finally:
        for proc in stalled:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    assert lookups(chain, "timeout", route) + requests(chain, route, "timeout") >= STALLED


@pytest.mark.parametrize(("route", "suffix"), [("relay", "test"), ("direct", "example")])
def test_a_name_that_does_not_exist_gets_502_dns_naming_it(
    dns_chain: tuple[Chain, dns_server.DnsServer], route: str, suffix: str
) -> None:
    chain, _server = dns_chain
    before = lookups(chain, "not_found", route)
    status, body = connect(chain, f"nowhere.{suffix}", 443)
    assert status == 502, body
    assert f"DNS lookup of nowhere.{suffix} failed: Domain name not found" in body
    assert body.rstrip().endswith("(dns)"), body
    assert lookups(chain, "not_found", route) == before + 1


def test_the_resolver_can_be_the_systems(tmp_path: Path) -> None:
    """--resolver system: getaddrinfo (NSS: the hosts file names localhost). The target is
    the relay's own admin port, on 127.0.0.1. client_a takes the option too."""
    rules = tmp_path / "rules.txt"
    rules.write_text("localhost\n")
    (tmp_path / "logs").mkdir()
    chain = Chain(tmp_path / "logs")
    try:
        relay = chain.start_relay()
        chain.start_agent("--allow", "127.0.0.0/8", "--resolver", "system")
        chain.start_client(rules, "--resolver", "system")
        port = relay.ready["admin"].rpartition(":")[2]
        out, _ = curl_through(chain, f"http://localhost:{port}/healthz").communicate(timeout=90)
        assert out.decode().rpartition("\n")[2] == "200", out
        assert lookups(chain, "ok") == 1
        assert lookups(chain, "cached") == 0
    finally:
        chain.stop()
