"""Batches of small frames stay within the WebSocket message size the peer accepts.

Each program coalesces the small frames of one read batch into one WebSocket message
(fastrelay/io/mux.py). With `--max-frame-size 64KiB` everywhere, a legal setting,
100 tunnels each writing 4 KB at once once made client_a send 77 and 161 KB messages:
the relay closed the carrier with 1009 and every tunnel on it was reset. Here every
tunnel's bytes must arrive, in both directions, and no carrier may be dropped."""

from __future__ import annotations

import os
import signal
import socket
import threading
from pathlib import Path

from conftest import LISTED, Target
from helpers import SOCKET_TIMEOUT, echo_reply, open_connect, recv_all
from support.procs import Chain, metric, wait_until

TUNNELS = 100
WRITE = 4000  # each under the 8 KiB at which a frame leaves on its own
WRITES = 50
LIMIT = "64KiB"
FRAME_LIMIT_ARGS = ("--max-frame-size", LIMIT)


def start(make_chain, rules_file: Path) -> Chain:  # type: ignore[no-untyped-def]
    chain: Chain = make_chain()
    chain.start_relay(*FRAME_LIMIT_ARGS)
    chain.start_agent("--allow", "127.0.0.0/8", *FRAME_LIMIT_ARGS)
    chain.start_client(rules_file, *FRAME_LIMIT_ARGS)
    return chain


def carriers_kept(chain: Chain) -> None:
    """No program lost its relay connection, and no relay log line says why it would."""
    assert chain.relay is not None
    for proc in (chain.clients[0], chain.agents[0]):
        assert metric(proc.ready["admin"], "fastrelay_reconnects_total", role=proc.name) == 0
    for proc in (chain.relay, chain.clients[0], chain.agents[0]):
        assert "1009" not in proc.log_tail(), proc.name


def test_many_tunnels_uploading_small_writes_at_once(
    make_chain, target: Target, rules_file: Path
) -> None:
    """client_a to the relay: 100 tunnels write 4 KB at a time, all at once."""
    chain = start(make_chain, rules_file)
    echo = target.port(LISTED, "echo")
    socks = [open_connect(chain, LISTED, echo) for _ in range(TUNNELS)]
    payloads = [os.urandom(WRITE * WRITES) for _ in range(TUNNELS)]
    start_line = threading.Barrier(TUNNELS)
    failures: list[BaseException] = []

    def upload(sock: socket.socket, payload: bytes) -> None:
        try:
            start_line.wait(SOCKET_TIMEOUT)
            for at in range(0, len(payload), WRITE):
                sock.sendall(payload[at : at + WRITE])
            sock.shutdown(socket.SHUT_WR)
        except BaseException as exc:  # reported below, with the tunnel's answer
            failures.append(exc)

    threads = [
        threading.Thread(target=upload, args=pair) for pair in zip(socks, payloads, strict=True)
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(SOCKET_TIMEOUT * 2)
        wrong = [
            i
            for i, (s, p) in enumerate(zip(socks, payloads, strict=True))
            if recv_all(s) != echo_reply(p)
        ]
    finally:
        for sock in socks:
            sock.close()
    assert not failures, failures[:3]
    assert not wrong, f"{len(wrong)} of {TUNNELS} tunnels lost bytes: {wrong[:10]}"
    carriers_kept(chain)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, f"closed after {len(data)} of {n} bytes"
        data += chunk
    return data


def agent_read(chain: Chain) -> float:
    """Payload bytes the agent has read from targets."""
    admin = chain.agents[0].ready["admin"]
    return metric(admin, "fastrelay_stream_bytes_total", direction="downstream")


def test_many_tunnels_downloading_small_writes_at_once(
    make_chain, target: Target, rules_file: Path
) -> None:
    """The agent to the relay, and the relay to client_a: 100 tunnels each get 4 KB at a
    time, all at once. For each round the agent and the relay are stopped while a
    server writes 4 KB to every tunnel, then the agent resumes (and reads 100 small
    reads in one go) and, once it has read them, the relay (which then reads the
    agent's messages in one go). Each tunnel first says which one it is (4 bytes)."""
    chain = start(make_chain, rules_file)
    relay, agent = chain.relay, chain.agents[0]
    assert relay is not None
    listener = socket.create_server((LISTED, 0), backlog=TUNNELS)
    listener.settimeout(SOCKET_TIMEOUT)
    payloads = [os.urandom(WRITE * WRITES) for _ in range(TUNNELS)]
    socks: list[socket.socket] = []
    conns: list[socket.socket] = [None] * TUNNELS  # type: ignore[list-item]
    try:
        for i in range(TUNNELS):
            sock = open_connect(chain, LISTED, listener.getsockname()[1])
            socks.append(sock)
            sock.sendall(i.to_bytes(4))
        for _ in range(TUNNELS):
            conn = listener.accept()[0]
            conn.settimeout(SOCKET_TIMEOUT)
            conns[int.from_bytes(recv_exact(conn, 4))] = conn
        for round_ in range(WRITES):
            before = agent_read(chain)
            relay.signal(signal.SIGSTOP)
            agent.signal(signal.SIGSTOP)
            try:
                for conn, payload in zip(conns, payloads, strict=True):
                    conn.sendall(payload[round_ * WRITE : (round_ + 1) * WRITE])
                agent.signal(signal.SIGCONT)
                wait_until(
                    lambda: agent_read(chain) >= before + TUNNELS * WRITE,  # noqa: B023
                    what="the agent to read the round",
                )
            finally:
                agent.signal(signal.SIGCONT)
                relay.signal(signal.SIGCONT)
        for conn in conns:
            conn.close()
        got = [recv_all(sock) for sock in socks]
    finally:
        for sock in socks:
            sock.close()
        for conn in conns:
            if conn is not None:
                conn.close()
        listener.close()
    wrong = [i for i in range(TUNNELS) if got[i] != payloads[i]]
    assert not wrong, f"{len(wrong)} of {TUNNELS} tunnels lost bytes: {wrong[:10]}"
    carriers_kept(chain)
