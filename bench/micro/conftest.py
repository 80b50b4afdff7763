"""Shared fixtures for the micro-benchmarks: a socket-free relay with fake picows transports.

Run (pyproject's `testpaths` is `tests`, so bench/ is only collected when named):

    .venv/bin/pytest bench/micro --benchmark-only -q      # timings
    .venv/bin/pytest bench/micro --benchmark-disable -q   # one call each: correctness only (CI)

Every benchmark asserts its result, so a broken implementation fails; none asserts on timing.

The relay is the real `Relay`, its peers are real `Peer` listeners connected through
`Peer.on_ws_connected`, and streams are opened through the relay's `Switch.receive` with real
CONNECT and CONNECT_RESPONSE frames. Only the picows `WSTransport` below it is replaced by a
recorder. Streams open with the largest window (2**31 - 1) both ways, and a benchmark that
moves more than that refills the relay's credit in its untimed setup (`Tunnel.refill`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from picows import WSMsgType, WSTransport

from fastrelay.eventloop import choose_loop
from fastrelay.protocol.frames import FrameType, encode_frame, iter_frames
from fastrelay.protocol.messages import ConnectResponse, OpenStream
from fastrelay.protocol.state import State
from fastrelay.protocol.switch import MAX_CREDIT
from fastrelay.relay import config as relay_config
from fastrelay.relay.peer import Peer
from fastrelay.relay.server import Relay

_LOG = logging.getLogger("bench.micro")

BENCH_ENV = {"FASTRELAY_CLIENT_TOKENS": "bench-client", "FASTRELAY_AGENT_TOKENS": "bench-agent"}


class FakeUnderlyingTransport:
    """The aiofastnet socket transport under a WSTransport: only what the relay calls."""

    __slots__ = ("high", "low", "reading")

    def __init__(self) -> None:
        self.high = self.low = 0
        self.reading = True

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        self.high, self.low = high, low

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    # What picows' WSTransport reads at construction.
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return _NO_SOCKET if name == "socket" else default

    def write(self, data: Any) -> None:  # pragma: no cover - every send is the fake's own
        raise AssertionError("FakeWSTransport.send writes nothing to its transport")


class _NoSocket:
    @staticmethod
    def fileno() -> int:
        return -1


_NO_SOCKET = _NoSocket()


class FakeWSTransport(WSTransport):
    """Records every `send(msg_type, data)`: a count, the byte total and the last object.

    A subclass of picows' own transport (its send methods overridden), because the
    compiled relay listener (fastrelay/relay/peer.pxd) only accepts a WSTransport.

    The object itself is kept (not a copy) so a test can check it is a view of the
    original buffer. With `record=True` it also keeps a copy of every message taken at
    call time; that is for the setup checks only, never inside a timed loop.
    """

    __slots__ = (
        "closed",
        "copies",
        "last",
        "last_type",
        "nbytes",
        "record",
        "sends",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(False, FakeUnderlyingTransport(), _LOG, loop)
        self.closed = False
        self.reset()

    def reset(self, record: bool = False) -> None:
        self.sends = 0
        self.nbytes = 0
        self.last: Any = None
        self.last_type: WSMsgType | None = None
        self.record = record
        self.copies: list[bytes] = []

    def send(self, msg_type: WSMsgType, data: Any, *flags: bool) -> None:  # type: ignore[override]
        self.sends += 1
        self.nbytes += len(data)
        self.last_type = msg_type
        self.last = data
        if self.record:
            self.copies.append(bytes(data))

    def send_close(self, code: Any = None, msg: bytes | None = None) -> None:  # type: ignore[override]
        self.closed = True

    def disconnect(self, graceful: bool = True) -> None:
        self.closed = True


class Rig:
    """A `Relay` with fake peers; streams are opened through `Switch.receive`."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        config = relay_config.load([], environ=BENCH_ENV)

        async def build() -> Relay:  # Relay() needs a running loop
            return Relay(config, "bench-relay")

        self.relay = loop.run_until_complete(build())
        # No liveness or open timeouts here: the rig passes now=0.0, and a tick at the
        # real time would expire its opens when the rig runs slowly (under callgrind).
        if self.relay._ticker is not None:
            self.relay._ticker.cancel()
            self.relay._ticker = None
        self.next_session = 0

    @staticmethod
    def frames_of(message: bytes) -> list[tuple[int, int, bytes]]:
        """(type, stream id, payload) of every mux frame in one WebSocket message."""
        view = memoryview(message)
        return [
            (frame_type, sid, bytes(view[start : start + length]))
            for frame_type, _flags, sid, start, length in iter_frames(view)
        ]

    @staticmethod
    def data_message(sid: int, frames: int, payload_size: int) -> bytes:
        """One WebSocket message: `frames` TUNNEL_DATA frames of `payload_size` bytes each.

        `bytes`, so views of it are read-only like picows' `get_payload_as_memoryview()`.
        """
        return b"".join(
            encode_frame(FrameType.TUNNEL_DATA, sid, bytes([0x41 + i % 26]) * payload_size)
            for i in range(frames)
        )

    def connect(self, role: str) -> tuple[Peer, FakeWSTransport]:
        """A peer through the real `on_ws_connected` (MuxWriter, buffer limits, attach)."""
        transport = FakeWSTransport(self.loop)
        peer = Peer(self.relay, role)
        peer.on_ws_connected(transport)  # type: ignore[arg-type]
        assert peer.writer is not None
        assert transport.underlying_transport.high == self.relay.config.max_connection_buffer
        self.flush()
        assert transport.sends == 1  # HELLO
        transport.reset()
        return peer, transport

    @staticmethod
    def transport_of(peer: Peer) -> FakeWSTransport:
        assert isinstance(peer.transport, FakeWSTransport)
        return peer.transport

    def receive(self, peer: Peer, message: memoryview) -> None:
        """What `Peer.on_ws_frame` does with a binary message (at a fixed time)."""
        assert peer.conn is not None
        self.relay.switch.receive(peer.conn, message, 0.0)

    def flush(self) -> None:
        """Run the loop once, so the FlushScheduler's pending call runs."""
        self.loop.run_until_complete(asyncio.sleep(0))

    def open_stream(self, client: Peer) -> tuple[int, Peer]:
        """CONNECT from `client`, 200 from the agent the relay picked, both through
        `Switch.receive`; (stream id, agent)."""
        assert client.conn is not None
        sid = client.conn.id_base + 1 + len(client.conn.streams)
        assert sid not in client.conn.streams
        session_id = f"bench-{self.next_session}"
        self.next_session += 1
        self.flush()  # whatever earlier messages left pending goes out before the recording
        transports = [self.transport_of(client)]
        transports += [self.transport_of(a.link) for a in self.relay.switch.agents]  # type: ignore[arg-type]
        for transport in transports:
            transport.reset(record=True)

        connect = OpenStream(
            FrameType.CONNECT, session_id, "target.example", 443, window=MAX_CREDIT
        ).encode(sid)
        self.receive(client, memoryview(connect))
        self.flush()
        stream = client.conn.streams[sid]
        agent = stream.agent.link
        assert isinstance(agent, Peer)
        assert stream.client is client.conn and stream.state is State.CONNECT_REQUEST
        assert self.transport_of(agent).copies == [connect], "the CONNECT must reach the agent"
        assert sum(len(t.copies) for t in transports) == 1

        response = ConnectResponse(session_id, 200, window=MAX_CREDIT).encode(sid)
        self.receive(agent, memoryview(response))
        self.flush()
        assert self.transport_of(client).copies == [response], "the answer must reach client_a"
        assert sum(len(t.copies) for t in transports) == 2
        assert stream.state is State.TUNNELING and stream not in self.relay.switch.opening

        for transport in transports:
            transport.reset()
        return sid, agent


