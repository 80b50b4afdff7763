"""A port that is already taken: the program names the option that failed (`--listen` or
`--admin`) in one clean line, without the doubled errno text (issue 11, item 8)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from test_config_cli import run_cli

TOKENS = {"FASTRELAY_CLIENT_TOKENS": "ct", "FASTRELAY_AGENT_TOKENS": "at", "FASTRELAY_TOKEN": "t"}


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def argv_for(program: str, option: str, port: int) -> list[str]:
    taken = f"127.0.0.1:{port}"
    free = "127.0.0.1:0"
    if program == "agent":
        return ["--relay", "ws://127.0.0.1:9", "--admin", taken]
    listen, admin = (taken, free) if option == "--listen" else (free, taken)
    extra = ["--relay", "ws://127.0.0.1:9"] if program == "client" else []
    return [*extra, "--listen", listen, "--admin", admin]


@pytest.mark.parametrize(
    ("program", "option"),
    [
        ("relay", "--listen"),
        ("relay", "--admin"),
        ("client", "--listen"),
        ("client", "--admin"),
        ("agent", "--admin"),
    ],
)
def test_port_clash_names_the_option_once(program: str, option: str, busy_port: int) -> None:
    result = run_cli(program, *argv_for(program, option, busy_port), env=TOKENS)
    assert result.returncode == 1, result.stderr
    errors = [ln for ln in result.stderr.splitlines() if "error" in ln.lower()]
    assert errors == [
        f"fastrelay {program}: error: {option} 127.0.0.1:{busy_port}: address already in use "
        f"(another program holds that port: choose another with {option})"
    ], result.stderr
    assert "errno" not in result.stderr.lower() and "Traceback" not in result.stderr
