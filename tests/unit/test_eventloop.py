"""FASTRELAY_LOOP: which event loop a program runs on, and what happens without uvloop."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from fastrelay.eventloop import ENV, LoopChoiceError, choose_loop
from fastrelay.lifecycle import spawn_ready, stop_process

ROOT = Path(__file__).resolve().parents[2]
TOKENS = {"FASTRELAY_CLIENT_TOKENS": "client-token-for-tests", "FASTRELAY_AGENT_TOKENS": "a" * 22}
RELAY = ["relay", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"]


def missing(name: str) -> None:
    return None


def test_default_is_uvloop_when_importable() -> None:
    choice = choose_loop({}, "linux")
    assert choice.name == "uvloop" and not choice.note
    loop = choice.factory()
    try:
        assert type(loop).__module__.startswith("uvloop")
    finally:
        loop.close()


def test_asyncio_on_request() -> None:
    choice = choose_loop({ENV: "asyncio"}, "linux")
    assert choice.name == "asyncio"
    loop = choice.factory()
    try:
        assert isinstance(loop, asyncio.BaseEventLoop)
        assert not type(loop).__module__.startswith("uvloop")
    finally:
        loop.close()


def test_default_falls_back_to_asyncio_without_uvloop() -> None:
    choice = choose_loop({}, "linux", load=missing)
    assert choice.name == "asyncio"
    assert choice.note == "uvloop is not installed"


def test_explicit_uvloop_without_uvloop_is_an_error() -> None:
    with pytest.raises(LoopChoiceError, match=r"FASTRELAY_LOOP=uvloop: uvloop is not installed"):
        choose_loop({ENV: "uvloop"}, "linux", load=missing)


def test_windows_uses_winloop_when_present() -> None:
    asked: list[str] = []

    def load(name: str):  # type: ignore[no-untyped-def]
        asked.append(name)
        return asyncio.new_event_loop

    assert choose_loop({}, "win32", load=load).name == "winloop"
    assert asked == ["winloop"]
    assert choose_loop({}, "win32", load=missing).name == "asyncio"
    with pytest.raises(LoopChoiceError, match="not a known event loop"):
        choose_loop({ENV: "uvloop"}, "win32", load=load)


@pytest.mark.parametrize("value", ["tokio", "UV LOOP", "trio"])
def test_unknown_value_is_an_error(value: str) -> None:
    with pytest.raises(LoopChoiceError, match=r"is not a known event loop: use uvloop"):
        choose_loop({ENV: value}, "linux")


def test_unknown_value_exits_2_at_startup() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fastrelay", *RELAY],
        env={**TOKENS, ENV: "tokio", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert "fastrelay relay: error: FASTRELAY_LOOP='tokio' is not a known event loop" in proc.stderr
    assert proc.stdout == ""


# Starts a program with uvloop unimportable (None in sys.modules makes `import uvloop` raise).
BLOCKED = (
    "import sys; sys.modules['uvloop'] = None; "
    "from fastrelay.cli import main; sys.exit(main(sys.argv[1:]))"
)


@pytest.mark.parametrize("loop_env", [None, "asyncio"])
def test_relay_starts_on_asyncio_without_uvloop(loop_env: str | None, tmp_path: Path) -> None:
    env = {**TOKENS, "PYTHONPATH": str(ROOT)}
    if loop_env is not None:
        env[ENV] = loop_env
    log = tmp_path / "relay.log"
    with open(log, "wb") as stderr:
        proc, ready = spawn_ready(
            [sys.executable, "-c", BLOCKED, *RELAY], env, stderr=stderr, cwd=str(ROOT)
        )
        try:
            assert ready["loop"] == "asyncio"
            assert ready["program"] == "relay"
        finally:
            assert stop_process(proc) == 0
    text = log.read_text()
    if loop_env is None:
        assert "event loop: asyncio (uvloop is not installed)" in text
    else:
        assert "event loop: asyncio" in text


def test_explicit_uvloop_without_uvloop_exits_2() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKED, *RELAY],
        env={**TOKENS, ENV: "uvloop", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert "FASTRELAY_LOOP=uvloop: uvloop is not installed" in proc.stderr
