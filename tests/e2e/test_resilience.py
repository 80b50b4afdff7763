"""Crashes and restarts: a killed agent fails its tunnels fast, a restarted relay is
found again by client_a and the agent, and SIGTERM is a clean, quick exit."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import LISTED, Chain, Target, curl_path
from helpers import curl, open_connect, wait_exit
from support.procs import CLIENT_CARRIERS, is_ready, metric, wait_until

AGENT_ARGS = ("--allow", "127.0.0.0/8")
FAIL_WITHIN = 2.0  # spec: a lost agent fails the client's transfer within 2 s
EXIT_WITHIN = 8.0


def relay_connections(chain: Chain, role: str) -> float:
    assert chain.relay is not None
    return metric(chain.relay.ready["admin"], "fastrelay_connections", role=role)


def full_chain(make_chain, rules_file: Path) -> Chain:
    chain = make_chain()
    # A drain shorter than the default 30 s, so shutdown tests stay short.
    chain.start_relay("--connect-timeout", "5", "--drain-timeout", "3")
    chain.start_agent(*AGENT_ARGS)
    chain.start_client(rules_file)
    return chain


def assert_tunnel_works(chain: Chain, target: Target) -> None:
    result = curl(chain, target, target.https(LISTED, "/hello"), max_time=15)
    assert result.returncode == 0, result.stderr
    assert f"hello from the target at {LISTED}".encode() in result.stdout


def test_killed_agent_fails_the_transfer_fast_and_a_new_agent_serves(
    make_chain, target: Target, rules_file: Path, tmp_path: Path
) -> None:
    chain = full_chain(make_chain, rules_file)
    out = tmp_path / "slow.bin"
    # 3 MB at ~100 KB/s: about 30 s if nothing breaks, far longer than the bound below.
    download = subprocess.Popen(
        [
            curl_path(),
            "-sS",
            "--max-time",
            "60",
            "--cacert",
            str(target.ca_pem),
            "-x",
            chain.proxy,
            "-o",
            str(out),
            target.https(LISTED, "/slow/3000000"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(
            lambda: out.exists() and out.stat().st_size >= 20_000,
            what="the download is under way",
        )
        assert download.poll() is None
        killed_at = time.monotonic()
        chain.agents[0].kill()  # SIGKILL
        try:
            download.wait(FAIL_WITHIN + 5)
        except subprocess.TimeoutExpired:
            pytest.fail(f"curl still running {FAIL_WITHIN + 5} s after the agent was killed")
        failed_after = time.monotonic() - killed_at
    finally:
        if download.poll() is None:
            download.kill()
            download.wait(5)
        assert download.stderr is not None
        stderr = download.stderr.read().decode(errors="replace")
        download.stderr.close()
    assert download.returncode != 0, "the transfer must fail, not look complete"
    assert out.stat().st_size < 3_000_000
    assert failed_after < FAIL_WITHIN, f"curl failed {failed_after:.2f} s after the kill: {stderr}"

    assert chain.relay is not None and chain.relay.alive()
    assert is_ready(chain.relay.ready["admin"])
    wait_until(lambda: relay_connections(chain, "agent") == 0, what="the relay drops the agent")
    assert metric(chain.relay.ready["admin"], "fastrelay_streams_active") == 0

    chain.start_agent(*AGENT_ARGS)
    wait_until(lambda: relay_connections(chain, "agent") == 1, what="the new agent is counted")
    assert_tunnel_works(chain, target)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_client_and_agent_reconnect_to_a_restarted_relay(
    make_chain, target: Target, rules_file: Path, sig: int
) -> None:
    chain = full_chain(make_chain, rules_file)
    assert_tunnel_works(chain, target)
    old = chain.relay
    assert old is not None
    listen = old.ready["listen"]
    old.signal(sig)
    status, _ = wait_exit(old, EXIT_WITHIN)
    assert status == (-signal.SIGKILL if sig == signal.SIGKILL else 0)
    peers = [*chain.clients, *chain.agents]
    for proc in peers:
        wait_until(lambda p=proc: not is_ready(p.ready["admin"]), what=f"{proc.name} sees the loss")

    new = chain.start_relay("--connect-timeout", "5", listen=listen)
    assert new.ready["listen"] == listen and new.ready["instance"] != old.ready["instance"]
    for proc in peers:
        wait_until(lambda p=proc: is_ready(p.ready["admin"]), what=f"{proc.name} reconnects")
    wait_until(
        lambda: relay_connections(chain, "client") == CLIENT_CARRIERS,
        what="both of client_a's carriers back",
    )
    assert relay_connections(chain, "agent") == 1
    assert_tunnel_works(chain, target)
    assert metric(new.ready["admin"], "fastrelay_streams_total", result="ok") == 1


@pytest.mark.parametrize("program", ["relay", "agent", "client"])
def test_sigterm_exits_0_quickly_with_an_open_tunnel(
    make_chain, target: Target, rules_file: Path, program: str
) -> None:
    chain = full_chain(make_chain, rules_file)
    proc = {"relay": chain.relay, "agent": chain.agents[0], "client": chain.clients[0]}[program]
    assert proc is not None
    # An idle tunnel the echo target keeps open until we half-close: shutdown
    # must not wait on it (the relay waits out its --drain-timeout, 3 s here).
    tunnel = open_connect(chain, LISTED, target.port(LISTED, "echo"))
    try:
        tunnel.sendall(b"in flight")
        proc.signal(signal.SIGTERM)
        status, elapsed = wait_exit(proc, EXIT_WITHIN)
    finally:
        tunnel.close()
    assert status == 0, f"{program} exit status {status} after {elapsed:.2f} s:\n{proc.log_tail()}"
    assert elapsed < EXIT_WITHIN


def test_sighup_without_an_access_log_changes_nothing(chain: Chain, target: Target) -> None:
    """SIGHUP reopens access logs (logrotate); with none it must not end the
    process, as its default action would."""
    for proc in (chain.relay, chain.agents[0], chain.clients[0]):
        assert proc is not None
        proc.signal(signal.SIGHUP)
    for proc in (chain.relay, chain.agents[0], chain.clients[0]):
        assert proc is not None
        wait_until(lambda p=proc: is_ready(p.ready["admin"]), what=f"{proc.name} still ready")
        assert proc.alive()
    assert_tunnel_works(chain, target)
