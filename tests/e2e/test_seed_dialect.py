"""The seed dialect end to end: an independent Client A (tests/support/seed_client.py,
written from the seed document alone) through the real relay and agent.

    curl -> seed_client.py --/v1/seed (JSON + binary)--> relay --binary protocol--> agent -> target
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import LISTED, Target
from helpers import (
    curl_via,
    echo_reply,
    free_port,
    half_close_exchange,
    open_connect,
)
from picows import WSInvalidStatusError, WSMsgType
from support.procs import CLIENT_TOKEN, ROOT, Chain, Proc, metric, wait_until
from support.seed_client import SeedWire, open_wire
from support.target import pattern_sha256

from fastrelay import eventloop

SEED_CLIENT = ROOT / "tests" / "support" / "seed_client.py"


def start_seed_client(chain: Chain) -> Proc:
    proc = Proc(
        "seed_client",
        [sys.executable, str(SEED_CLIENT), "--relay", chain.relay_url],
        {"FASTRELAY_TOKEN": CLIENT_TOKEN, "PYTHONPATH": str(ROOT)},
        chain.log_dir,
    )
    chain.procs.append(proc)
    return proc


@pytest.fixture(scope="module")
def seed_proxy(chain: Chain) -> Iterator[str]:
    proc = start_seed_client(chain)
    yield f"http://{proc.ready['listen']}"
    proc.stop()


def seed_url(chain: Chain) -> str:
    return f"{chain.relay_url}/v1/seed"


def run(coro):  # type: ignore[no-untyped-def]
    return eventloop.run_default(asyncio.wait_for(coro, 60))


async def connect(wire: SeedWire, session_id: str, host: str, port: int) -> dict:
    wire.send_json(
        {
            "type": "CONNECT",
            "sessionId": session_id,
            "method": "CONNECT",
            "url": f"https://{host}:{port}",
            "headers": {"Host": f"{host}:{port}", "User-Agent": "seed-test"},
        }
    )
    return await wire.next()  # type: ignore[no-any-return]


async def read_data(wire: SeedWire, session_id: str, until: bytes) -> bytes:
    """TUNNEL_DATA pairs for `session_id` until the bytes end with `until`."""
    got = b""
    while not got.endswith(until):
        header = await wire.next()
        assert header["type"] == "TUNNEL_DATA" and header["sessionId"] == session_id, header
        data = await wire.next()
        assert isinstance(data, bytes) and len(data) == header["length"]
        got += data
    return got


# --- the happy path, through curl ---


def test_seed_client_tunnels_https_to_a_listed_target(
    chain: Chain, target: Target, seed_proxy: str
) -> None:
    assert chain.relay is not None
    admin = chain.relay.ready["admin"]
    result = curl_via(seed_proxy, target, target.https(LISTED, "/hello"))
    assert result.returncode == 0, result.stderr
    assert b"hello" in result.stdout.lower()
    n = 3 * 1024 * 1024 + 17
    result = curl_via(seed_proxy, target, target.https(LISTED, f"/bytes/{n}?seed=5"))
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(result.stdout).hexdigest() == pattern_sha256(n, 5)
    assert metric(admin, "fastrelay_seed_sessions_total", result="opened") >= 2
    assert metric(admin, "fastrelay_seed_connections") == 1


def test_seed_client_uploads(chain: Chain, target: Target, seed_proxy: str, tmp_path: Path) -> None:
    body = tmp_path / "body"
    payload = os.urandom(2 * 1024 * 1024 + 3)
    body.write_bytes(payload)
    result = curl_via(
        seed_proxy, target, target.https(LISTED, "/sha256"), "--data-binary", f"@{body}"
    )
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(payload).hexdigest() in result.stdout.decode()


def test_refused_port_is_502_through_the_seed_client(
    chain: Chain, target: Target, seed_proxy: str
) -> None:
    port = free_port(LISTED)
    result = curl_via(
        seed_proxy,
        target,
        f"https://{LISTED}:{port}/",
        "-o",
        "/dev/null",
        "-w",
        "%{http_connect}",
    )
    assert result.stdout.decode() == "502", result.stderr


def test_refused_port_answers_the_seeds_connect_response(chain: Chain) -> None:
    port = free_port(LISTED)

    async def go() -> dict:
        wire = await open_wire(seed_url(chain), CLIENT_TOKEN)
        try:
            return await connect(wire, "s-refused", LISTED, port)
        finally:
            wire.transport.disconnect()  # type: ignore[union-attr]

    answer = run(go())
    assert answer["type"] == "CONNECT_RESPONSE"
    assert answer["sessionId"] == "s-refused"
    assert answer["statusCode"] == 502
    refused = f"connection to {LISTED}:{port} refused"
    assert answer["error"] == f"Connection to target server failed: {refused}"


def test_tunnel_with_half_close_both_ways(chain: Chain, target: Target) -> None:
    echo = target.port(LISTED, "echo")
    payload = os.urandom(300_000)

    async def go() -> tuple[dict, bytes, dict]:
        wire = await open_wire(seed_url(chain), CLIENT_TOKEN)
        try:
            answer = await connect(wire, "s-echo", LISTED, echo)
            for offset in range(0, len(payload), 100_000):
                wire.send_data("s-echo", payload[offset : offset + 100_000])
            wire.send_json({"type": "TUNNEL_CLOSE", "sessionId": "s-echo"})
            reply = await read_data(wire, "s-echo", b"\n")
            return answer, reply, await wire.next()
        finally:
            wire.transport.disconnect()  # type: ignore[union-attr]

    answer, reply, closed = run(go())
    assert answer == {
        "type": "CONNECT_RESPONSE",
        "sessionId": "s-echo",
        "statusCode": 200,
        "statusDescription": "Connection Established",
    }
    assert reply == echo_reply(payload)
    assert closed == {"type": "TUNNEL_CLOSE", "sessionId": "s-echo"}


# --- failures ---


def test_bad_token_is_refused_at_the_upgrade(chain: Chain) -> None:
    with pytest.raises(WSInvalidStatusError) as caught:
        run(open_wire(seed_url(chain), "wrong-token"))
    assert caught.value.response.status == 401


GARBAGE = [
    (WSMsgType.TEXT, b"not json", "text message is not JSON"),
    (WSMsgType.TEXT, b'{"type":"HELLO","sessionId":"x"}', "unknown message type 'HELLO'"),
    (WSMsgType.TEXT, b'{"type":"TUNNEL_DATA","sessionId":"x"}', "'length' must be an integer"),
    (WSMsgType.BINARY, b"stray bytes", "binary message without a TUNNEL_DATA header"),
]


def test_malformed_messages_close_only_that_connection(chain: Chain, target: Target) -> None:
    """Each malformed message closes its seed connection with 1002 and a precise
    reason; a seed session on another connection and a binary-protocol client_a
    tunnel on the same relay carry on."""
    echo = target.port(LISTED, "echo")
    tunnel = open_connect(chain, LISTED, echo)
    first, second = os.urandom(50_000), os.urandom(50_000)

    async def go() -> list[tuple[int | None, str]]:
        good = await open_wire(seed_url(chain), CLIENT_TOKEN)
        assert (await connect(good, "good", LISTED, echo))["statusCode"] == 200
        good.send_data("good", first)
        closes = []
        for msg_type, payload, _ in GARBAGE:
            bad = await open_wire(seed_url(chain), CLIENT_TOKEN)
            assert (await connect(bad, "victim", LISTED, echo))["statusCode"] == 200
            bad.send_raw(msg_type, payload)
            while await bad.next() is not None:
                pass
            closes.append((bad.close_code, bad.close_reason))
        # A header whose binary message is one byte short.
        bad = await open_wire(seed_url(chain), CLIENT_TOKEN)
        bad.send_json({"type": "TUNNEL_DATA", "sessionId": "x", "length": 4})
        bad.send_raw(WSMsgType.BINARY, b"abc")
        while await bad.next() is not None:
            pass
        closes.append((bad.close_code, bad.close_reason))
        good.send_data("good", second)
        good.send_json({"type": "TUNNEL_CLOSE", "sessionId": "good"})
        reply = await read_data(good, "good", b"\n")
        good.transport.disconnect()  # type: ignore[union-attr]
        assert reply == echo_reply(first + second)
        return closes

    closes = run(go())
    for (code, reason), (_, _, expected) in zip(closes, GARBAGE, strict=False):
        assert code == 1002 and expected in reason, (code, reason)
    assert closes[-1][0] == 1002 and "its TUNNEL_DATA header announced 4" in closes[-1][1]
    with tunnel:
        tunnel.sendall(first)
        assert half_close_exchange(tunnel, second) == echo_reply(first + second)
    assert chain.relay is not None and chain.relay.alive()
    admin = chain.relay.ready["admin"]
    assert metric(admin, "fastrelay_protocol_errors_total", kind="seed_malformed") >= 5
    log = chain.relay.log_tail(400)
    assert "closing seed connection from" in log and "text message is not JSON" in log
    wait_until(
        lambda: metric(admin, "fastrelay_streams_active") == 0, what="every victim session gone"
    )


def test_session_errors_keep_the_connection(chain: Chain, target: Target) -> None:
    """Data for an unknown session and a duplicate sessionId are answered for
    that session only; the connection's other session carries on."""
    echo = target.port(LISTED, "echo")

    async def go() -> tuple[dict, dict, bytes]:
        wire = await open_wire(seed_url(chain), CLIENT_TOKEN)
        try:
            assert (await connect(wire, "one", LISTED, echo))["statusCode"] == 200
            wire.send_data("ghost", b"boo")
            unknown = await wire.next()
            duplicate = await connect(wire, "one", LISTED, echo)
            wire.send_data("one", b"still fine")
            wire.send_json({"type": "TUNNEL_CLOSE", "sessionId": "one"})
            return unknown, duplicate, await read_data(wire, "one", b"\n")
        finally:
            wire.transport.disconnect()  # type: ignore[union-attr]

    unknown, duplicate, reply = run(go())
    assert unknown == {"type": "TUNNEL_ERROR", "sessionId": "ghost", "error": "unknown session"}
    assert duplicate == {
        "type": "CONNECT_RESPONSE",
        "sessionId": "one",
        "statusCode": 400,
        "error": "sessionId 'one' is already open",
    }
    assert reply == echo_reply(b"still fine")


