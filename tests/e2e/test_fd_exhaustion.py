"""Out of file descriptors (issue 9, item 6): the relay and client_a, each
started under a 256-fd limit, get 400 plain TCP connections they cannot all
accept. The listener pauses instead of spinning: CPU stays low, the log
stays short, existing connections and /healthz keep working, and once the
connections go the program serves again.

aiofastnet 1.2.0's accept loop, left alone, spins at ~100 % CPU here and logs
tens of thousands of lines a second (fastrelay/io/listener.py).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from conftest import LISTED, Chain, Proc, Target
from helpers import curl, fd_count, open_connect, recv_all, split_address, ws_upgrade_status
from support.procs import (
    AGENT_TOKEN,
    CLIENT_TOKEN,
    client_argv,
    fastrelay,
    http_get,
    is_ready,
    metric,
    wait_until,
)

FD_LIMIT = 256  # soft and hard: the programs raise soft to hard at start
FLOOD = 400  # plain TCP connections, more than the limit
EPISODE = 3.0  # seconds measured while the flood is held open
MAX_CPU_SHARE = 0.3  # of the wall time; the spinning accept loop used ~1.0
MAX_LOG_LINES = 50  # in the window; the spinning accept loop wrote ~60,000 a second
NEAR_LIMIT = FD_LIMIT - 48  # the flood is past this many fds (listener.FD_RESERVE plus slack)

# Runs the program with RLIMIT_NOFILE set, soft and hard, keeping its PID (exec).
_LIMIT_SHIM = (
    "import os, resource, sys; n = int(sys.argv[1]); "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); os.execv(sys.argv[2], sys.argv[2:])"
)


def under_fd_limit(argv: list[str], limit: int = FD_LIMIT) -> list[str]:
    return [sys.executable, "-c", _LIMIT_SHIM, str(limit), *argv]


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` (fields 14 and 15 of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2 :].split()  # fields[0] is field 3, the state
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def log_lines(proc: Proc) -> int:
    with open(proc.log_path, "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


@contextlib.contextmanager
def flood(address: str, count: int = FLOOD) -> Iterator[None]:
    """`count` plain TCP connections to `address`, held open (never a byte
    sent) until the block ends. Non-blocking connects: once the listener's
    backlog is full the kernel drops the SYNs, and a blocking connect would hang."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sockets.append(sock)
            sock.setblocking(False)
            sock.connect_ex(split_address(address))
        yield
    finally:
        for sock in sockets:
            sock.close()


def healthz(proc: Proc) -> int:
    try:
        return http_get(f"http://{proc.ready['admin']}/healthz", timeout=3)[0]
    except OSError:
        return 0


class Episode:
    """CPU seconds, log lines and wall time of `proc` across a window."""

    def __init__(self, proc: Proc) -> None:
        self.proc = proc
        self.cpu = self.lines = self.wall = 0.0

    def measure(self, seconds: float) -> None:
        cpu0, lines0, t0 = cpu_seconds(self.proc.pid), log_lines(self.proc), time.monotonic()
        time.sleep(seconds)
        self.cpu = cpu_seconds(self.proc.pid) - cpu0
        self.lines = log_lines(self.proc) - lines0
        self.wall = time.monotonic() - t0

    def check(self) -> None:
        summary = (
            f"{self.proc.name}: {self.cpu:.2f} s CPU and {self.lines:.0f} log lines "
            f"in {self.wall:.2f} s out of file descriptors"
        )
        print(summary)
        assert self.cpu < MAX_CPU_SHARE * self.wall, summary
        assert self.lines < MAX_LOG_LINES, f"{summary}\n{self.proc.log_tail(10)}"


@contextlib.contextmanager
def exhaust(proc: Proc, listen: str) -> Iterator[Episode]:
    """Flood `listen` until `proc` is at its fd limit, measure, and yield while
    the flood is still held (for checks during the episode)."""
    episode = Episode(proc)
    with flood(listen):
        wait_until(
            lambda: fd_count(proc.pid) >= NEAR_LIMIT,
            timeout=10,
            what=f"{proc.name} near its fd limit",
        )
        episode.measure(EPISODE)
        yield episode


def start_limited(chain: Chain, name: str, argv: list[str], env: dict[str, str]) -> Proc:
    proc = Proc(name, under_fd_limit(argv), env, chain.log_dir)
    chain.procs.append(proc)  # stopped by make_chain's teardown, even on failure
    return proc


def test_relay_out_of_fds_pauses_accepting(make_chain, target: Target, rules_file: Path) -> None:
    chain = make_chain()
    chain.relay = start_limited(
        chain,
        "relay",
        fastrelay("relay", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"),
        {"FASTRELAY_CLIENT_TOKENS": CLIENT_TOKEN, "FASTRELAY_AGENT_TOKENS": AGENT_TOKEN},
    )
    chain.start_agent("--allow", "127.0.0.0/8")
    chain.start_client(rules_file)
    relay = chain.relay
    with exhaust(relay, relay.ready["listen"]) as episode:
        # Existing WebSockets (client_a's and the agent's) still carry tunnels.
        during = curl(chain, target, target.https(LISTED, "/hello"), max_time=10)
        health_during = healthz(relay)
        episode.check()
        assert during.returncode == 0, during.stderr
        assert health_during == 200
    wait_until(lambda: healthz(relay) == 200, timeout=10, what="relay /healthz")
    # A new connection is accepted and answered again (401: no token).
    assert ws_upgrade_status(relay.ready["listen"], "/v1/agent", None) == 401
    assert metric(relay.ready["admin"], "fastrelay_accept_pauses_total") >= 1


def test_client_a_out_of_fds_pauses_accepting(make_chain, target: Target, rules_file: Path) -> None:
    chain = make_chain()
    chain.start_relay()
    chain.start_agent("--allow", "127.0.0.0/8")
    client = start_limited(
        chain, "client", client_argv(chain.relay_url, rules_file), {"FASTRELAY_TOKEN": CLIENT_TOKEN}
    )
    chain.clients.append(client)
    wait_until(lambda: is_ready(client.ready["admin"]), what="client_a connected")
    tunnel = open_connect(chain, LISTED, target.port(LISTED, "http"))
    with tunnel, exhaust(client, client.ready["listen"]) as episode:
        # A tunnel opened before the episode still works during it.
        tunnel.sendall(b"GET /hello HTTP/1.0\r\nHost: x\r\n\r\n")
        answer = recv_all(tunnel)
        health_during = healthz(client)
        episode.check()
        assert f"hello from the target at {LISTED}".encode() in answer, answer[:300]
        assert health_during == 200
    wait_until(lambda: healthz(client) == 200, timeout=10, what="client_a /healthz")
    result = curl(chain, target, target.https(LISTED, "/hello"), max_time=10)
    assert result.returncode == 0, result.stderr
    assert f"hello from the target at {LISTED}".encode() in result.stdout
    assert metric(client.ready["admin"], "fastrelay_accept_pauses_total") >= 1
