"""client_a reloads its rules on SIGHUP and on file change; a bad file keeps
the old rules, and open tunnels never notice a reload."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import LISTED, UNLISTED, Chain, Target
from helpers import curl, echo_reply, half_close_exchange, open_connect, relay_bytes
from support.procs import metric, wait_until

ONLY_LISTED = f"# through the relay\n{LISTED}/32\n"
BOTH = f"# through the relay\n{LISTED}/32\n{UNLISTED}/32\n"
ONLY_UNLISTED = f"# the listed host now goes direct\n{UNLISTED}/32\n"
BAD_LINE_3 = f"# through the relay\n{LISTED}/32\n10.0.0.1/33\n{UNLISTED}/32\n"
NO_POLL = "3600"  # the file is in effect never polled: only SIGHUP reloads
FAST_POLL = "0.1"


@pytest.fixture
def start(make_chain, tmp_path: Path) -> Callable[[str, str], tuple[Chain, Path]]:
    def start_chain(rules: str, poll: str) -> tuple[Chain, Path]:
        path = tmp_path / "rules.txt"
        path.write_text(rules)
        chain = make_chain()
        chain.start_relay("--connect-timeout", "5")
        chain.start_agent("--allow", "127.0.0.0/8")
        chain.start_client(path, "--rules-poll", poll)
        return chain, path

    return start_chain


def client_metric(chain: Chain, name: str, **labels: str) -> float:
    return metric(chain.clients[0].ready["admin"], name, **labels)


def reloads(chain: Chain, result: str) -> float:
    return client_metric(chain, "fastrelay_rules_reloads_total", result=result)


def via_relay(chain: Chain, target: Target, host: str) -> bool:
    """Fetch /hello from `host`; True if it went through the relay."""
    relay_before = relay_bytes(chain)
    direct_before = client_metric(
        chain, "fastrelay_client_requests_total", route="direct", result="ok"
    )
    result = curl(chain, target, target.https(host, "/hello"))
    assert result.returncode == 0, result.stderr
    assert f"hello from the target at {host}".encode() in result.stdout
    direct = client_metric(chain, "fastrelay_client_requests_total", route="direct", result="ok")
    moved = relay_bytes(chain) > relay_before
    assert moved != (direct == direct_before + 1), "went both (or neither) ways"
    return moved


def rewrite(path: Path, text: str) -> None:
    """Replace the file atomically, as an editor or config tool would."""
    tmp = path.with_suffix(".new")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_sighup_reload(start, target: Target) -> None:
    chain, path = start(ONLY_LISTED, NO_POLL)
    assert not via_relay(chain, target, UNLISTED)
    assert via_relay(chain, target, LISTED)
    rewrite(path, BOTH)
    assert client_metric(chain, "fastrelay_rules") == 1, "reloaded without SIGHUP"
    chain.clients[0].signal(signal.SIGHUP)
    wait_until(lambda: reloads(chain, "ok") == 1, timeout=10, what="SIGHUP reload")
    assert client_metric(chain, "fastrelay_rules") == 2
    assert via_relay(chain, target, UNLISTED)
    assert chain.clients[0].alive()


def test_reload_on_file_change(start, target: Target) -> None:
    chain, path = start(ONLY_LISTED, FAST_POLL)
    assert not via_relay(chain, target, UNLISTED)
    rewrite(path, BOTH)
    wait_until(lambda: client_metric(chain, "fastrelay_rules") == 2, timeout=10, what="reload")
    assert reloads(chain, "ok") == 1
    assert via_relay(chain, target, UNLISTED)


def test_invalid_file_keeps_old_rules(start, target: Target) -> None:
    chain, path = start(BOTH, FAST_POLL)
    assert via_relay(chain, target, UNLISTED)
    rewrite(path, BAD_LINE_3)
    wait_until(lambda: reloads(chain, "error") == 1, timeout=10, what="failed reload")
    assert reloads(chain, "ok") == 0
    assert client_metric(chain, "fastrelay_rules") == 2
    assert via_relay(chain, target, UNLISTED), "the old rules are no longer in force"
    log = chain.clients[0].log_path.read_text(errors="replace")
    assert f"{path}:3:" in log, log[-2000:]
    # SIGHUP on the same bad file fails the same way.
    chain.clients[0].signal(signal.SIGHUP)
    wait_until(lambda: reloads(chain, "error") == 2, timeout=10, what="failed SIGHUP reload")
    assert client_metric(chain, "fastrelay_rules") == 2
    # A fixed file is picked up again.
    rewrite(path, ONLY_LISTED)
    wait_until(lambda: reloads(chain, "ok") == 1, timeout=10, what="reload of the fixed file")
    assert not via_relay(chain, target, UNLISTED)


def test_open_tunnel_survives_reloads(start, target: Target) -> None:
    """A tunnel opened through the relay keeps working after a reload that
    unlists its host and after a failed reload."""
    chain, path = start(ONLY_LISTED, FAST_POLL)
    relay_up = relay_bytes(chain, "upstream")
    first, second = os.urandom(300_000), os.urandom(200_000)
    with open_connect(chain, LISTED, target.port(LISTED, "echo")) as sock:
        sock.sendall(first)
        rewrite(path, ONLY_UNLISTED)
        wait_until(lambda: reloads(chain, "ok") == 1, timeout=10, what="reload")
        assert not via_relay(chain, target, LISTED), "LISTED should go direct now"
        rewrite(path, BAD_LINE_3)
        wait_until(lambda: reloads(chain, "error") == 1, timeout=10, what="failed reload")
        sock.sendall(second[:100_000])
        chain.clients[0].signal(signal.SIGHUP)
        wait_until(lambda: reloads(chain, "error") == 2, timeout=10, what="SIGHUP reload")
        reply = half_close_exchange(sock, second[100_000:])
        assert reply == echo_reply(first + second)
        assert sock.recv(1) == b""
    assert relay_bytes(chain, "upstream") >= relay_up + len(first) + len(second)
