"""Ctrl-C on a relay with an open tunnel says what it waits for, how long at most, and
that a second Ctrl-C stops at once; the second signal then really stops it (issue 11,
item 4).

    echo socket --CONNECT--> client_a --> relay (--drain-timeout 120) --> agent --> echo target
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from conftest import LISTED, Chain, Target
from helpers import open_connect, streams_active, wait_exit
from support.procs import wait_until

# Long enough that a relay which ignored the second signal could not pass by draining.
DRAIN = "120"
EXIT_BOUND = 20.0  # far below DRAIN: a bound on the wait, not a timing assertion


def relay_log(chain: Chain) -> str:
    assert chain.relay is not None
    return chain.relay.log_path.read_text(errors="replace")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_first_signal_explains_the_wait_and_a_second_stops_at_once(
    make_chain, target: Target, rules_file: Path, sig: int
) -> None:
    chain: Chain = make_chain()
    relay = chain.start_relay("--drain-timeout", DRAIN)
    chain.start_agent("--allow", "127.0.0.0/8")
    chain.start_client(rules_file)
    tunnel = open_connect(chain, LISTED, target.port(LISTED, "echo"))
    try:
        tunnel.sendall(b"in flight")  # the echo target answers once we half-close
        wait_until(lambda: streams_active(relay) == 1, what="the tunnel open at the relay")
        relay.signal(sig)
        wait_until(lambda: "waiting up to" in relay_log(chain), what="the drain line")
        line = next(ln for ln in relay_log(chain).splitlines() if "waiting up to" in ln)
        assert "waiting up to 120s for 1 tunnel on 1 client_a connection" in line, line
        assert "Ctrl-C again to stop at once" in line, line
        assert relay.alive()  # draining: the open tunnel holds it
        relay.signal(sig)
        status, _ = wait_exit(relay, EXIT_BOUND)
        assert status is not None, (
            f"relay still draining after a second signal:\n{relay_log(chain)}"
        )
        assert status != 0  # stopped, not drained
        assert "second signal: stopping now" in relay_log(chain)
    finally:
        tunnel.close()
