"""Authentication at the upgrade, garbage on an authenticated WebSocket, and secrecy.

A bad token never gets a WebSocket; a peer that sends malformed frames loses its
own connection (close 1002) while everyone else's tunnels carry on; and tokens
never show up in a process's command line or in the programs' logs.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from conftest import LISTED, Chain, Target
from helpers import (
    curl,
    echo_reply,
    family_total,
    half_close_exchange,
    open_connect,
    ws_upgrade_status,
)
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect
from support.procs import AGENT_TOKEN, CLIENT_CARRIERS, CLIENT_TOKEN, is_ready, metric, wait_until

from fastrelay import eventloop

WRONG_TOKEN = "wrong-token-that-must-stay-secret"
GARBAGE = [
    ("unknown frame type", WSMsgType.BINARY, bytes.fromhex("7f00 00000001 00000000")),
    ("truncated header", WSMsgType.BINARY, bytes.fromhex("0400 00000001 00")),
    ("length beyond message", WSMsgType.BINARY, bytes.fromhex("0400 00000001 00000005 6869")),
    ("text message", WSMsgType.TEXT, b"hello relay"),
]


def auth_failures(chain: Chain, role: str) -> float:
    assert chain.relay is not None
    return metric(chain.relay.ready["admin"], "fastrelay_auth_failures_total", role=role)


@pytest.mark.parametrize("role", ["client", "agent"])
def test_bad_or_missing_token_gets_401_at_the_upgrade(chain: Chain, role: str) -> None:
    assert chain.relay is not None
    listen = chain.relay.ready["listen"]
    other_role_token = AGENT_TOKEN if role == "client" else CLIENT_TOKEN
    before = auth_failures(chain, role)
    for token in (WRONG_TOKEN, None, other_role_token):
        assert ws_upgrade_status(listen, f"/v1/{role}", token) == 401, token
    assert auth_failures(chain, role) == before + 3


def test_agent_with_a_wrong_token_never_becomes_ready(chain: Chain) -> None:
    before = auth_failures(chain, "agent")
    agent = chain.start_agent(token=WRONG_TOKEN, wait=False)
    try:
        wait_until(lambda: auth_failures(chain, "agent") >= before + 2, what="repeated rejections")
        admin = agent.ready["admin"]
        wait_until(
            lambda: metric(admin, "fastrelay_relay_dials_total", result="error") >= 2,
            what="the agent counting its refused dials",
        )
        assert metric(admin, "fastrelay_relay_dials_total", result="ok") == 0  # never let in
        assert not is_ready(admin)
        assert agent.alive()
        assert chain.relay is not None
        assert metric(chain.relay.ready["admin"], "fastrelay_connections", role="agent") == 1
    finally:
        agent.stop()
    assert "401" in agent.log_tail(), "the agent's log should say the relay refused the token"


async def send_garbage(url: str, msg_type: WSMsgType, payload: bytes) -> int | None:
    """Connect as a client_a, wait for HELLO, send one bad message; return the close code."""
    loop = asyncio.get_running_loop()
    hello: asyncio.Future[bytes] = loop.create_future()
    closed: asyncio.Future[int | None] = loop.create_future()

    class Listener(WSListener):
        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type == WSMsgType.BINARY and not hello.done():
                hello.set_result(frame.get_payload_as_bytes())
            elif frame.msg_type == WSMsgType.CLOSE and not closed.done():
                closed.set_result(int(frame.get_close_code()))

        def on_ws_disconnected(self, transport: WSTransport) -> None:
            if not closed.done():
                closed.set_result(None)  # dropped without a CLOSE frame

    headers = {"Authorization": f"Bearer {CLIENT_TOKEN}"}
    transport, _ = await ws_connect(Listener, url, extra_headers=headers)
    try:
        assert (await asyncio.wait_for(hello, 5))[0] == 0x08, "the relay's first frame is HELLO"
        transport.send(msg_type, payload)
        return await asyncio.wait_for(closed, 5)
    finally:
        transport.disconnect()
        await asyncio.wait_for(transport.wait_disconnected(), 5)


def test_garbage_closes_only_that_connection(chain: Chain, target: Target) -> None:
    assert chain.relay is not None
    admin = chain.relay.ready["admin"]
    errors_before = family_total(admin, "fastrelay_protocol_errors_total")
    tunnel = open_connect(chain, LISTED, target.port(LISTED, "echo"))
    first, second = os.urandom(100_000), os.urandom(100_000)
    with tunnel:
        tunnel.sendall(first)
        for what, msg_type, payload in GARBAGE:
            code = eventloop.run(send_garbage(f"{chain.relay_url}/v1/client", msg_type, payload))
            assert code == 1002, what
        assert half_close_exchange(tunnel, second) == echo_reply(first + second)
    assert family_total(admin, "fastrelay_protocol_errors_total") == errors_before + len(GARBAGE)
    assert chain.relay.alive() and is_ready(admin)
    wait_until(
        lambda: metric(admin, "fastrelay_connections", role="client") == CLIENT_CARRIERS,
        what="only the real client_a's carriers left connected",
    )
    assert is_ready(chain.clients[0].ready["admin"])
    result = curl(chain, target, target.https(LISTED, "/hello"))
    assert result.returncode == 0, result.stderr


def test_tokens_never_in_cmdline_or_logs(make_chain, target: Target, rules_file: Path) -> None:
    chain = make_chain()
    debug = ("--log-level", "debug")
    chain.start_relay(*debug)
    chain.start_agent("--allow", "127.0.0.0/8", *debug)
    chain.start_client(rules_file, *debug)
    chain.start_agent(*debug, token=WRONG_TOKEN, wait=False)
    result = curl(chain, target, target.https(LISTED, "/hello"))
    assert result.returncode == 0, result.stderr
    assert chain.relay is not None
    wait_until(lambda: auth_failures(chain, "agent") >= 1, what="the wrong token is tried")
    secrets = (CLIENT_TOKEN, AGENT_TOKEN, WRONG_TOKEN)
    for proc in chain.procs:
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode()
        for secret in secrets:
            assert secret not in cmdline, f"token in {proc.name}'s command line"
    chain.stop()  # flushes and closes the logs
    for proc in chain.procs:
        text = proc.log_path.read_text(errors="replace")
        assert text.strip(), f"{proc.name} logged nothing at debug level"
        for secret in secrets:
            assert secret not in text, f"token in {proc.name}'s log"