def test_agent_killed_mid_tunnel_gives_tunnel_error(
    make_chain, target: Target, rules_file: Path
) -> None:
    chain = make_chain()
    chain.start_relay()
    agent = chain.start_agent("--allow", "127.0.0.0/8")
    echo = target.port(LISTED, "echo")

    async def go() -> tuple[dict, dict]:
        wire = await open_wire(seed_url(chain), CLIENT_TOKEN)
        try:
            answer = await connect(wire, "doomed", LISTED, echo)
            wire.send_data("doomed", b"some bytes")
            await asyncio.sleep(0.2)  # let them reach the target (no assertion on time)
            agent.kill()
            return answer, await wire.next(30)
        finally:
            wire.transport.disconnect()  # type: ignore[union-attr]

    answer, error = run(go())
    assert answer["statusCode"] == 200
    assert error["type"] == "TUNNEL_ERROR" and error["sessionId"] == "doomed"
    assert error["error"].startswith("Connection lost"), error


def test_unanswered_connect_gets_the_seeds_timeout(make_chain, target: Target) -> None:
    """The agent is frozen (SIGSTOP): the relay answers the seed's CONNECT itself after its
    10 s connect timeout (the default, as in the seed), with the seed's message."""
    chain = make_chain()
    chain.start_relay()
    agent = chain.start_agent("--allow", "127.0.0.0/8")
    echo = target.port(LISTED, "echo")

    async def go() -> dict:
        wire = await open_wire(seed_url(chain), CLIENT_TOKEN)
        try:
            agent.signal(signal.SIGSTOP)
            return await connect(wire, "frozen", LISTED, echo)
        finally:
            agent.signal(signal.SIGCONT)
            wire.transport.disconnect()  # type: ignore[union-attr]

    assert run(go()) == {
        "type": "CONNECT_RESPONSE",
        "sessionId": "frozen",
        "statusCode": 504,
        "error": "Connection to target server failed: connection timeout",
    }
    assert chain.relay is not None
    admin = chain.relay.ready["admin"]
    assert metric(admin, "fastrelay_streams_total", result="timeout") == 1


