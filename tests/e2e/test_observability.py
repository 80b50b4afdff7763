"""Access logs of all three programs: JSON and logfmt, one line per finished tunnel,
one session id across the chain, SIGHUP reopens, and an unusable path is a config error.

    curl -> client_a -> relay -> agent -> target        each with --access-log FILE
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
from conftest import DENIED, LISTED, UNLISTED, Chain, Target
from helpers import all_streams_idle, curl, echo_reply, free_port, half_close_exchange, open_connect
from support.logfmt import parse_logfmt
from support.procs import AGENT_TOKEN, CLIENT_TOKEN, ROOT, metric, wait_until

PROGRAMS = ("client", "relay", "agent")
KEYS = {
    "ts", "program", "session", "client", "target", "route", "result",
    "bytes_up", "bytes_down", "duration_s",
}  # fmt: skip
BYTES = {"bytes_up", "bytes_down"}
# The relay names the agent and leaves out the byte counts (per-tunnel counting
# would cost its forward path; docs/OPERATIONS.md): join on session for them.
FIELDS = {"client": KEYS | {"proto"}, "relay": KEYS - BYTES | {"agent"}, "agent": KEYS}


def fields_of(line: dict, program: str, retried: bool = False) -> set[str]:
    """The fields `line` must have: client_a adds, on the relay route, the relay
    instance that answered, for a failure its precise reason word, and for a
    retried open the first try's "RELAY:REASON"."""
    fields = FIELDS[program]
    if program == "client" and line.get("route") == "relay":
        fields = fields | {"relay"}
        if line.get("result") not in ("ok", "aborted"):
            fields = fields | {"reason"}
        if retried:
            fields = fields | {"retry_of"}
    return fields


ADDRESS = re.compile(r"127\.0\.0\.1:\d+")
BODY = 100_000
FIVE_MB = 5 * 1024 * 1024


@dataclass
class Logged:
    chain: Chain
    paths: dict[str, Path]  # program -> its access log

    def lines(self, program: str) -> list[dict]:
        return read_lines(self.paths[program], json_format=True)

    def counts(self) -> dict[str, int]:
        return {p: len(self.lines(p)) for p in PROGRAMS}

    def new_lines(self, before: dict[str, int], program: str, expected: int) -> list[dict]:
        """Wait (bounded) until `program` has `expected` lines after `before`; return them."""
        wait_until(
            lambda: len(self.lines(program)) >= before[program] + expected,
            what=f"{expected} new access-log lines at {program}",
        )
        return self.lines(program)[before[program] :]


def read_lines(path: Path, json_format: bool) -> list[dict]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    complete = text[: text.rfind("\n") + 1]  # a line being written is not read yet
    parse = json.loads if json_format else parse_logfmt
    return [parse(line) for line in complete.splitlines()]


def start_logged(chain: Chain, rules: Path, log_dir: Path, *args: str) -> dict[str, Path]:
    paths = {p: log_dir / f"{p}-access.log" for p in PROGRAMS}
    chain.start_relay(*args, "--access-log", str(paths["relay"]))
    allow = ("--allow", "127.0.0.0/8", "--deny", f"{DENIED}/32")
    chain.start_agent(*allow, *args, "--access-log", str(paths["agent"]))
    chain.start_client(rules, *args, "--access-log", str(paths["client"]))
    return paths


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory, rules_file: Path) -> Iterator[Logged]:
    chain = Chain(tmp_path_factory.mktemp("chain-logs"))
    try:
        json_logs = ("--log-format", "json")
        paths = start_logged(chain, rules_file, tmp_path_factory.mktemp("access"), *json_logs)
        yield Logged(chain, paths)
    finally:
        chain.stop()


def fetch(chain: Chain, target: Target, url: str) -> tuple[int, int, int]:
    """curl `url` through client_a: (curl's local port, CONNECT status, body bytes)."""
    out = ["-o", "/dev/null", "-w", "%{local_port} %{http_connect} %{size_download}"]
    result = curl(chain, target, url, *out)
    port, connect, size = result.stdout.decode().split()
    return int(port), int(connect), int(size)


def by_session(lines: list[dict], session: str) -> dict:
    [line] = [x for x in lines if x["session"] == session]
    return line