@pytest.fixture(scope="session")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One loop for the whole run (uvloop when installed); not running while a benchmark is
    timed."""
    loop = choose_loop({}).factory()
    yield loop
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()


@pytest.fixture
def rig(loop: asyncio.AbstractEventLoop) -> Iterator[Rig]:
    built = Rig(loop)
    yield built
    # Timed loops that call FlushScheduler.flush_all() directly leave its call_soon
    # handles queued on the idle loop; run them (each is a no-op by now).
    built.flush()


class Tunnel:
    """One client_a peer and one agent peer on a rig, with one stream open between them."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.relay = rig.relay
        self.client, self.client_t = rig.connect("client")
        self.agent, self.agent_t = rig.connect("agent")
        self.sid, agent = rig.open_stream(self.client)
        assert agent is self.agent

    def refill(self) -> None:
        """Reset the stream's credit both ways to 1 GiB (untimed setup only)."""
        assert self.client.conn is not None
        stream = self.client.conn.streams[self.sid]
        stream.up_room = stream.down_room = MAX_CREDIT // 2  # room for grants too

    def ends(self, direction: str) -> tuple[Peer, FakeWSTransport]:
        """(source peer, destination transport) for "upstream" or "downstream"."""
        if direction == "upstream":
            return self.client, self.agent_t
        assert direction == "downstream"
        return self.agent, self.client_t


@pytest.fixture
def tunnel(rig: Rig) -> Tunnel:
    return Tunnel(rig)
