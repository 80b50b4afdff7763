"""Fail closed or fail open, per rule (issue 13 part 4), with curl through a real client_a.

A listed host fails closed by default: with no relay (or no agent) the browser gets the 503.
A rule with ``fallback=direct`` makes client_a dial the host itself instead, counted as
``fastrelay_client_requests_total{route="fallback"}``.  Two listed targets share one client_a:
LISTED with fallback=direct, DENIED without (fail closed).  The agent's refusal (403) of a
fallback=direct host is no reason to go direct: only "no relay or agent" is.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import DENIED, LISTED, Chain, Target
from helpers import curl, free_port
from support.procs import CLIENT_TOKEN, Proc, client_argv, metric

MAX_TIME = 30.0
REQUESTS = "fastrelay_client_requests_total"


@pytest.fixture
def fallback_rules(tmp_path: Path) -> Path:
    path = tmp_path / "rules.txt"
    path.write_text(f"{LISTED}/32 fallback=direct\n{DENIED}/32   # fails closed\n")
    return path


def ask(chain: Chain, target: Target, url: str) -> tuple[int, str]:
    result = curl(chain, target, url, "-w", "\n%{http_code}", max_time=MAX_TIME)
    assert result.returncode == 0, result.stderr
    body, _, code = result.stdout.decode().rpartition("\n")
    return int(code), body


def start_client(chain: Chain, relay_url: str, rules: Path) -> Proc:
    # --open-timeout far above curl's --max-time: a client_a that waited for it fails the test.
    proc = Proc(
        "client",
        client_argv(relay_url, rules, "--open-timeout", "120"),
        {"FASTRELAY_TOKEN": CLIENT_TOKEN},
        chain.log_dir,
    )
    chain.procs.append(proc)
    chain.clients.append(proc)
    return proc


def check_both_ways(chain: Chain, target: Target, reason: str) -> None:
    admin = chain.clients[0].ready["admin"]
    for url in (target.http(LISTED, "/hello"), target.https(LISTED, "/hello")):
        status, body = ask(chain, target, url)
        assert status == 200, body
        assert LISTED in body  # the target's page names the address it was reached on
    assert metric(admin, REQUESTS, route="fallback", result="ok") == 2
    assert metric(admin, REQUESTS, route="relay", result="ok") == 0
    # direct bytes moved: the fallback tunnels are client_a's own connections
    assert metric(admin, "fastrelay_stream_bytes_total", route="direct", direction="downstream") > 0

    status, body = ask(chain, target, target.http(DENIED, "/hello"))
    assert status == 503, body
    assert body.rstrip().endswith(f"({reason})"), body
    result = curl(chain, target, target.https(DENIED, "/hello"), "-w", "%{http_connect}")
    assert result.returncode != 0  # the CONNECT was refused: no TLS with the target
    assert result.stdout.decode().endswith("503"), result.stdout
    assert metric(admin, REQUESTS, route="relay", result="no_agent") == 2
    assert metric(admin, REQUESTS, route="fallback", result="ok") == 2  # unchanged


def test_relay_down_fallback_direct_reaches_target_and_fail_closed_gets_503(
    make_chain, target: Target, fallback_rules: Path
) -> None:
    chain = make_chain()
    start_client(chain, f"ws://127.0.0.1:{free_port()}", fallback_rules)
    check_both_ways(chain, target, "not_connected")
    log = chain.clients[0].log_path.read_text()
    assert "fallback=direct, dialling it directly" in log


def test_no_agent_fallback_direct_reaches_target_and_fail_closed_gets_503(
    make_chain, target: Target, fallback_rules: Path
) -> None:
    chain = make_chain()
    relay = chain.start_relay()
    chain.start_client(fallback_rules)  # connected to the relay; no agent anywhere
    check_both_ways(chain, target, "no_agent")
    # Nothing went through the relay: its byte counters never moved.
    assert metric(relay.ready["admin"], "fastrelay_stream_bytes_total") == 0


def test_with_an_agent_fallback_direct_goes_through_it_and_its_403_stands(
    make_chain, target: Target, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.txt"
    rules.write_text(f"{LISTED}/32 fallback=direct\n{DENIED}/32 fallback=direct\n")
    chain = make_chain()
    relay = chain.start_relay()
    agent = chain.start_agent("--allow", "127.0.0.0/8", "--deny", f"{DENIED}/32")
    chain.start_client(rules)
    admin = chain.clients[0].ready["admin"]
    status, body = ask(chain, target, target.http(LISTED, "/hello"))
    assert status == 200, body
    assert metric(admin, REQUESTS, route="relay", result="ok") == 1
    assert metric(admin, REQUESTS, route="fallback") == 0
    assert metric(agent.ready["admin"], "fastrelay_agent_dials_total", result="ok") == 1
    assert metric(relay.ready["admin"], "fastrelay_stream_bytes_total", direction="downstream") > 0
    # The agent's policy refuses DENIED: a fallback=direct rule must not route around it.
    status, body = ask(chain, target, target.http(DENIED, "/hello"))
    assert status == 403, body
    assert metric(admin, REQUESTS, route="fallback") == 0
    assert metric(admin, REQUESTS, route="relay", result="denied") == 1
