"""WebSocket pings with a deadline: a peer that stops answering is dropped
within two ping intervals, and its streams end instead of hanging."""

from __future__ import annotations

import signal
from pathlib import Path

from support.procs import is_ready, metric, wait_until

INTERVAL = 0.5  # seconds; the default is 20


def test_relay_drops_a_frozen_agent(make_chain, rules_file: Path) -> None:
    chain = make_chain()
    chain.start_relay("--ping-interval", str(INTERVAL))
    agent = chain.start_agent("--allow", "127.0.0.0/8", "--ping-interval", "60")
    admin = chain.relay.ready["admin"]
    assert metric(admin, "fastrelay_connections", role="agent") == 1
    agent.signal(signal.SIGSTOP)  # alive but silent: no pongs
    # Two intervals plus the poll and scheduling slack of a busy 2-core machine.
    wait_until(
        lambda: metric(admin, "fastrelay_connections", role="agent") == 0,
        timeout=10,
        what="the relay to drop the silent agent",
    )
    agent.signal(signal.SIGCONT)
    wait_until(lambda: is_ready(agent.ready["admin"]), timeout=15, what="agent reconnects")


def test_client_notices_a_frozen_relay(make_chain, rules_file: Path) -> None:
    chain = make_chain()
    relay = chain.start_relay("--ping-interval", "60")
    client = chain.start_client(rules_file, "--ping-interval", str(INTERVAL))
    relay.signal(signal.SIGSTOP)
    try:
        wait_until(
            lambda: not is_ready(client.ready["admin"]),
            timeout=10,
            what="client_a to give up on the silent relay",
        )
    finally:
        relay.signal(signal.SIGCONT)
    wait_until(lambda: is_ready(client.ready["admin"]), timeout=15, what="client_a reconnects")