def check_fields(line: dict, program: str, retried: bool = False) -> None:
    assert set(line) == fields_of(line, program, retried), line
    assert line["program"] == program
    assert datetime.fromisoformat(line["ts"]).tzinfo is not None, line["ts"]
    assert line["route"] in ("relay", "direct")
    for key in BYTES & set(line):
        assert isinstance(line[key], int) and line[key] >= 0, line
    assert line["duration_s"] >= 0


def test_client_a_logs_one_line_per_request(logged: Logged, target: Target) -> None:
    chain = logged.chain
    before = logged.counts()
    requests = [
        (target.https(LISTED, f"/bytes/{BODY}"), "relay", 200, "ok"),
        (target.https(UNLISTED, f"/bytes/{BODY}"), "direct", 200, "ok"),
        (target.https(DENIED, "/hello"), "relay", 403, "denied"),
        (f"https://{LISTED}:{free_port(LISTED)}/x", "relay", 502, "refused"),
    ]
    ports = []
    for url, _route, status, _result in requests:
        port, connect, size = fetch(chain, target, url)
        assert connect == status, url
        assert size == (BODY if status == 200 else 0)
        ports.append(port)
    lines = logged.new_lines(before, "client", len(requests))
    assert len(lines) == len(requests)
    for line, port, (url, route, _status, result) in zip(lines, ports, requests, strict=True):
        check_fields(line, "client")
        assert line["client"] == f"127.0.0.1:{port}"
        assert line["target"] == url.split("/")[2]
        assert (line["route"], line["result"]) == (route, result)
        if route == "relay":
            assert line["relay"] == chain.relay.ready["instance"]  # type: ignore[union-attr]
            assert line.get("reason") == (None if result == "ok" else result)
        if result == "ok":
            assert line["bytes_down"] >= BODY  # the body plus TLS
            assert line["bytes_up"] > 0  # at least the TLS ClientHello
        else:
            assert line["bytes_up"] == line["bytes_down"] == 0
        assert (line["session"] == "-") == (route == "direct")


def test_relay_and_agent_lines_share_the_session_and_the_byte_counts(
    logged: Logged, target: Target
) -> None:
    chain = logged.chain
    assert chain.relay is not None
    before = logged.counts()
    cases = [
        (target.https(LISTED, f"/bytes/{BODY}"), ("ok", "ok", "ok")),
        (target.https(DENIED, "/hello"), ("denied", "denied", "denied")),
        # one failure, one word at all three programs (fastrelay/protocol/status.py)
        (f"https://{LISTED}:{free_port(LISTED)}/x", ("refused", "refused", "refused")),
    ]
    for url, _results in cases:
        fetch(chain, target, url)
    new = {p: logged.new_lines(before, p, len(cases)) for p in PROGRAMS}
    assert {p: len(lines) for p, lines in new.items()} == dict.fromkeys(PROGRAMS, len(cases))
    for client_line, (url, results) in zip(new["client"], cases, strict=True):
        session = client_line["session"]
        lines = {p: by_session(new[p], session) for p in PROGRAMS}
        for program, line in lines.items():
            check_fields(line, program)
            assert line["target"] == url.split("/")[2]
            assert line["route"] == "relay"
        assert tuple(lines[p]["result"] for p in PROGRAMS) == results
        relay, agent = lines["relay"], lines["agent"]
        assert ADDRESS.fullmatch(relay["client"]) and ADDRESS.fullmatch(relay["agent"])
        assert relay["client"] != relay["agent"]
        assert agent["client"] == chain.relay.ready["listen"]  # the agent's peer is the relay
        # A tunnel closed with FIN both ways: every byte sent arrived, so both
        # ends count exactly the same payload in each direction.
        for key in BYTES:
            assert client_line[key] == agent[key], (key, lines)
        if results[0] == "ok":
            assert client_line["bytes_down"] >= BODY


