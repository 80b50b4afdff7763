"""200 tunnels at once through the relay, all verified, and no streams left behind."""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

from conftest import LISTED, Chain, Target
from helpers import (
    all_streams_idle,
    curl,
    echo_reply,
    open_connect,
    recv_all,
    streams_active,
)
from support.procs import metric, wait_until
from support.target import pattern_sha256

TUNNELS = 200
BODY = 200 * 1000


def counts(chain: Chain) -> tuple[float, float, float]:
    """Tunnels completed ok at the relay, client_a and agent."""
    assert chain.relay is not None
    return (
        metric(chain.relay.ready["admin"], "fastrelay_streams_total", result="ok"),
        metric(
            chain.clients[0].ready["admin"],
            "fastrelay_client_requests_total",
            route="relay",
            result="ok",
        ),
        metric(chain.agents[0].ready["admin"], "fastrelay_agent_dials_total", result="ok"),
    )


def test_200_parallel_curl_tunnels(chain: Chain, target: Target, tmp_path: Path) -> None:
    before = counts(chain)
    out = tmp_path / "bodies"
    out.mkdir()
    result = curl(
        chain,
        target,
        target.https(LISTED, f"/bytes/{BODY}?seed=[1-{TUNNELS}]"),
        "--parallel",
        "--parallel-immediate",
        "--parallel-max",
        str(TUNNELS),
        "--http1.1",
        "-o",
        str(out / "seed_#1"),
        "-w",
        "%{http_code}\\n",
        max_time=90,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
    assert result.stdout.decode().split() == ["200"] * TUNNELS
    bad = []
    for seed in range(1, TUNNELS + 1):
        body = (out / f"seed_{seed}").read_bytes()
        if len(body) != BODY or hashlib.sha256(body).hexdigest() != pattern_sha256(BODY, seed):
            bad.append(seed)
    assert not bad, f"{len(bad)} bodies differ from the target's, seeds {bad[:10]}"
    after = counts(chain)
    # Every transfer opened its own tunnel (curl ran them all at once, no reuse).
    assert [a - b for a, b in zip(after, before, strict=True)] == [TUNNELS] * 3
    wait_until(lambda: all_streams_idle(chain), timeout=15, what="streams_active back to 0")


def test_200_tunnels_open_at_once(chain: Chain, target: Target) -> None:
    """All 200 CONNECT tunnels are established before any is used, so the
    chain really holds 200 streams at the same moment. 40 MB sent at once
    makes client_a's WebSocket pause and resume every stream's reader after
    their EOF (which once closed the browser sockets: tunnel.py `read_eof`)."""
    assert chain.relay is not None
    echo = target.port(LISTED, "echo")
    socks: list[socket.socket] = []
    try:
        for _ in range(TUNNELS):
            socks.append(open_connect(chain, LISTED, echo))
        for proc in (chain.relay, chain.clients[0], chain.agents[0]):
            assert streams_active(proc) == TUNNELS, proc.name
        payloads = [os.urandom(BODY + i) for i in range(TUNNELS)]
        for sock, payload in zip(socks, payloads, strict=True):
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        wrong = [
            i
            for i, (sock, payload) in enumerate(zip(socks, payloads, strict=True))
            if recv_all(sock) != echo_reply(payload)
        ]
        assert not wrong, f"{len(wrong)} of {TUNNELS} tunnels got a wrong answer: {wrong[:10]}"
    finally:
        for sock in socks:
            sock.close()
    wait_until(lambda: all_streams_idle(chain), timeout=15, what="streams_active back to 0")
