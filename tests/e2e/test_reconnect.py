"""A relay restarted again and again on the same port: each time client_a and
the agent come back (HELLO resets their backoff) and a tunnel works, with a
handful of dials per restart, not a loop. Outcomes and dial counts only; the
time to the first tunnel is measured, not asserted (issue 10, item 8)."""

from __future__ import annotations

import signal
from pathlib import Path

from conftest import Chain, Target
from support.procs import CLIENT_CARRIERS, is_ready, metric, wait_until
from test_resilience import assert_tunnel_works, relay_connections

AGENT_ARGS = ("--allow", "127.0.0.0/8")
# The default --reconnect-max (the helpers' 1 s cap would make dials linear in the outage)
DEFAULT_PACING = ("--reconnect-max", "10")
RESTARTS = 3
# Dials one carrier slot may make per restart: the lost one's redial, a
# doubling full-jitter backoff from 100 ms over the outage (a few failures for
# the seconds a relay takes to start, even on a slow machine), and the one that
# lands. A redial loop would make hundreds.
DIALS_PER_SLOT = 12
BACK_WITHIN = 30.0  # generous: an outcome wait, not a timing claim


def dials(admin: str) -> float:
    return metric(admin, "fastrelay_relay_dials_total")


def test_relay_restarted_three_times_gets_client_a_and_the_agent_back(
    make_chain, target: Target, rules_file: Path
) -> None:
    chain: Chain = make_chain()
    relay = chain.start_relay("--connect-timeout", "5")
    agent = chain.start_agent(*AGENT_ARGS, *DEFAULT_PACING)
    client = chain.start_client(rules_file, *DEFAULT_PACING)
    peers = {"agent": (agent, 1), "client": (client, CLIENT_CARRIERS)}
    listen = relay.ready["listen"]
    assert_tunnel_works(chain, target)

    for restart in range(1, RESTARTS + 1):
        before = {name: dials(proc.ready["admin"]) for name, (proc, _) in peers.items()}
        old = chain.relay
        assert old is not None
        old.signal(signal.SIGKILL)
        for proc, _ in peers.values():
            wait_until(lambda p=proc: not is_ready(p.ready["admin"]), what=f"{proc.name} loss")

        new = chain.start_relay("--connect-timeout", "5", listen=listen)
        assert new.ready["listen"] == listen and new.ready["instance"] != old.ready["instance"]
        for name, (proc, slots) in peers.items():
            admin = proc.ready["admin"]
            wait_until(lambda a=admin: is_ready(a), BACK_WITHIN, what=f"{name} back ({restart})")
            wait_until(
                lambda a=admin, n=slots: metric(a, "fastrelay_relay_connected") == n,
                BACK_WITHIN,
                what=f"all of {name}'s carriers back ({restart})",
            )
        assert relay_connections(chain, "agent") == 1
        assert relay_connections(chain, "client") == CLIENT_CARRIERS
        assert_tunnel_works(chain, target)
        assert metric(new.ready["admin"], "fastrelay_streams_total", result="ok") == 1

        for name, (proc, slots) in peers.items():
            made = dials(proc.ready["admin"]) - before[name]
            assert slots <= made <= DIALS_PER_SLOT * slots, (
                f"{name} dialled the relay {made:.0f} times for restart {restart}"
            )
