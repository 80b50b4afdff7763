"""Rules pushed from the relay (issue 13 part 5): `relay --client-rules FILE` sends the file to
every client_a in a RULES frame after HELLO and again on each change (SIGHUP or the file
changing); client_a merges it with its own file (local wins, `[pushed off]` ignores it) and
routes, and serves its PAC, by the result.  Open tunnels never notice."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import LISTED, UNLISTED, Chain, Proc, Target
from helpers import curl_via, echo_reply, half_close_exchange, open_connect_via, relay_bytes
from support.pac_node import PacNode
from support.procs import ROOT, fastrelay, http_get, metric, wait_until

from fastrelay.protocol.rules import canonical_text, parse_rules_file

FOLLOW = 3.0  # seconds the clients get to follow a change: generous, never asserted on
POLL = "0.1"  # the relay's --client-rules-poll where the file-change path is under test
NO_POLL = "3600"  # in effect never polled: only SIGHUP reloads
TOKENS = {"FASTRELAY_CLIENT_TOKENS": "ct", "FASTRELAY_AGENT_TOKENS": "at"}


def version(text: str) -> str:
    """The version a relay announces for a rules file: SHA-256 of its canonical text."""
    canonical = canonical_text(parse_rules_file(text, local=False).entries)
    return hashlib.sha256(canonical.encode()).hexdigest()


def rewrite(path: Path, text: str) -> None:
    """Replace the file atomically, as an editor or config tool would."""
    tmp = path.with_suffix(".new")
    tmp.write_text(text)
    os.replace(tmp, path)


def pushed_version(proc: Proc) -> str | None:
    """The pushed rules version a client_a (or relay) exports, or None."""
    found = [
        labels["version"]
        for name, labels in _samples(proc.ready["admin"], "fastrelay_rules_version")
        if labels.get("source") == "pushed"
    ]
    assert len(found) <= 1, found
    return found[0] or None if found else None  # version "" (value 0): none yet


def _samples(admin: str, name: str) -> list[tuple[str, dict[str, str]]]:
    status, text = http_get(f"http://{admin}/metrics")
    assert status == 200
    out = []
    for line in text.splitlines():
        if line.startswith(name + "{"):
            head = line.split("}", 1)[0][len(name) + 1 :]
            labels = dict(
                (k, v.strip('"')) for k, v in (p.split("=", 1) for p in head.split(",") if p)
            )
            out.append((name, labels))
    return out


def rules_count(proc: Proc, source: str) -> float:
    return metric(proc.ready["admin"], "fastrelay_rules", source=source)


def via_relay(chain: Chain, client: Proc, target: Target, host: str) -> bool:
    """Fetch /hello from `host` through `client`; True if it went through the relay."""
    admin = client.ready["admin"]

    def direct() -> float:
        return metric(admin, "fastrelay_client_requests_total", route="direct", result="ok")

    relay_before, direct_before = relay_bytes(chain), direct()
    result = curl_via(f"http://{client.ready['listen']}", target, target.https(host, "/hello"))
    assert result.returncode == 0, result.stderr
    assert f"hello from the target at {host}".encode() in result.stdout
    moved = relay_bytes(chain) > relay_before
    assert moved != (direct() == direct_before + 1), "went both (or neither) ways"
    return moved


def pac_answers(client: Proc, hosts: list[str]) -> list[str]:
    """What `client`'s /proxy.pac (fetched from its proxy port) says for each host, in node."""
    status, pac = http_get(f"http://{client.ready['listen']}/proxy.pac")
    assert status == 200
    node = PacNode()
    try:
        answers: list[str] = node.run(pac, hosts)["answers"]
    finally:
        node.close()
    return answers


def start(make_chain, tmp_path: Path, pushed: str, *relay_args: str, clients: int = 3):
    relay_rules = tmp_path / "client-rules.txt"
    relay_rules.write_text(pushed)
    chain = make_chain()
    chain.start_relay("--client-rules", str(relay_rules), *relay_args)
    chain.start_agent("--allow", "127.0.0.0/8")
    empty = tmp_path / "local-empty.txt"
    empty.write_text("# nothing local: the relay's rules decide\n")
    for _ in range(clients):
        chain.start_client(empty)
    return chain, relay_rules


