"""When client_a cannot use the relay, the browser hears why, long before the open timeout
(issue 11, item 2).

A rejected token or a relay that is down used to make every request for a
listed host wait the whole --open-timeout, then get a bare "not connected".
Now, once a dial has failed, a request waits at most NOT_CONNECTED_WAIT (1 s)
for a redial and gets 503 with the cause. Each test sets --open-timeout far
above curl's --max-time, so a client_a that still waited the open timeout
fails the test by curl giving up (exit 28), not by a timing assertion.
"""

from __future__ import annotations

from pathlib import Path

from conftest import LISTED, Chain, Target
from helpers import curl, free_port
from support.procs import Proc, client_argv, wait_until

OPEN_TIMEOUT = "120"
MAX_TIME = 30.0


def start_client(chain: Chain, relay_url: str, rules: Path, token: str) -> Proc:
    proc = Proc(
        "client",
        client_argv(relay_url, rules, "--open-timeout", OPEN_TIMEOUT),
        {"FASTRELAY_TOKEN": token},
        chain.log_dir,
    )
    chain.procs.append(proc)
    chain.clients.append(proc)
    return proc


def ask(chain: Chain, target: Target) -> tuple[int, str]:
    result = curl(
        chain, target, target.http(LISTED, "/hello"), "-w", "\n%{http_code}", max_time=MAX_TIME
    )
    assert result.returncode == 0, result.stderr  # 28: it waited for the open timeout
    body, _, code = result.stdout.decode().rpartition("\n")
    return int(code), body


def test_a_rejected_token_is_a_prompt_503_that_says_so(
    make_chain, target: Target, rules_file: Path
) -> None:
    chain = make_chain()
    chain.start_relay()
    client = start_client(chain, chain.relay_url, rules_file, "not-the-token")
    status, body = ask(chain, target)
    assert status == 503
    assert "the relay rejected client_a's token (HTTP 401)" in body
    assert body.rstrip().endswith("(not_connected)")
    wait_until(lambda: "rejected the token" in client.log_path.read_text(), what="the log line")
    assert "cannot reach relay" not in client.log_path.read_text()


def test_a_relay_that_is_down_is_a_prompt_503_that_says_so(
    make_chain, target: Target, rules_file: Path
) -> None:
    chain = make_chain()
    start_client(chain, f"ws://127.0.0.1:{free_port()}", rules_file, "any-token")
    status, body = ask(chain, target)
    assert status == 503
    assert "relay unreachable: connection refused" in body
    assert body.rstrip().endswith("(not_connected)")
