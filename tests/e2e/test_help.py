"""`fastrelay PROGRAM --help`, rendered by the real CLI: values as a person writes them,
every environment variable listed, internal options hidden (issue 11, item 7)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from support.procs import ROOT

from agent.config import OPTIONS as AGENT_OPTIONS
from client_a.config import OPTIONS as CLIENT_OPTIONS
from fastrelay.config import COMMON_OPTIONS
from fastrelay.relay.config import OPTIONS as RELAY_OPTIONS

PROGRAMS = {"relay": RELAY_OPTIONS, "agent": AGENT_OPTIONS, "client": CLIENT_OPTIONS}
# What a Python repr looks like in a help text: tuples, None, empty containers, raw byte sizes.
REPRS = [
    r"\('[0-9:]",
    r"\bNone\b",
    r"\(\)",
    r"\[\]",
    r"\b1048576\b",
    r"\b4194304\b",
    r"\b67108864\b",
]


def render(program: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "fastrelay", program, "--help"],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("program", [*PROGRAMS, "demo"])
def test_help_shows_no_python_reprs(program: str) -> None:
    text = render(program)
    for pattern in REPRS:
        assert not re.search(pattern, text), f"{pattern} in:\n{text}"


@pytest.mark.parametrize("program", PROGRAMS)
def test_help_lists_every_environment_variable_and_hides_internals(program: str) -> None:
    text = render(program)
    epilog = text[text.index("environment") :]
    assert "FASTRELAY_CONFIG" in epilog
    for opt in [*PROGRAMS[program], *COMMON_OPTIONS]:
        if opt.hidden:
            assert opt.flag_name not in text, text
        else:
            assert opt.env_name in epilog, f"{opt.env_name} missing:\n{epilog}"
    assert "--reuse-port" not in text


def test_token_variables_are_listed() -> None:
    assert "FASTRELAY_TOKEN " in render("agent")
    assert "FASTRELAY_TOKEN " in render("client")
    relay = render("relay")
    assert "FASTRELAY_CLIENT_TOKENS " in relay and "FASTRELAY_AGENT_TOKENS " in relay


def test_relay_help_values_as_written() -> None:
    text = " ".join(render("relay").split())  # argparse wraps lines
    assert "--listen HOST:PORT" in text and "default 127.0.0.1:8765" in text
    assert "--admin HOST:PORT" in text and "default 127.0.0.1:9101" in text
    assert "--max-frame-size SIZE" in text and "default 1MiB" in text
    assert "--max-connection-buffer SIZE" in text and "default 64MiB" in text
    assert "--drain-timeout SECONDS" in text and "default 30)" in text
    assert "--workers N|auto" in text


def test_agent_and_client_help() -> None:
    agent = " ".join(render("agent").split())
    assert "--window SIZE" in agent and "default 4MiB" in agent
    assert "--allow SPEC" in agent and "--deny SPEC" in agent
    assert re.search(r"by default the agent refuses loopback, private", agent), agent
    client = " ".join(render("client").split())
    assert "--listen HOST:PORT" in client and "default 127.0.0.1:8080" in client
    assert "--rules FILE" in client and "optional" in client