def all_follow(chain: Chain, text: str) -> None:
    want = version(text)
    for client in chain.clients:
        wait_until(
            lambda c=client: pushed_version(c) == want,
            timeout=FOLLOW,
            interval=0.05,
            what=f"client_a {client.ready['admin']} at version {want[:12]}",
        )


@pytest.mark.parametrize("workers", ["1", "2"])
def test_three_clients_follow_sighup_and_file_changes_tunnel_survives(
    make_chain, tmp_path: Path, target: Target, workers: str
) -> None:
    """With --workers 2 each worker reads the file itself and pushes the same version."""
    first = f"# pushed to everyone\n{LISTED}/32\n"
    chain, path = start(
        make_chain, tmp_path, first, "--client-rules-poll", POLL, "--workers", workers
    )
    all_follow(chain, first)
    relay = chain.relay
    assert relay is not None
    assert pushed_version(relay) == version(first)
    for client in chain.clients:
        assert rules_count(client, "pushed") == 1
        assert rules_count(client, "local") == 0
        assert via_relay(chain, client, target, LISTED)
        assert not via_relay(chain, client, target, UNLISTED)

    payload = [os.urandom(200_000), os.urandom(150_000)]
    with open_connect_via(chain.clients[0], LISTED, target.port(LISTED, "echo")) as sock:
        sock.sendall(payload[0])
        # The file-change path: the relay notices the new file by itself.
        second = f"[pool default]\n{LISTED}/32\n{UNLISTED}/32   # now both\n"
        rewrite(path, second)
        all_follow(chain, second)
        for client in chain.clients:
            assert rules_count(client, "pushed") == 2
            assert via_relay(chain, client, target, UNLISTED)
        # The SIGHUP path (the poll is slow enough not to race it: the stamp is refreshed
        # by the reload itself).
        third = f"{UNLISTED}/32\n"
        rewrite(path, third)
        relay.signal(signal.SIGHUP)
        all_follow(chain, third)
        for client in chain.clients:
            assert not via_relay(chain, client, target, LISTED)
        # The tunnel opened under the first rules still carries bytes both ways.
        reply = half_close_exchange(sock, payload[1])
        assert reply == echo_reply(payload[0] + payload[1])
    assert metric(relay.ready["admin"], "fastrelay_rules_reloads_total", result="ok") >= 2


def test_sighup_alone_pushes(make_chain, tmp_path: Path) -> None:
    first = f"{LISTED}/32\n"
    chain, path = start(make_chain, tmp_path, first, "--client-rules-poll", NO_POLL, clients=1)
    all_follow(chain, first)
    second = f"{LISTED}/32\n.example.test\n"
    rewrite(path, second)
    assert chain.relay is not None
    chain.relay.signal(signal.SIGHUP)
    all_follow(chain, second)
    assert rules_count(chain.clients[0], "pushed") == 2


def test_bad_file_on_reload_is_refused_and_counted(
    make_chain, tmp_path: Path, target: Target
) -> None:
    good = f"{LISTED}/32\n"
    chain, path = start(make_chain, tmp_path, good, "--client-rules-poll", POLL, clients=1)
    relay = chain.relay
    assert relay is not None
    all_follow(chain, good)
    admin = relay.ready["admin"]
    rewrite(path, f"{LISTED}/32\n{UNLISTED}/32\n10.0.0.1/33\n")
    wait_until(
        lambda: metric(admin, "fastrelay_rules_reloads_total", result="error") == 1,
        what="refused reload",
    )
    log = relay.log_path.read_text(errors="replace")
    assert f"{path}:3: invalid pattern" in log, log[-2000:]
    # Old rules kept, at the relay and at client_a.
    assert pushed_version(relay) == version(good)
    assert pushed_version(chain.clients[0]) == version(good)
    assert not via_relay(chain, chain.clients[0], target, UNLISTED)
    # A pushed file may not carry client_a's own directive.
    rewrite(path, f"{LISTED}/32\n[pushed off]\n")
    relay.signal(signal.SIGHUP)
    wait_until(
        lambda: metric(admin, "fastrelay_rules_reloads_total", result="error") >= 2,
        what="second refused reload",
    )
    assert pushed_version(chain.clients[0]) == version(good)
    assert relay.alive()


