"""The command-line contract, run as real subprocesses: bad config exits 2 naming the
option, a TOML file takes effect, and CLI beats environment beats TOML."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import free_port
from support.procs import ROOT, Proc, fastrelay, is_ready

TOKENS = {"FASTRELAY_CLIENT_TOKENS": "ct", "FASTRELAY_AGENT_TOKENS": "at"}
RELAY_PORTS = ("--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0")  # if it starts after all
PEER_ARGS = ("--relay", "ws://127.0.0.1:9", "--admin", "127.0.0.1:0")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTRELAY_")}
    return {**env, **extra}


def run_cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fastrelay", *argv],
        env=clean_env(**(env or {})),
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=20,  # a config that wrongly starts a server is killed here
    )


PEER_TOKEN = {"FASTRELAY_TOKEN": "t"}
BAD_TIMEOUT_ENV = {**TOKENS, "FASTRELAY_CONNECT_TIMEOUT": "-1"}
BAD = [
    # id, program, extra argv, env, TOML text (or None), text stderr must contain
    ("cli-value", "relay", ["--connect-timeout", "abc"], TOKENS, None, "--connect-timeout"),
    ("env-value", "relay", [], BAD_TIMEOUT_ENV, None, "FASTRELAY_CONNECT_TIMEOUT"),
    ("toml-unknown-key", "relay", [], TOKENS, "bogus_option = 1\n", "bogus_option"),
    ("toml-bad-value", "relay", [], TOKENS, 'connect_timeout = "soon"\n', "connect_timeout"),
    ("toml-syntax", "relay", [], TOKENS, "listen = [unclosed\n", "--config"),
    ("no-client-tokens", "relay", [], {"FASTRELAY_AGENT_TOKENS": "a"}, None, "CLIENT_TOKENS"),
    ("no-agent-tokens", "relay", [], {"FASTRELAY_CLIENT_TOKENS": "c"}, None, "AGENT_TOKENS"),
    ("token-as-flag", "relay", ["--client-tokens", "ct"], TOKENS, None, "--client-tokens"),
    ("agent-no-token", "agent", [], {}, None, "FASTRELAY_TOKEN"),
    ("client-no-token", "client", [], {}, None, "FASTRELAY_TOKEN"),
    ("agent-bad-url", "agent", ["--relay", "http://x"], PEER_TOKEN, None, "--relay"),
    ("client-bad-listen", "client", ["--listen", "nowhere"], PEER_TOKEN, None, "--listen"),
    ("agent-toml-value", "agent", [], PEER_TOKEN, "reconnect_max = 0\n", "reconnect_max"),
    ("cluster-not-redis", "relay", ["--cluster", "http://r:6379"], TOKENS, None, "--cluster"),
    (
        "peers-and-cluster",
        "relay",
        ["--cluster", "redis://r", "--peers", "a"],
        TOKENS,
        None,
        "--peers",
    ),
    ("peers-no-instance", "relay", ["--peers", "a,b"], TOKENS, None, "--instance-id"),
    ("workers-zero", "relay", ["--workers", "0"], TOKENS, None, "--workers"),
    ("workers-word", "relay", ["--workers", "many"], TOKENS, None, "--workers"),
    ("carriers-zero", "client", ["--carriers", "0"], PEER_TOKEN, None, "--carriers"),
    ("carriers-too-many", "client", [], PEER_TOKEN, "carriers = 65\n", "carriers"),
]


@pytest.mark.parametrize(
    ("program", "argv", "env", "toml", "names"), [pytest.param(*b[1:], id=b[0]) for b in BAD]
)
def test_bad_config_exits_2_naming_the_option(
    tmp_path: Path, program: str, argv: list[str], env: dict, toml: str | None, names: str
) -> None:
    ports = RELAY_PORTS if program == "relay" else PEER_ARGS
    if program == "client":
        ports = (*ports, "--listen", "127.0.0.1:0")
    config = []
    if toml is not None:
        (tmp_path / "fastrelay.toml").write_text(toml)
        config = ["--config", str(tmp_path / "fastrelay.toml")]
    result = run_cli(program, *ports, *argv, *config, env=env)
    assert result.returncode == 2, result.stderr
    assert names in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr


def start_relay(log_dir: Path, procs: list[Proc], *argv: str, env: dict[str, str]) -> Proc:
    proc = Proc("relay", fastrelay("relay", *argv), env, log_dir)
    procs.append(proc)
    return proc


@pytest.fixture
def procs():
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.stop()


def test_toml_file_options_take_effect(tmp_path: Path, log_dir: Path, procs: list[Proc]) -> None:
    admin_port = free_port()
    toml = tmp_path / "relay.toml"
    toml.write_text(
        'listen = "127.0.0.1:0"\n'
        f'admin = "127.0.0.1:{admin_port}"\n'
        "connect-timeout = 3.5\n"  # kebab-case keys work too
        'client_tokens = "from-toml"\nagent_tokens = "from-toml-too"\n'
    )
    relay = start_relay(log_dir, procs, "--config", str(toml), env={})
    assert relay.ready["admin"] == f"127.0.0.1:{admin_port}"
    assert is_ready(relay.ready["admin"])


@pytest.mark.parametrize("layers", ["toml", "toml+env", "toml+env+cli"])
def test_cli_beats_env_beats_toml(
    tmp_path: Path, log_dir: Path, procs: list[Proc], layers: str
) -> None:
    toml_port, env_port, cli_port = free_port(), free_port(), free_port()
    toml = tmp_path / "relay.toml"
    toml.write_text(f'listen = "127.0.0.1:0"\nadmin = "127.0.0.1:{toml_port}"\n')
    env = dict(TOKENS)
    argv = ["--config", str(toml)]
    expected = toml_port
    if "env" in layers:
        env["FASTRELAY_ADMIN"] = f"127.0.0.1:{env_port}"
        expected = env_port
    if "cli" in layers:
        argv += ["--admin", f"127.0.0.1:{cli_port}"]
        expected = cli_port
    relay = start_relay(log_dir, procs, *argv, env=env)
    assert relay.ready["admin"] == f"127.0.0.1:{expected}"


def test_env_config_file_is_read(tmp_path: Path, log_dir: Path, procs: list[Proc]) -> None:
    port = free_port()
    toml = tmp_path / "relay.toml"
    toml.write_text(f'listen = "127.0.0.1:0"\nadmin = "127.0.0.1:{port}"\n')
    relay = start_relay(log_dir, procs, env={**TOKENS, "FASTRELAY_CONFIG": str(toml)})
    assert relay.ready["admin"] == f"127.0.0.1:{port}"


@pytest.mark.parametrize("program", [None, "relay", "agent", "client"])
def test_help_exits_0(program: str | None) -> None:
    result = run_cli(*([program] if program else []), "--help")
    assert result.returncode == 0, result.stderr
    if program is None:
        assert all(name in result.stdout for name in ("relay", "agent", "client"))
    else:
        assert "--config" in result.stdout and "FASTRELAY_" in result.stdout


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (".example.com\n\n*.bad*.example\n", "invalid pattern"),
        (b".example.com\n\xff\xfe\n", "not valid UTF-8"),
    ],
    ids=["bad-pattern", "not-utf8"],
)
def test_bad_rules_file_at_startup_exits_2_naming_file_and_line(
    tmp_path: Path, content: str | bytes, problem: str
) -> None:
    rules = tmp_path / "rules.txt"
    if isinstance(content, bytes):
        rules.write_bytes(content)
    else:
        rules.write_text(content)
    line = 3 if problem == "invalid pattern" else 2
    result = run_cli(
        "client", *PEER_ARGS, "--listen", "127.0.0.1:0", "--rules", str(rules), env=PEER_TOKEN
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert f"--rules: {rules}:{line}: {problem}" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) <= 3, result.stderr


SECRET = "s3cr3t-value-never-echoed"


@pytest.mark.parametrize(
    ("program", "argv", "names"),
    [
        ("agent", ["--token", SECRET], "--token:"),
        ("client", ["--token", SECRET], "--token:"),
        ("agent", [f"--token={SECRET}"], "--token:"),
        ("relay", ["--client-tokens", SECRET], "--client-tokens:"),
        ("relay", ["--agent-tokens", SECRET], "--agent-tokens:"),
        ("agent", ["--token-file", SECRET], "--token-file"),
        ("relay", ["--client-tokens-file", SECRET], "--client-tokens-file"),
        ("agent", ["--tok", SECRET], "unknown option --tok"),  # no prefix matching
        ("agent", ["--token-fil", SECRET], "unknown option --token-fil"),
    ],
    ids=[
        "agent-token",
        "client-token",
        "token-equals",
        "client-tokens",
        "agent-tokens",
        "token-file",
        "client-tokens-file",
        "tok",
        "token-fil",
    ],
)
def test_token_options_never_echo_the_value(program: str, argv: list[str], names: str) -> None:
    ports = RELAY_PORTS if program == "relay" else PEER_ARGS
    env = TOKENS if program == "relay" else {}
    result = run_cli(program, *ports, *argv, env=env)
    assert result.returncode == 2, result.stderr
    assert names in result.stderr, result.stderr
    assert SECRET not in result.stderr + result.stdout, result.stderr
    assert "no such file" not in result.stderr or names.endswith("-file"), result.stderr


def test_token_file_in_toml_is_not_echoed(tmp_path: Path) -> None:
    toml = tmp_path / "agent.toml"
    toml.write_text(f'token_file = "{SECRET}"\n')
    result = run_cli("agent", *PEER_ARGS, "--config", str(toml))
    assert result.returncode == 2, result.stderr
    assert "token_file" in result.stderr and SECRET not in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("program", "argv"),
    [
        ("relay", ["--lis", "127.0.0.1:0"]),
        ("client", ["--rule", "rules.txt"]),
        ("agent", ["--dial-time", "3"]),
    ],
)
def test_option_abbreviations_are_refused(program: str, argv: list[str]) -> None:
    ports = RELAY_PORTS if program == "relay" else PEER_ARGS
    env = TOKENS if program == "relay" else PEER_TOKEN
    result = run_cli(program, *ports, *argv, env=env)
    assert result.returncode == 2, result.stderr
    assert f"unknown option {argv[0]}" in result.stderr, result.stderr