def test_upload_into_a_stalled_target_pauses_the_seed_client_and_loses_nothing(
    chain: Chain,
) -> None:
    """The seed dialect has no credit of its own: a target that stops reading makes
    the relay stop reading the seed client (counted), and every byte arrives, in
    order, once the target reads again."""
    assert chain.relay is not None
    admin = chain.relay.ready["admin"]
    pauses_before = metric(admin, "fastrelay_seed_read_pauses_total")
    listener = socket.create_server((LISTED, 0))
    port = listener.getsockname()[1]
    payload = os.urandom(24 * 1024 * 1024)

    async def go() -> tuple[str, list]:
        loop = asyncio.get_running_loop()
        wire = await open_wire(seed_url(chain), CLIENT_TOKEN)
        try:
            answer = await connect(wire, "stalled", LISTED, port)
            assert answer["statusCode"] == 200, answer
            conn, _ = await loop.run_in_executor(None, listener.accept)
            for offset in range(0, len(payload), 64 * 1024):
                wire.send_data("stalled", payload[offset : offset + 64 * 1024])
            wire.send_json({"type": "TUNNEL_CLOSE", "sessionId": "stalled"})
            await loop.run_in_executor(
                None,
                lambda: wait_until(
                    lambda: metric(admin, "fastrelay_seed_read_pauses_total") > pauses_before,
                    timeout=30,
                    what="the relay pausing the seed client",
                ),
            )

            def drain() -> str:
                digest = hashlib.sha256()
                conn.settimeout(30)
                with conn:
                    while chunk := conn.recv(1 << 20):
                        digest.update(chunk)
                return digest.hexdigest()

            digest = await loop.run_in_executor(None, drain)
            others = []
            while not wire.queue.empty():
                others.append(wire.queue.get_nowait())
            return digest, others
        finally:
            wire.transport.disconnect()  # type: ignore[union-attr]

    try:
        digest, others = run(go())
    finally:
        listener.close()
    assert digest == hashlib.sha256(payload).hexdigest()
    assert not [m for m in others if isinstance(m, dict) and m["type"] == "TUNNEL_ERROR"]


