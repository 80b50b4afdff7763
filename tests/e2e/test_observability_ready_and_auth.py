"""/readyz and fastrelay_ready (before the relay answers, while the relay drains), and
the relay's auth-failure log: the peer's address, X-Forwarded-For, rate-limited lines.
"""

from __future__ import annotations

import re
import signal
import socket
import time
from pathlib import Path

import pytest
from conftest import LISTED, UNLISTED, Chain, Target
from helpers import (
    curl,
    echo_reply,
    free_port,
    half_close_exchange,
    open_connect,
    proxy_status,
    wait_exit,
)
from support.procs import (
    AGENT_TOKEN,
    CLIENT_TOKEN,
    Proc,
    fastrelay,
    http_get,
    is_ready,
    metric,
    wait_until,
)

# --- /readyz ---


def readyz(admin: str) -> tuple[int, str]:
    return http_get(f"http://{admin}/readyz")


@pytest.mark.parametrize("program", ["client", "agent"])
def test_not_ready_until_a_relay_answers(make_chain, program: str) -> None:
    chain: Chain = make_chain()
    port = free_port()
    argv = ["--relay", f"ws://127.0.0.1:{port}", "--admin", "127.0.0.1:0"]
    argv += ["--reconnect-max", "0.5"]
    if program == "client":
        argv += ["--listen", "127.0.0.1:0"]
    token = CLIENT_TOKEN if program == "client" else AGENT_TOKEN
    proc = Proc(program, fastrelay(program, *argv), {"FASTRELAY_TOKEN": token}, chain.log_dir)
    chain.procs.append(proc)
    admin = proc.ready["admin"]
    wait_until(
        lambda: metric(admin, "fastrelay_reconnects_total") >= 1, what="a failed dial to the relay"
    )
    assert readyz(admin) == (503, "not connected to a relay\n")
    assert metric(admin, "fastrelay_ready") == 0
    assert metric(admin, "fastrelay_relay_connected") == 0
    assert http_get(f"http://{admin}/healthz") == (200, "ok\n")  # alive, just not ready

    chain.start_relay(listen=f"127.0.0.1:{port}")
    wait_until(lambda: is_ready(admin), what=f"{program} connected to the new relay")
    assert readyz(admin) == (200, "ready\n")
    assert metric(admin, "fastrelay_ready") == 1
    assert metric(admin, "fastrelay_relay_connected") >= 1  # client_a keeps a pool


def test_draining_relay_is_not_ready_while_a_tunnel_finishes(
    make_chain, target: Target, rules_file: Path
) -> None:
    chain: Chain = make_chain()
    # A drain timeout far above the waits below: the relay exits because the
    # tunnel closed, not because the timeout ran out.
    relay = chain.start_relay("--drain-timeout", "60")
    chain.start_agent("--allow", "127.0.0.0/8")
    client = chain.start_client(rules_file, "--open-timeout", "2")
    admin = relay.ready["admin"]
    assert readyz(admin) == (200, "ready\n")
    assert metric(admin, "fastrelay_ready") == 1
    first, second = b"a" * 50_000, b"b" * 70_000
    with open_connect(chain, LISTED, target.port(LISTED, "echo")) as sock:
        sock.sendall(first)
        relay.signal(signal.SIGTERM)
        wait_until(lambda: readyz(admin)[0] == 503, what="the relay draining")
        assert readyz(admin) == (503, "draining\n")
        assert metric(admin, "fastrelay_ready") == 0
        assert metric(admin, "fastrelay_streams_active") == 1
        # client_a heard GOAWAY: it is not ready, and a new open finds no
        # relay to go to within its --open-timeout
        wait_until(lambda: not is_ready(client.ready["admin"]), what="client_a sees GOAWAY")
        assert proxy_status(chain, target, target.https(LISTED, "/hello")) == 503
        assert relay.alive()
        # the open tunnel still carries data both ways
        assert half_close_exchange(sock, second) == echo_reply(first + second)
    status, _ = wait_exit(relay, 30)
    assert status == 0, relay.log_tail()
    result = curl(chain, target, target.https(UNLISTED, "/hello"))  # direct still works
    assert result.returncode == 0, result.stderr


# --- the relay's auth-failure log ---

REJECTED = "rejected WebSocket upgrade"


def upgrade_status(address: str, path: str, token: str, extra: str = "") -> int:
    """A WebSocket upgrade on a raw socket (fast enough for a burst); the HTTP status."""
    host, _, port = address.rpartition(":")
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: Upgrade\r\n"
        "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer {token}\r\n"
        f"{extra}\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request.encode())
        head = b""
        while b"\r\n" not in head:
            chunk = sock.recv(4096)
            assert chunk, head
            head += chunk
    return int(head.split()[1])


def rejected_lines(log: Path) -> list[str]:
    return [x for x in log.read_text(errors="replace").splitlines() if REJECTED in x]


def test_auth_failures_are_logged_with_the_peer_and_rate_limited(make_chain) -> None:
    chain = make_chain()
    relay = chain.start_relay()  # text log format: fields as key=value
    listen, admin = relay.ready["listen"], relay.ready["admin"]
    bad = "bad-token-for-the-log-test"
    xff = "X-Forwarded-For: 203.0.113.7\r\n"
    started = time.monotonic()  # the relay's 10 s window starts after this
    assert upgrade_status(listen, "/v1/client", bad, xff) == 401
    wait_until(lambda: rejected_lines(relay.log_path), what="the first rejection logged")
    [first] = rejected_lines(relay.log_path)
    assert "forwarded_for=203.0.113.7" in first and "role=client" in first
    assert re.search(r"peer=127\.0\.0\.1:\d+", first), first

    roles = ["client"] * 4 + ["agent"] * 3
    for role in roles:
        assert upgrade_status(listen, f"/v1/{role}", bad) == 401
    one_window = time.monotonic() - started < 10  # all 8 failures in the first window
    assert metric(admin, "fastrelay_auth_failures_total", role="client") == 5
    assert metric(admin, "fastrelay_auth_failures_total", role="agent") == 3
    lines = rejected_lines(relay.log_path)
    # 5 lines per 10 s window (a machine so slow that the burst spans two
    # windows logs up to 5 more).
    assert len(lines) == 5 if one_window else 5 <= len(lines) <= 8, lines
    assert all(re.search(r"peer=127\.0\.0\.1:\d+", x) for x in lines), lines
    assert sum("forwarded_for=" in x for x in lines) == 1
    assert bad not in relay.log_path.read_text()

    # What the next window says about the rest: tests/unit/test_rate_limited_log.py, on a clock.