def test_a_line_is_written_only_when_the_tunnel_ends(logged: Logged, target: Target) -> None:
    chain = logged.chain
    assert chain.relay is not None
    relay_admin, agent_admin = chain.relay.ready["admin"], chain.agents[0].ready["admin"]
    up = "fastrelay_stream_bytes_total"
    relay_up = metric(relay_admin, up, direction="upstream")
    agent_up = metric(agent_admin, up, direction="upstream")
    payload = b"x" * 300_000
    before = logged.counts()
    with open_connect(chain, LISTED, target.port(LISTED, "echo")) as sock:
        sock.sendall(payload)
        wait_until(
            lambda: (
                metric(relay_admin, up, direction="upstream") >= relay_up + len(payload)
                and metric(agent_admin, up, direction="upstream") >= agent_up + len(payload)
            ),
            what="the payload passed the relay and reached the agent",
        )
        assert logged.counts() == before, "a line was written while the tunnel was open"
        reply = half_close_exchange(sock, b"")
    assert reply == echo_reply(payload)
    new = {p: logged.new_lines(before, p, 1) for p in PROGRAMS}
    for program, lines in new.items():
        [line] = lines
        assert line["session"] == new["client"][0]["session"]
        assert line["result"] == "ok", program
        if program != "relay":
            assert (line["bytes_up"], line["bytes_down"]) == (len(payload), len(reply)), program


def test_a_5_mb_download_is_one_line(logged: Logged, target: Target) -> None:
    before = logged.counts()
    port, connect, size = fetch(logged.chain, target, target.https(LISTED, f"/bytes/{FIVE_MB}"))
    assert (connect, size) == (200, FIVE_MB)
    new = {p: logged.new_lines(before, p, 1) for p in PROGRAMS}
    wait_until(lambda: all_streams_idle(logged.chain), what="every stream closed")
    assert logged.counts() == {p: before[p] + 1 for p in PROGRAMS}
    client_line = new["client"][0]
    assert client_line["client"] == f"127.0.0.1:{port}"
    assert client_line["bytes_down"] >= FIVE_MB
    for program in PROGRAMS:
        assert new[program][0]["session"] == client_line["session"], program
    assert new["agent"][0]["bytes_down"] == client_line["bytes_down"]
    assert new["agent"][0]["bytes_up"] == client_line["bytes_up"]


def test_tokens_appear_in_no_log(logged: Logged, target: Target) -> None:
    before = logged.counts()
    fetch(logged.chain, target, target.https(LISTED, "/hello"))
    logged.new_lines(before, "relay", 1)
    for program, path in logged.paths.items():
        text = path.read_text()
        assert text.strip(), f"{program} wrote no access log"
        for token in (CLIENT_TOKEN, AGENT_TOKEN):
            assert token not in text, f"token in {program}'s access log"
    for proc in logged.chain.procs:
        text = proc.log_path.read_text(errors="replace")
        for token in (CLIENT_TOKEN, AGENT_TOKEN):
            assert token not in text, f"token in {proc.name}'s stderr log"


def test_open_without_an_agent_is_logged_as_no_agent(
    make_chain, target: Target, rules_file: Path, tmp_path: Path
) -> None:
    chain = make_chain()
    relay_log, client_log = tmp_path / "relay.log", tmp_path / "client.log"
    chain.start_relay("--log-format", "json", "--access-log", str(relay_log))
    chain.start_client(rules_file, "--log-format", "json", "--access-log", str(client_log))
    assert fetch(chain, target, target.https(LISTED, "/hello"))[1] == 503
    wait_until(lambda: read_lines(client_log, json_format=True), what="client_a's line")
    [client_line] = read_lines(client_log, json_format=True)
    assert client_line["result"] == "no_agent" and client_line["session"] != "-"
    # client_a retries a no_agent answer once (on another carrier), with the
    # same session: the relay logs each attempt.
    relay_lines = read_lines(relay_log, json_format=True)
    assert len(relay_lines) == 2, relay_lines
    https = f"{LISTED}:{target.port(LISTED, 'https')}"
    check_fields(client_line, "client", retried=True)
    instance = chain.relay.ready["instance"]  # type: ignore[union-attr]
    assert (client_line["relay"], client_line["reason"]) == (instance, "no_agent")
    assert client_line["retry_of"] == f"{instance}:no_agent"
    for line in relay_lines:
        assert set(line) == KEYS - BYTES, line  # no agent to name
    for line in (client_line, *relay_lines):
        assert (line["session"], line["result"]) == (client_line["session"], "no_agent")
        assert line["target"] == https


