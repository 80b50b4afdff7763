"""The relay's stream rules, driven by a raw WebSocket client that speaks the
mux protocol itself (docs/PROTOCOL.md) against the real relay and agent."""

from __future__ import annotations

import asyncio
import hashlib
import os

import orjson
from conftest import LISTED, Chain, Target
from helpers import family_total
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect
from support.procs import CLIENT_TOKEN, metric

from fastrelay import eventloop
from fastrelay.protocol.frames import FrameType, encode_frame, iter_frames
from fastrelay.protocol.messages import Hello, OpenStream


class RawClient(WSListener):
    """Collects every mux frame the relay sends, and the close code."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: asyncio.Queue[tuple[int, int, bytes]] = asyncio.Queue()
        self.close_code: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.BINARY:
            data = frame.get_payload_as_bytes()
            for ftype, _flags, sid, off, length in iter_frames(memoryview(data)):
                self.frames.put_nowait((ftype, sid, data[off : off + length]))
        elif frame.msg_type == WSMsgType.CLOSE and not self.close_code.done():
            self.close_code.set_result(int(frame.get_close_code()))

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.close_code.done():
            self.close_code.set_result(None)

    async def next(self, timeout: float = 5.0) -> tuple[int, int, bytes]:
        return await asyncio.wait_for(self.frames.get(), timeout)


async def session(chain: Chain) -> tuple[WSTransport, RawClient, Hello]:
    transport, client = await ws_connect(
        RawClient,
        f"{chain.relay_url}/v1/client",
        extra_headers={"Authorization": f"Bearer {CLIENT_TOKEN}"},
    )
    ftype, sid, payload = await client.next()
    assert (ftype, sid) == (FrameType.HELLO, 0)
    return transport, client, Hello.decode(payload)


def open_frame(sid: int, host: str, port: int) -> bytes:
    return OpenStream(FrameType.CONNECT, f"raw-{sid}", host, port).encode(sid)


def test_raw_client_tunnels_with_half_close(chain: Chain, target: Target) -> None:
    payload = os.urandom(300_000)

    async def run() -> bytes:
        transport, client, hello = await session(chain)
        sid = hello.stream_id_base + 1
        transport.send(WSMsgType.BINARY, open_frame(sid, LISTED, target.port(LISTED, "echo")))
        ftype, got_sid, body = await client.next()
        assert (ftype, got_sid) == (FrameType.CONNECT_RESPONSE, sid)
        assert orjson.loads(body)["statusCode"] == 200
        # Several frames in one message, then FIN: the echo answers after our half-close.
        chunks = [payload[i : i + 100_000] for i in range(0, len(payload), 100_000)]
        message = b"".join(encode_frame(FrameType.TUNNEL_DATA, sid, c) for c in chunks)
        transport.send(WSMsgType.BINARY, message + encode_frame(FrameType.FIN, sid))
        reply = b""
        while True:
            ftype, got_sid, body = await client.next()
            assert got_sid == sid
            if ftype == FrameType.TUNNEL_DATA:
                reply += body
            elif ftype == FrameType.FIN:
                break
        transport.disconnect()
        return reply

    reply = eventloop.run(run())
    expected = f"got {len(payload)} bytes sha256={hashlib.sha256(payload).hexdigest()}\n"
    assert reply == expected.encode()


def test_unknown_stream_ids_are_counted_and_dropped(chain: Chain) -> None:
    admin = chain.relay.ready["admin"]
    dropped = metric(admin, "fastrelay_frames_dropped_total", reason="unknown_stream")

    async def run() -> None:
        transport, client, hello = await session(chain)
        stale = hello.stream_id_base + 77
        transport.send(
            WSMsgType.BINARY,
            encode_frame(FrameType.TUNNEL_DATA, stale, b"late")
            + encode_frame(FrameType.FIN, stale),
        )
        # The connection is still usable: an open gets an answer.
        transport.send(WSMsgType.BINARY, open_frame(hello.stream_id_base + 1, LISTED, 1))
        ftype, _sid, body = await client.next()
        assert ftype == FrameType.CONNECT_RESPONSE
        assert orjson.loads(body)["statusCode"] == 502
        assert not client.close_code.done()
        transport.disconnect()

    eventloop.run(run())
    assert metric(admin, "fastrelay_frames_dropped_total", reason="unknown_stream") == dropped + 2


def test_data_before_the_open_succeeded_aborts_only_that_stream(
    chain: Chain, target: Target
) -> None:
    admin = chain.relay.ready["admin"]
    errors = family_total(admin, "fastrelay_protocol_errors_total")

    async def run() -> None:
        transport, client, hello = await session(chain)
        sid = hello.stream_id_base + 1
        early = open_frame(sid, LISTED, target.port(LISTED, "echo"))
        early += encode_frame(FrameType.TUNNEL_DATA, sid, b"too early")
        transport.send(WSMsgType.BINARY, early)
        ftype, got_sid, body = await client.next()
        assert (ftype, got_sid) == (FrameType.TUNNEL_ERROR, sid)
        assert "not allowed in state CONNECT_REQUEST" in orjson.loads(body)["error"]
        # The same connection still opens streams.
        other = sid + 1
        transport.send(WSMsgType.BINARY, open_frame(other, LISTED, target.port(LISTED, "echo")))
        while True:
            ftype, got_sid, body = await client.next()
            if got_sid == other:
                break
        assert ftype == FrameType.CONNECT_RESPONSE and orjson.loads(body)["statusCode"] == 200
        transport.disconnect()

    eventloop.run(run())
    assert family_total(admin, "fastrelay_protocol_errors_total") == errors + 1


def test_stream_id_outside_the_assigned_range_closes_the_connection(chain: Chain) -> None:
    async def run() -> int | None:
        transport, client, hello = await session(chain)
        foreign = hello.stream_id_base + hello.stream_id_count  # the next client's range
        transport.send(WSMsgType.BINARY, open_frame(foreign, LISTED, 1))
        code = await asyncio.wait_for(client.close_code, 5)
        transport.disconnect()
        return code

    assert eventloop.run(run()) == 1002


def test_data_on_stream_0_closes_only_that_connection_with_1002(
    chain: Chain, target: Target
) -> None:
    """docs/PROTOCOL.md's data_on_stream_0 vector, against the running relay: the
    sender is closed with 1002, and a tunnel of another client_a on the same relay
    and agent carries on."""
    admin = chain.relay.ready["admin"]
    before = metric(admin, "fastrelay_protocol_errors_total", kind="malformed_frame")

    async def run() -> None:
        transport, client, _hello = await session(chain)
        other_t, other, other_hello = await session(chain)
        sid = other_hello.stream_id_base + 1
        other_t.send(WSMsgType.BINARY, open_frame(sid, LISTED, target.port(LISTED, "echo")))
        ftype, _sid, body = await other.next()
        assert ftype == FrameType.CONNECT_RESPONSE and orjson.loads(body)["statusCode"] == 200

        transport.send(WSMsgType.BINARY, encode_frame(FrameType.TUNNEL_DATA, 0, b"hi"))
        assert await asyncio.wait_for(client.close_code, 5) == 1002

        other_t.send(
            WSMsgType.BINARY,
            encode_frame(FrameType.TUNNEL_DATA, sid, b"still here")
            + encode_frame(FrameType.FIN, sid),
        )
        ftype, got, data = await other.next()
        digest = hashlib.sha256(b"still here").hexdigest()
        assert (ftype, got) == (FrameType.TUNNEL_DATA, sid)
        assert data == f"got 10 bytes sha256={digest}\n".encode()
        assert not other.close_code.done()
        other_t.disconnect()

    eventloop.run(run())
    assert metric(admin, "fastrelay_protocol_errors_total", kind="malformed_frame") == before + 1