def test_local_wins_and_pushed_off(make_chain, tmp_path: Path, target: Target) -> None:
    pushed = f"{LISTED}/32\n{UNLISTED}/32\n"
    chain, _ = start(make_chain, tmp_path, pushed, clients=0)
    # Local rules win: the same pattern locally, with its own options.
    local = tmp_path / "local.txt"
    local.write_text(f"{UNLISTED}/32 fallback=direct\n")
    merged = chain.start_client(local)
    # [pushed off]: only the local file counts.
    off_rules = tmp_path / "off.txt"
    off_rules.write_text(f"[pushed off]\n{UNLISTED}/32\n")
    off = chain.start_client(off_rules)
    all_follow(chain, pushed)  # both hold the pushed version...
    assert rules_count(merged, "local") == 1
    assert rules_count(merged, "pushed") == 1  # UNLISTED's pushed rule was replaced
    assert rules_count(off, "pushed") == 0  # ...but this one ignores it
    assert rules_count(off, "local") == 1
    assert via_relay(chain, merged, target, LISTED)
    assert via_relay(chain, merged, target, UNLISTED)
    assert via_relay(chain, off, target, UNLISTED)
    assert not via_relay(chain, off, target, LISTED), "[pushed off] still routes pushed rules"
    # PACs, run in node: the merged client's sends LISTED to it, UNLISTED to it with a
    # DIRECT fallback (the local rule's options); the other's leaves LISTED direct.
    assert pac_answers(merged, [LISTED, UNLISTED, "127.0.0.9"]) == [
        f"PROXY {merged.ready['listen']}",
        f"PROXY {merged.ready['listen']}; DIRECT",
        "DIRECT",
    ]
    assert pac_answers(off, [LISTED, UNLISTED]) == ["DIRECT", f"PROXY {off.ready['listen']}"]
    # Dropping the directive from the local file (reloaded on SIGHUP) turns them back on.
    rewrite(off_rules, f"{UNLISTED}/32\n")
    off.signal(signal.SIGHUP)
    wait_until(lambda: rules_count(off, "pushed") == 1, what="pushed rules back on")
    assert via_relay(chain, off, target, LISTED)


def test_pac_follows_pushed_rules(make_chain, tmp_path: Path) -> None:
    first = ".first.example\n"
    chain, path = start(make_chain, tmp_path, first, "--client-rules-poll", POLL, clients=1)
    all_follow(chain, first)
    client = chain.clients[0]
    url = f"http://{client.ready['listen']}/proxy.pac"
    proxy = f"PROXY {client.ready['listen']}"
    status, _ = http_get(url)
    assert status == 200
    hosts = ["a.first.example", "a.second.example"]
    assert pac_answers(client, hosts) == [proxy, "DIRECT"]
    second = ".second.example\n"
    rewrite(path, second)
    all_follow(chain, second)
    assert pac_answers(client, hosts) == ["DIRECT", proxy]


@pytest.mark.parametrize(
    ("content", "args", "problem"),
    [
        (".ok.example\n\n*.bad*.example\n", (), "{path}:3: invalid pattern '*.bad*.example'"),
        ("[pushed off]\n", (), "{path}:1: '[pushed off]' belongs in client_a's own rules file"),
        (
            "".join(f"h{n:07d}.example.com\n" for n in range(20_000)),
            ("--max-frame-size", "4MiB"),
            "20000 rules are 420000 bytes in canonical form, over the 262144-byte limit",
        ),
        (
            ".a.example\n.b.example\n",
            ("--max-frame-size", "128"),
            "the RULES frame would be 138 bytes, over --max-frame-size (128)",
        ),
    ],
    ids=["bad-line", "directive", "over-rules-limit", "over-frame-size"],
)
def test_bad_client_rules_at_startup_exits_2(
    tmp_path: Path, content: str, args: tuple[str, ...], problem: str
) -> None:
    path = tmp_path / "client-rules.txt"
    path.write_text(content)
    argv = fastrelay("relay", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", *args)
    result = subprocess.run(
        [*argv, "--client-rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, **TOKENS},
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "--client-rules: " in result.stderr, result.stderr
    assert problem.format(path=path) in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