def test_text_format_is_logfmt_with_the_same_keys(
    make_chain, target: Target, rules_file: Path, tmp_path: Path
) -> None:
    chain = make_chain()
    paths = start_logged(chain, rules_file, tmp_path, "--log-format", "text")
    fetch(chain, target, target.https(LISTED, "/hello"))
    fetch(chain, target, target.https(UNLISTED, "/hello"))
    expected = {"client": 2, "relay": 1, "agent": 1}
    for program, n in expected.items():
        wait_until(
            lambda p=program, n=n: len(read_lines(paths[p], json_format=False)) >= n,
            what=f"{program}'s lines",
        )
        lines = read_lines(paths[program], json_format=False)  # parse_logfmt is strict
        assert len(lines) == n, program
        for line in lines:
            assert set(line) == fields_of(line, program), line
            assert line["program"] == program
            assert line["result"] == "ok"
            assert float(line["duration_s"]) >= 0
            if program != "relay":
                assert int(line["bytes_down"]) > 0
            assert not paths[program].read_text().lstrip().startswith("{")
    assert [x["route"] for x in read_lines(paths["client"], json_format=False)] == [
        "relay",
        "direct",
    ]


def test_sighup_reopens_the_access_log(
    make_chain, target: Target, rules_file: Path, tmp_path: Path
) -> None:
    chain = make_chain()
    paths = start_logged(chain, rules_file, tmp_path, "--log-format", "json")
    procs = {"relay": chain.relay, "agent": chain.agents[0], "client": chain.clients[0]}
    fetch(chain, target, target.https(LISTED, "/hello"))
    for path in paths.values():
        wait_until(lambda p=path: len(read_lines(p, json_format=True)) == 1, what=f"{path.name}")
    rotated = {p: path.with_suffix(".log.1") for p, path in paths.items()}
    for program, path in paths.items():
        path.rename(rotated[program])
        procs[program].signal(signal.SIGHUP)
    for path in paths.values():
        wait_until(path.exists, what=f"{path.name} created again")
    fetch(chain, target, target.https(LISTED, "/hello"))
    for program, path in paths.items():
        wait_until(lambda p=path: len(read_lines(p, json_format=True)) == 1, what=f"{path.name}")
        [old] = read_lines(rotated[program], json_format=True)
        [new] = read_lines(path, json_format=True)
        assert old["session"] != new["session"], program
        assert new["result"] == "ok"
        assert procs[program].alive(), f"SIGHUP killed the {program}"


def run_cli(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fastrelay", *argv],
        env={"PATH": "/usr/bin:/bin", **env},
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=20,
    )


CLI_ARGS = {
    "relay": (["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"], {
        "FASTRELAY_CLIENT_TOKENS": "c", "FASTRELAY_AGENT_TOKENS": "a"}),
    "agent": (["--relay", "ws://127.0.0.1:9", "--admin", "127.0.0.1:0"], {"FASTRELAY_TOKEN": "t"}),
    "client": (
        ["--relay", "ws://127.0.0.1:9", "--admin", "127.0.0.1:0", "--listen", "127.0.0.1:0"],
        {"FASTRELAY_TOKEN": "t"},
    ),
}  # fmt: skip


@pytest.mark.parametrize("program", PROGRAMS)
@pytest.mark.parametrize("how", ["flag", "env", "directory"])
def test_unusable_access_log_path_exits_2(program: str, how: str, tmp_path: Path) -> None:
    argv, env = CLI_ARGS[program]
    bad = str(tmp_path) if how == "directory" else "/nonexistent-dir/x.log"
    if how == "env":
        env, names = {**env, "FASTRELAY_ACCESS_LOG": bad}, "FASTRELAY_ACCESS_LOG"
    else:
        argv, names = [*argv, "--access-log", bad], "--access-log"
    result = run_cli(program, *argv, env=env)
    assert result.returncode == 2, result.stderr
    assert names in result.stderr, result.stderr
    assert (bad if how == "directory" else "/nonexistent-dir") in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
