"""Half-close through CONNECT tunnels: the client's EOF reaches the target, and
the target's answer still comes back afterwards, followed by EOF.

The echo port reads until EOF, then replies `got <n> bytes sha256=<hex>` and
closes, so an answer proves both the half-close and the open other direction.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import LISTED, UNLISTED, Chain, Target
from helpers import (
    all_streams_idle,
    echo_reply,
    fd_count,
    half_close_exchange,
    open_connect,
    open_connect_via,
    recv_all,
    relay_bytes,
)
from support.procs import Proc, metric, wait_until

ROUTES = [pytest.param(LISTED, id="relay"), pytest.param(UNLISTED, id="direct")]
CHURN_TUNNELS = 1500
CHURN_PARALLEL = 20
FD_SLACK = 20


@pytest.mark.parametrize("host", ROUTES)
def test_half_close_then_reply(chain: Chain, target: Target, host: str) -> None:
    before = relay_bytes(chain, "upstream")
    payload = os.urandom(10**6)
    with open_connect(chain, host, target.port(host, "echo")) as sock:
        assert half_close_exchange(sock, payload) == echo_reply(payload)
        assert sock.recv(1) == b"", "more bytes after the echo's EOF"
    moved = relay_bytes(chain, "upstream") - before
    if host == LISTED:
        assert moved >= len(payload)
    else:
        assert moved == 0
    wait_until(lambda: all_streams_idle(chain), timeout=10, what="streams_active back to 0")


@pytest.mark.parametrize("host", ROUTES)
def test_empty_half_close(chain: Chain, target: Target, host: str) -> None:
    """EOF straight after the 200: the target sees 0 bytes and still answers."""
    with open_connect(chain, host, target.port(host, "echo")) as sock:
        assert half_close_exchange(sock, b"") == echo_reply(b"")


@pytest.mark.parametrize("size", [0, 5000])
@pytest.mark.parametrize("host", ROUTES)
def test_bytes_and_eof_sent_with_the_connect_head(
    chain: Chain, target: Target, host: str, size: int
) -> None:
    """The head, the tunnel's bytes and the EOF all sent at once, before the 200: client_a
    holds them while the route opens (the EOF too, which arrives while nothing reads
    for the tunnel yet), and the target sees them in order, then answers."""
    payload = os.urandom(size)
    port = target.port(host, "echo")
    proxy_host, _, proxy_port = chain.clients[0].ready["listen"].rpartition(":")
    with socket.create_connection((proxy_host, int(proxy_port)), timeout=10) as sock:
        head = f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
        sock.sendall(head + payload)
        sock.shutdown(socket.SHUT_WR)
        answer = recv_all(sock)
    status, _, body = answer.partition(b"\r\n\r\n")
    assert status.split(b" ", 2)[1] == b"200", answer[:200]
    assert body == echo_reply(payload)


def one_tunnel(chain: Chain, port: int, i: int) -> bytes | None:
    """One half-closed tunnel; returns None when the answer was right."""
    payload = os.urandom(1000 + i % 4000)
    with open_connect(chain, LISTED, port) as sock:
        reply = half_close_exchange(sock, payload)
    return None if reply == echo_reply(payload) else reply


def test_churn_leaks_no_fds(chain: Chain, target: Target) -> None:
    """1,500 half-closed tunnels through the relay, 20 at a time (uvloop in
    every program): all answered, nobody died, no fd or stream left over."""
    assert chain.relay is not None
    procs = [chain.relay, chain.clients[0], chain.agents[0]]
    wait_until(lambda: all_streams_idle(chain), timeout=10, what="idle before the churn")
    fds_before = {proc.name: fd_count(proc.pid) for proc in procs}
    port = target.port(LISTED, "echo")
    with ThreadPoolExecutor(CHURN_PARALLEL) as pool:
        results = list(pool.map(lambda i: one_tunnel(chain, port, i), range(CHURN_TUNNELS)))
    wrong = [(i, r) for i, r in enumerate(results) if r is not None]
    assert not wrong, f"{len(wrong)} tunnels answered wrongly, e.g. {wrong[:3]}"
    for proc in procs:
        assert proc.alive(), f"{proc.name} died:\n{proc.log_tail()}"
    wait_until(lambda: all_streams_idle(chain), timeout=15, what="streams_active back to 0")

    def fds_settled() -> bool:
        return all(fd_count(p.pid) <= fds_before[p.name] + FD_SLACK for p in procs)

    try:
        wait_until(fds_settled, timeout=10, what="fd counts back near their start")
    except AssertionError:
        now = {proc.name: fd_count(proc.pid) for proc in procs}
        raise AssertionError(f"open fds grew: before {fds_before}, after {now}") from None


SLOTS = 2  # --max-connections of the client_a below


def open_when_a_slot_is_free(client: Proc, port: int, host: str = LISTED) -> socket.socket:
    """A tunnel (through the relay for LISTED) as soon as client_a has a slot: the
    last tunnel's end reaches client_a a moment after the test saw it (bounded wait)."""
    opened: list[socket.socket] = []

    def try_open() -> bool:
        try:
            opened.append(open_connect_via(client, host, port))
        except AssertionError as exc:
            assert "503" in str(exc), exc
            return False
        return True

    wait_until(try_open, timeout=10, interval=0.05, what="a free connection slot")
    return opened[0]


