"""Relay membership when Redis is not there: the relay keeps serving with the
set it knows (itself), counts the failed heartbeats, and stays ready."""

from __future__ import annotations

from pathlib import Path

from conftest import LISTED, Target
from helpers import curl, free_port
from support.procs import is_ready, metric, wait_until


def test_unreachable_redis_is_counted_and_the_relay_keeps_serving(
    make_chain, target: Target, rules_file: Path
) -> None:
    chain = make_chain()
    nothing_there = f"redis://127.0.0.1:{free_port()}/0"
    relay = chain.start_relay("--cluster", nothing_there, "--cluster-ttl", "0.6")
    admin = relay.ready["admin"]
    wait_until(
        lambda: metric(admin, "fastrelay_cluster_errors_total") >= 2,
        what="failed heartbeats counted",
    )
    assert metric(admin, "fastrelay_cluster_members") == 1  # itself, the last set it knows
    assert is_ready(admin)
    agent = chain.start_agent("--allow", "127.0.0.0/8")
    chain.start_client(rules_file)
    assert metric(agent.ready["admin"], "fastrelay_cluster_members") == 1
    result = curl(chain, target, target.https(LISTED, "/hello"))
    assert result.returncode == 0, result.stderr
    assert b"hello from the target" in result.stdout
    assert "Redis unavailable" in relay.log_tail()  # logged (rate-limited), not raised
    assert relay.alive()
