"""`fastrelay relay --workers N`: several relay processes on one port.

Each worker is its own relay instance (SO_REUSEPORT spreads connections),
the agent meshes with every one, the supervisor restarts a worker that dies,
and its admin port serves the workers' metrics merged.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

from conftest import LISTED, Target
from helpers import curl, wait_exit
from support.procs import Chain, fastrelay, is_ready, metric, scrape, wait_until

WORKERS = 2
CARRIERS = 16  # client_a's WebSockets: all landing on one worker has odds 2^-15
TUNNELS = 24


def workers_chain(make_chain, rules_file: Path) -> Chain:
    chain = make_chain()
    chain.start_relay("--workers", str(WORKERS), "--drain-timeout", "5")
    agent = chain.start_agent("--allow", "127.0.0.0/8")
    chain.start_client(rules_file, "--carriers", str(CARRIERS))
    wait_until(
        lambda: metric(agent.ready["admin"], "fastrelay_relay_connected") == WORKERS,
        what="the agent holds a connection to every worker",
    )
    return chain


def run_tunnels(chain: Chain, target: Target, count: int) -> None:
    for _ in range(count):
        result = curl(chain, target, target.https(LISTED, "/hello"))
        assert result.returncode == 0, result.stderr
        assert f"hello from the target at {LISTED}".encode() in result.stdout


def test_tunnels_use_every_worker_and_metrics_add_up(
    make_chain, target: Target, rules_file: Path
) -> None:
    chain = workers_chain(make_chain, rules_file)
    assert chain.relay is not None
    ready = chain.relay.ready
    assert len(set(ready["workers"])) == WORKERS and len(ready["worker_admins"]) == WORKERS
    run_tunnels(chain, target, TUNNELS)

    per_worker = [metric(a, "fastrelay_streams_total", result="ok") for a in ready["worker_admins"]]
    assert all(n > 0 for n in per_worker), f"a worker carried nothing: {per_worker}"
    merged = scrape(ready["admin"])
    assert merged["fastrelay_streams_total", (("result", "ok"),)] == sum(per_worker) == TUNNELS
    assert merged["fastrelay_workers", ()] == WORKERS
    assert merged["fastrelay_connections", (("role", "agent"),)] == WORKERS
    # Process metrics stay per worker, labelled, rather than summed into nonsense.
    assert {
        dict(labels).get("worker") for (name, labels) in merged if name == "process_open_fds"
    } == {
        "0",
        "1",
    }
    assert (
        merged[
            "fastrelay_build_info",
            tuple(sorted({"program": "relay", "version": _version()}.items())),
        ]
        == 1
    )


def test_a_dead_worker_is_restarted_and_counters_never_go_back(
    make_chain, target: Target, rules_file: Path
) -> None:
    chain = workers_chain(make_chain, rules_file)
    assert chain.relay is not None
    admin = chain.relay.ready["admin"]
    run_tunnels(chain, target, 6)
    before = metric(admin, "fastrelay_streams_total", result="ok")
    assert before == 6

    victim = chain.relay.ready["worker_pids"][0]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: metric(admin, "fastrelay_worker_restarts_total") == 1, what="a restart")
    wait_until(lambda: metric(admin, "fastrelay_workers") == WORKERS, what="both workers back")
    agent = chain.agents[0]
    wait_until(
        lambda: metric(agent.ready["admin"], "fastrelay_relay_connected") == WORKERS,
        timeout=15,
        what="the agent holds the restarted worker too",
    )
    assert metric(admin, "fastrelay_streams_total", result="ok") >= before
    run_tunnels(chain, target, 6)
    assert metric(admin, "fastrelay_streams_total", result="ok") >= before + 6
    assert is_ready(admin)


def test_sigterm_stops_every_worker(make_chain, target: Target, rules_file: Path) -> None:
    chain = workers_chain(make_chain, rules_file)
    assert chain.relay is not None
    pids = chain.relay.ready["worker_pids"]
    run_tunnels(chain, target, 2)
    chain.relay.signal(signal.SIGTERM)
    status, _ = wait_exit(chain.relay, 15)
    assert status == 0
    for pid in pids:
        assert not _alive(pid), f"worker {pid} outlived its supervisor"


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for whoever reaps orphans here is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _version() -> str:
    from fastrelay import __version__

    return __version__


def test_workers_exit_when_the_supervisor_is_killed(
    make_chain, target: Target, rules_file: Path
) -> None:
    chain = make_chain()
    relay = chain.start_relay("--workers", str(WORKERS), "--drain-timeout", "1")
    pids = relay.ready["worker_pids"]
    relay.signal(signal.SIGKILL)
    try:
        wait_until(
            lambda: not any(_alive(p) for p in pids), what="no orphaned worker holds the port"
        )
    finally:  # a failure must not leave orphans behind
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_workers_that_cannot_bind_fail_the_supervisor_cleanly(tmp_path: Path) -> None:
    """A port held by another program (without SO_REUSEPORT): the workers
    cannot bind, and the supervisor exits 1 with a message, no traceback, no
    worker left behind."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            fastrelay(
                "relay", "--workers", "2", "--listen", f"127.0.0.1:{port}", "--admin", "127.0.0.1:0"
            ),
            env={**os.environ, "FASTRELAY_CLIENT_TOKENS": "c", "FASTRELAY_AGENT_TOKENS": "a"},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1, result.stderr
    assert "did not report ready" in result.stderr
    assert "address already in use" in result.stderr.lower()  # the worker said why
    assert "Traceback" not in result.stderr
