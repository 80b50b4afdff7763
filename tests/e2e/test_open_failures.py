"""Opens that fail: the browser hears the true status, and the relay and agent count why.

curl is the browser. An https:// URL makes curl send CONNECT (the proxy's answer is
`%{http_connect}`), an http:// URL makes it send a plain absolute-form request
(`%{http_code}`). Malformed and oversized request heads are sent on raw sockets.
"""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import pytest
from conftest import DENIED, LISTED, Chain, Target
from helpers import curl, free_port, proxy_status, raw_exchange, split_address, streams_active
from support.procs import metric, wait_until

MODES = [pytest.param("https", id="connect"), pytest.param("http", id="request")]


def url(target: Target, mode: str, addr: str, port: int | None = None) -> str:
    return f"{mode}://{addr}:{port or target.port(addr, mode)}/hello"


def streams(chain: Chain, *results: str) -> float:
    assert chain.relay is not None
    admin = chain.relay.ready["admin"]
    return sum(metric(admin, "fastrelay_streams_total", result=r) for r in results)


def dials(chain: Chain, result: str) -> float:
    return metric(chain.agents[0].ready["admin"], "fastrelay_agent_dials_total", result=result)


def bad_requests(chain: Chain) -> float:
    admin = chain.clients[0].ready["admin"]
    return metric(admin, "fastrelay_client_requests_total", route="none", result="bad_request")


def serves_new_sockets(admin: str, n: int = 4) -> bool:
    """Do `n` concurrent admin connections (the lowest free fds) all get an answer?"""
    socks = [socket.create_connection(split_address(admin), timeout=2) for _ in range(n)]
    try:
        for sock in socks:
            sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        return all(sock.recv(16).startswith(b"HTTP/1.1 200") for sock in socks)
    except TimeoutError:
        return False
    finally:
        for sock in socks:
            sock.close()


@pytest.mark.parametrize("mode", MODES)
def test_host_denied_by_agent_policy_gets_403(chain: Chain, target: Target, mode: str) -> None:
    relay0, agent0 = streams(chain, "denied"), dials(chain, "denied")
    assert proxy_status(chain, target, url(target, mode, DENIED)) == 403
    assert streams(chain, "denied") == relay0 + 1
    assert dials(chain, "denied") == agent0 + 1


@pytest.mark.parametrize("mode", MODES)
def test_closed_port_gets_502(chain: Chain, target: Target, mode: str) -> None:
    port = free_port(LISTED)  # nothing listens there: the agent's dial is refused
    relay0, agent0 = streams(chain, "refused", "dial_failed"), dials(chain, "refused")
    assert proxy_status(chain, target, url(target, mode, LISTED, port)) == 502
    assert streams(chain, "refused", "dial_failed") == relay0 + 1
    assert dials(chain, "refused") == agent0 + 1


def test_no_agent_gets_503(make_chain, target: Target, rules_file: Path) -> None:
    chain = make_chain()
    relay = chain.start_relay()
    client = chain.start_client(rules_file)
    assert metric(relay.ready["admin"], "fastrelay_connections", role="agent") == 0
    for mode in ("https", "http"):
        assert proxy_status(chain, target, url(target, mode, LISTED)) == 503, mode
    # client_a retries a no_agent 503 once on its other carrier (another relay
    # in a deployment may have an agent): two opens per request at this relay.
    assert streams(chain, "no_agent") == 2 * 2
    assert metric(client.ready["admin"], "fastrelay_client_retries_total") == 2
    assert streams(chain, "ok") == 0


def test_silent_agent_gets_504_after_the_relay_connect_timeout(
    make_chain, target: Target, rules_file: Path
) -> None:
    chain = make_chain()
    relay = chain.start_relay("--connect-timeout", "1")
    agent = chain.start_agent("--allow", "127.0.0.0/8")
    chain.start_client(rules_file)
    wait_until(
        lambda: metric(relay.ready["admin"], "fastrelay_connections", role="agent") == 1,
        what="the relay sees the agent",
    )
    agent.signal(signal.SIGSTOP)  # connected, but answers nothing (Proc.stop sends SIGCONT)
    started = time.monotonic()
    assert proxy_status(chain, target, url(target, "https", LISTED)) == 504
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 5, f"504 after {elapsed:.2f} s, connect timeout is 1 s"
    # Its liveness probe went unanswered too: the agent is stalled and gets no new opens,
    # so the next open is refused at once rather than after another timeout.
    wait_until(
        lambda: metric(relay.ready["admin"], "fastrelay_agent_stalls_total") == 1,
        what="the relay finds the agent stalled",
    )
    refused = curl(chain, target, url(target, "http", LISTED))
    assert b"every agent is busy or not answering (agent_busy)" in refused.stdout
    assert streams(chain, "timeout") == 1
    assert streams(chain, "limited") == 1
    assert metric(relay.ready["admin"], "fastrelay_streams_active") == 0

    agent.signal(signal.SIGCONT)
    # The agent wakes up to an open the relay already gave up on. Dropping them must
    # leave nothing behind: for a second, every new socket at the agent (admin requests
    # take the lowest free fd, i.e. a dropped dial's) is served.
    deadline = time.monotonic() + 1
    while time.monotonic() < deadline:
        assert serves_new_sockets(agent.ready["admin"]), "sockets left dead by dropped opens"
    # It answers the probe, and then serves a new tunnel.
    wait_until(
        lambda: proxy_status(chain, target, url(target, "http", LISTED)) == 200,
        what="the woken agent takes opens again",
    )
    result = curl(chain, target, url(target, "https", LISTED))
    assert result.returncode == 0, result.stderr
    assert b"hello from the target" in result.stdout
    assert dials(chain, "ok") >= 2, "the agent must not complete opens the relay timed out"
    assert streams(chain, "ok") == dials(chain, "ok")
    wait_until(lambda: streams_active(agent) == 0, what="no stale streams at the agent")


def test_malformed_request_gets_400(chain: Chain) -> None:
    before = bad_requests(chain)
    for head in (b"THIS IS NOT HTTP\r\n\r\n", b"GET /relative HTTP/1.1\r\nHost: x\r\n\r\n"):
        reply = raw_exchange(chain.clients[0].ready["listen"], head)
        assert reply.startswith(b"HTTP/1.1 400 "), reply[:200]
    assert bad_requests(chain) == before + 2


def test_oversized_request_head_gets_431(chain: Chain, target: Target) -> None:
    before = bad_requests(chain)
    filler = "".join(f"X-Filler-{i}: {'a' * 90}\r\n" for i in range(800))  # ~80 KiB
    head = (
        f"GET {url(target, 'http', LISTED)} HTTP/1.1\r\nHost: {LISTED}\r\n{filler}\r\n"
    ).encode()
    assert len(head) > 64 * 1024
    reply = raw_exchange(chain.clients[0].ready["listen"], head)
    assert reply.startswith(b"HTTP/1.1 431 "), reply[:200]
    assert bad_requests(chain) == before + 1
    # client_a is still serving
    assert proxy_status(chain, target, url(target, "https", LISTED)) == 200