def test_target_reset_mid_tunnel_gives_tunnel_error(chain: Chain) -> None:
    """The target resets the connection (RST) mid-tunnel: the agent aborts the stream and
    the seed client gets the seed's TUNNEL_ERROR; the session is gone at the relay."""
    assert chain.relay is not None
    admin = chain.relay.ready["admin"]
    listener = socket.create_server((LISTED, 0))
    port = listener.getsockname()[1]

    async def go() -> tuple[dict, bytes, dict]:
        loop = asyncio.get_running_loop()
        wire = await open_wire(seed_url(chain), CLIENT_TOKEN)
        try:
            answer = await connect(wire, "reset", LISTED, port)
            conn, _ = await loop.run_in_executor(None, listener.accept)
            conn.sendall(b"first bytes")
            first = await read_data(wire, "reset", b"first bytes")
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()  # with SO_LINGER 0: an RST, not a FIN
            return answer, first, await wire.next()
        finally:
            wire.transport.disconnect()  # type: ignore[union-attr]

    try:
        answer, first, error = run(go())
    finally:
        listener.close()
    assert answer["statusCode"] == 200
    assert first == b"first bytes"
    assert error["type"] == "TUNNEL_ERROR" and error["sessionId"] == "reset", error
    assert error["error"].startswith("Connection lost: "), error
    wait_until(lambda: metric(admin, "fastrelay_streams_active") == 0, what="the session gone")