@pytest.mark.parametrize("host", ROUTES)
@pytest.mark.parametrize("ending", ["close", "reset"])
def test_a_browser_dropping_an_idle_tunnel_frees_its_slot_and_costs_no_one_else(
    make_chain: Callable[[], Chain], rules_file: Path, target: Target, ending: str, host: str
) -> None:
    """The browser closes (or resets) a tunnel it never used. Its FIN reaches the
    target, whose answer and FIN then come back to a socket the browser has
    reset: client_a must close that socket (its fd and its --max-connections
    slot come back) and end only that stream. Once, that last FIN raised in
    client_a's session and took the relay connection down with every tunnel
    on it, and the socket was never closed."""
    chain = make_chain()
    chain.start_relay()
    chain.start_agent("--allow", "127.0.0.0/8")
    client = chain.start_client(rules_file, "--max-connections", str(SLOTS + 1))
    port = target.port(host, "echo")
    redials = metric(client.ready["admin"], "fastrelay_reconnects_total")
    with open_connect_via(client, host, port) as other:  # another tab's tunnel, held
        fds = fd_count(client.pid)
        for _ in range(SLOTS * 3):
            sock = open_when_a_slot_is_free(client, port, host)
            if ending == "reset":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        wait_until(lambda: fd_count(client.pid) <= fds, timeout=10, what="client_a's fds back")
        assert half_close_exchange(other, b"still here") == echo_reply(b"still here")
    # the relay connection under both was never lost
    assert metric(client.ready["admin"], "fastrelay_reconnects_total") == redials


def test_relay_tunnels_give_their_connection_slots_back(
    make_chain: Callable[[], Chain], rules_file: Path, target: Target
) -> None:
    """Once a CONNECT tunnel through the relay is open, client_a reads the
    browser's socket through the stream's own protocol (StreamSocket); the
    socket's end must still reach the browser connection, or its slot under
    --max-connections is never given back: after SLOTS tunnels no tunnel
    would open again."""
    chain = make_chain()
    chain.start_relay()
    chain.start_agent("--allow", "127.0.0.0/8")
    client = chain.start_client(rules_file, "--max-connections", str(SLOTS))
    port = target.port(LISTED, "echo")

    def open_tunnel() -> socket.socket:
        return open_when_a_slot_is_free(client, port)

    for i in range(SLOTS * 3):
        payload = os.urandom(500 + i)
        with open_tunnel() as sock:
            assert half_close_exchange(sock, payload) == echo_reply(payload)
    # The slots still count open tunnels: SLOTS held, one more is refused.
    held = [open_tunnel() for _ in range(SLOTS)]
    try:
        host, _, listen_port = client.ready["listen"].rpartition(":")
        # Silent, as in test_connection_limits: client_a answers a connection over its
        # cap at once; a request sent first would be unread bytes at client_a's close,
        # which the kernel turns into a reset that can overtake the answer.
        with socket.create_connection((host, int(listen_port)), timeout=10) as extra:
            assert recv_all(extra).startswith(b"HTTP/1.1 503"), "over the cap, yet served"
        for sock in held:
            assert half_close_exchange(sock, b"held") == echo_reply(b"held")
    finally:
        for sock in held:
            sock.close()
    with open_tunnel() as sock:
        assert half_close_exchange(sock, b"again") == echo_reply(b"again")
