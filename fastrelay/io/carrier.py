"""One WebSocket from client_a or the agent to a relay: a `Carrier`.

A Carrier lives exactly as long as its connection: `open()` dials the relay,
authenticates with a bearer token and waits for HELLO; when the connection
ends, every stream on it is ended at once and `done` resolves. Who dials
again, when and how many lives at once is the owner's business: client_a's
`CarrierPool` (fastrelay/io/pool.py) and the agent's mesh (agent/mesh.py),
both pacing their dials with `Backoff` (exponential, full jitter).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from picows import (
    WSAutoPingStrategy,
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    ws_connect,
)
from prometheus_client.core import Metric

from fastrelay import metrics
from fastrelay.io.mux import FlushScheduler, MuxWriter
from fastrelay.lifecycle import format_address
from fastrelay.protocol.errors import ProtocolError, StreamError
from fastrelay.protocol.flow import CreditPool
from fastrelay.protocol.frames import FrameType, decode_window_increment, iter_frames
from fastrelay.protocol.messages import (
    ConnectResponse,
    GoAway,
    Hello,
    Members,
    OpenStream,
    TunnelError,
)
from fastrelay.tls import client_context

if TYPE_CHECKING:
    from fastrelay.io.tunnel import TunnelStream

log = logging.getLogger("fastrelay.carrier")

WS_BUFFER_HIGH = 2 * 1024 * 1024
HELLO_TIMEOUT = 5.0  # after the upgrade, the relay's HELLO must come this soon
BACKOFF_SETTLE = 1.0  # a connection that ends sooner after HELLO is a flap (see Backoff)
_DATA = int(FrameType.TUNNEL_DATA)
_BINARY = WSMsgType.BINARY


class CarrierStats:
    def __init__(self) -> None:
        self.dropped_unknown_stream = 0
        self.flow_control_stalls = 0
        self.backpressure_pauses = 0
        self.reconnects = 0
        self.protocol_errors: Counter[str] = Counter()
        self.ping_rtt = metrics.Histogram()
        self.stream_duration = metrics.Histogram(metrics.DURATION_BUCKETS)
        # Bytes of streams that ended; live streams are summed at scrape time.
        self.ended_bytes_up = 0
        self.ended_bytes_down = 0

    def stream_ended(self, stream: TunnelStream) -> None:
        self.ended_bytes_up += stream.bytes_up
        self.ended_bytes_down += stream.bytes_down
        if stream.opened_at:
            self.stream_duration.observe(time.monotonic() - stream.opened_at)


class CarrierHandler(Protocol):
    """The program's side of the streams (client_a's Proxy, the Agent)."""

    def on_stream_end(self, carrier: Carrier, stream: TunnelStream) -> None: ...
    def on_open(self, carrier: Carrier, sid: int, request: OpenStream) -> None: ...
    def on_response(
        self, carrier: Carrier, stream: TunnelStream, resp: ConnectResponse
    ) -> None: ...


class CarrierOwner(Protocol):
    """Whoever keeps the carriers (the pool or the mesh): connection events."""

    def carrier_goaway(self, carrier: Carrier) -> None: ...
    def carrier_members(self, carrier: Carrier, members: Members) -> None: ...
    def carrier_lost(self, carrier: Carrier) -> None: ...


class CarrierSettings(Protocol):
    relay: str
    token: str
    ca_file: Path | None
    ping_interval: float
    max_frame_size: int
    reconnect_max: float
    window: int


@dataclass(frozen=True)
class RelayLink:
    """How to reach the relay: the same for every carrier of a program."""

    url: str  # ws(s)://host:port/v1/<role>
    role: str
    token: str
    ssl_context: ssl.SSLContext | None
    ping_interval: float
    max_frame_size: int
    reconnect_max: float
    window: int  # the receive window a stream asks for; the relay's budget may cut it

    @classmethod
    def from_config(cls, config: CarrierSettings, role: str) -> RelayLink:
        tls = client_context(config.ca_file) if config.relay.startswith("wss://") else None
        return cls(
            f"{config.relay}/v1/{role}",
            role,
            config.token,
            tls,
            config.ping_interval,
            config.max_frame_size,
            config.reconnect_max,
            config.window,
        )

    def __repr__(self) -> str:  # never print the token
        return f"RelayLink({self.url!r})"


class Backoff:
    """Paces the dials to a relay: exponential backoff with full jitter. The
    n-th delay after a failure is uniform in [0, min(cap, initial * 2**n)], so
    a fleet redialling a restarted relay spreads out instead of arriving in
    waves.

    A completed HELLO (`connected`) resets it: the relay is up, so when that
    connection is later lost the first redial comes within `initial`
    (jittered), not after a delay grown by failures long past. But a
    connection that ends within `settle` seconds of its HELLO (`ended`) is a
    flap, not a success: a relay that accepts and drops at once, or one in a
    crash loop. Flaps in a row count as failures, and HELLO then resets only
    down to their number, so such a relay is redialled with a growing delay,
    never in a tight loop. A connection that lived `settle` seconds clears
    them."""

    def __init__(self, initial: float, cap: float, settle: float = BACKOFF_SETTLE) -> None:
        self.initial = initial
        self.cap = cap
        self.settle = settle
        self.attempt = 0  # failures since the last reset
        self.flaps = 0  # connections in a row that ended within `settle` of HELLO

    def bound(self) -> float:
        """The longest the next delay can be."""
        return min(self.cap, self.initial * 2**self.attempt)

    def next_delay(self) -> float:
        """The pause before the next dial; counts one failure."""
        delay = random.uniform(0, self.bound())
        self.attempt = min(self.attempt + 1, 30)
        return delay

    def reset(self) -> None:
        self.attempt = 0
        self.flaps = 0

    def connected(self) -> None:
        """HELLO completed."""
        self.attempt = self.flaps

    def ended(self, lived: float) -> None:
        """A connection that had completed HELLO ended (lost, or GOAWAY)
        `lived` seconds after it."""
        if lived >= self.settle:
            self.reset()
        else:
            self.flaps = min(self.flaps + 1, 30)
            self.attempt = max(self.attempt, self.flaps)


class Carrier:
    def __init__(
        self, link: RelayLink, handler: CarrierHandler, owner: CarrierOwner, stats: CarrierStats
    ) -> None:
        loop = asyncio.get_running_loop()
        self.link = link
        self.handler = handler
        self.owner = owner
        self.stats = stats
        self.streams: dict[int, TunnelStream] = {}
        self.scheduler = FlushScheduler(loop)
        self.transport: WSTransport | None = None
        self.writer: MuxWriter | None = None
        self.hello: Hello | None = None
        # The credit our streams on this connection grant, within the relay's
        # budget (set from HELLO): honest, however slow, is never cut off.
        self.credit = CreditPool.for_relay(0, 0, link.window)
        self.goaway = False
        self.leaving = False  # the owner no longer wants it: close once idle
        self.lost = False  # the connection has ended
        self.paused = False
        self.sid_cursor = 0
        self.closing = False  # we are closing on purpose
        self.waiting: list[TunnelStream] = []  # streams paused by a full WebSocket
        self.relay_address = "unknown"  # the relay's socket address, for logs
        self.got_hello: asyncio.Future[Hello] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()

    @property
    def ready(self) -> bool:
        """Open for new streams."""
        return self.hello is not None and not (self.goaway or self.leaving or self.lost)

    @property
    def full(self) -> bool:
        """Carrying as many streams as the relay allows on one connection."""
        return self.credit.full

    @property
    def instance_id(self) -> str:
        return self.hello.instance_id if self.hello is not None else ""

    async def open(self) -> Hello:
        """Dial, upgrade, and wait for HELLO. Raises OSError, WSError,
        TimeoutError or ConnectionError (closed before HELLO)."""
        link = self.link
        await ws_connect(
            lambda: CarrierListener(self),
            link.url,
            ssl_context=link.ssl_context,
            # Periodic (not idle-only) pings, so the round trip is measured
            # under load too.
            enable_auto_ping=True,
            auto_ping_idle_timeout=link.ping_interval,
            auto_ping_reply_timeout=link.ping_interval,
            auto_ping_strategy=WSAutoPingStrategy.PING_PERIODICALLY,
            max_frame_size=link.max_frame_size,
            extra_headers={"Authorization": f"Bearer {link.token}"},
            websocket_handshake_timeout=5,
        )
        try:
            return await asyncio.wait_for(asyncio.shield(self.got_hello), HELLO_TIMEOUT)
        except TimeoutError:
            self.close(WSCloseCode.PROTOCOL_ERROR, b"no HELLO")
            raise

    def close(self, code: WSCloseCode = WSCloseCode.OK, reason: bytes = b"shutting down") -> None:
        transport = self.transport
        if transport is None or self.closing:
            return
        self.closing = True
        transport.send_close(code, reason)
        transport.disconnect()

    def close_if_idle(self) -> None:
        if not self.streams:
            self.close(WSCloseCode.GOING_AWAY, b"drained")

    async def aclose(self, timeout: float = 2.0) -> None:
        self.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.done), timeout)

    def send(self, frames: bytes | bytearray | memoryview) -> None:
        if self.writer is not None:
            self.writer.write(frames)

    def write_buffer_size(self) -> int:
        transport = self.transport
        if transport is None or transport.is_disconnected:
            return 0
        return int(transport.underlying_transport.get_write_buffer_size())

    def send_external(self, buf: bytearray, offset: int) -> None:
        if self.writer is not None:
            self.writer.write_external(buf, offset)

    def forget(self, stream: TunnelStream) -> None:
        """The stream ended (opened or not); it is counted here, once."""
        if self.streams.get(stream.sid) is stream:
            del self.streams[stream.sid]
            self.credit.close(stream.recv_window.window)
            self.stats.stream_ended(stream)
            self.handler.on_stream_end(self, stream)
            if not self.streams and (self.goaway or self.leaving):
                self.close(WSCloseCode.GOING_AWAY, b"drained")

    def next_stream_id(self) -> int | None:
        """A free id in the range the relay's HELLO assigned (client_a only)."""
        hello = self.hello
        if hello is None or not hello.stream_id_count:
            return None
        base, count = hello.stream_id_base, hello.stream_id_count
        for _ in range(min(count, len(self.streams) + 1)):
            sid = base + self.sid_cursor % count
            self.sid_cursor += 1
            if sid and sid not in self.streams:
                return sid
        return None

    # --- events from the listener ---

    def connected(self, transport: WSTransport) -> None:
        self.transport = transport
        # The 64 KiB default would pause every local socket after each 256 KiB
        # frame; per-stream credit already bounds what can queue here.
        transport.underlying_transport.set_write_buffer_limits(
            high=WS_BUFFER_HIGH, low=WS_BUFFER_HIGH // 4
        )
        self.writer = MuxWriter(transport, self.scheduler)
        peer = transport.underlying_transport.get_extra_info("peername")
        self.relay_address = format_address(peer) if peer else "unknown"

    def disconnected(self) -> None:
        was_ready = self.hello is not None
        if self.writer is not None:
            self.writer.close()
        self.writer = None
        self.transport = None
        self.paused = False
        self.waiting = []
        self.lost = True
        for stream in list(self.streams.values()):
            stream.carrier_lost()
        self.streams.clear()
        if was_ready and not self.closing:
            log.warning("lost the connection to relay %s (%s)", self.instance_id, self.link.url)
        if not self.got_hello.done():
            self.got_hello.set_exception(ConnectionError("the relay closed before HELLO"))
            self.got_hello.exception()  # retrieved here: open() may not be waiting
        if not self.done.done():
            self.done.set_result(None)
        self.owner.carrier_lost(self)

    def set_paused(self, paused: bool) -> None:
        """The WebSocket's backlog crossed its high (or low) water mark.

        Pausing is lazy: a stream that sends while the carrier is paused stops
        reading its socket after that one read and queues in `waiting`. So
        every stream gets at most one read per pause cycle (fair with 1,000
        busy tunnels, where pausing all sockets eagerly starved most of them:
        288 of 1,000 moved data in 3 s), and only streams that actually read
        cost a pause and a resume.
        """
        self.paused = paused
        if paused:
            self.stats.backpressure_pauses += 1
            return
        waiting, self.waiting = self.waiting, []
        for stream in waiting:
            stream.carrier_paused(False)

    def wait_for_room(self, stream: TunnelStream) -> None:
        stream.carrier_paused(True)
        self.waiting.append(stream)

    def receive(self, message: memoryview) -> None:
        streams = self.streams
        for frame_type, _flags, sid, offset, length in iter_frames(message):
            payload = message[offset : offset + length]
            if frame_type == _DATA:
                stream = streams.get(sid)
                if stream is None:
                    self.stats.dropped_unknown_stream += 1
                    continue
                try:
                    stream.deliver(payload)
                except StreamError as exc:
                    self.stats.protocol_errors[exc.kind] += 1
                    stream.abort(str(exc))
                except Exception:  # a bug must cost one stream, not the carrier
                    self._stream_crashed(stream)
            else:
                self._control(frame_type, sid, payload)

    def _control(self, frame_type: int, sid: int, payload: memoryview) -> None:
        if frame_type == FrameType.HELLO:
            hello = Hello.decode(payload)
            if hello.max_frame_size > self.link.max_frame_size:
                self._refuse_hello(
                    f"relay {hello.instance_id} forwards WebSocket messages of up to "
                    f"{hello.max_frame_size} bytes, more than this program's --max-frame-size "
                    f"({self.link.max_frame_size}): set it to at least {hello.max_frame_size}"
                )
                return
            self.hello = hello
            self.credit = CreditPool.for_relay(
                self.hello.buffer_budget, self.hello.max_streams, self.link.window
            )
            log.info("connected to relay %s (%s)", self.hello.instance_id, self.link.url)
            if not self.got_hello.done():
                self.got_hello.set_result(self.hello)
            return
        if frame_type == FrameType.GOAWAY:
            self.goaway = True
            log.info("relay %s sent GOAWAY: %s", self.instance_id, GoAway.decode(payload).error)
            self.owner.carrier_goaway(self)
            if not self.streams:
                self.close(WSCloseCode.GOING_AWAY, b"drained")
            return
        if frame_type == FrameType.MEMBERS:
            self.owner.carrier_members(self, Members.decode(payload))
            return
        if frame_type in (FrameType.CONNECT, FrameType.REQUEST):
            self.handler.on_open(self, sid, OpenStream.decode(FrameType(frame_type), payload))
            return
        stream = self.streams.get(sid)
        if stream is None:
            self.stats.dropped_unknown_stream += 1
            return
        try:
            if frame_type == FrameType.WINDOW_UPDATE:
                stream.grant(decode_window_increment(payload))
            elif frame_type == FrameType.FIN:
                stream.remote_fin()
            elif frame_type == FrameType.TUNNEL_ERROR:
                stream.remote_error(TunnelError.decode(payload).error)
            elif frame_type == FrameType.CONNECT_RESPONSE:
                self.handler.on_response(self, stream, ConnectResponse.decode(payload))
        except StreamError as exc:
            self.stats.protocol_errors[exc.kind] += 1
            stream.abort(str(exc))
        except Exception:  # a bug must cost one stream, not the carrier
            self._stream_crashed(stream)

    def _refuse_hello(self, why: str) -> None:
        """A relay this program cannot work with: say why, and hang up (the
        owner redials with back-off, and readiness stays "not connected")."""
        log.error("%s", why)
        self.stats.protocol_errors["config_mismatch"] += 1
        if not self.got_hello.done():
            self.got_hello.set_exception(ConnectionError(why))
        self.close(WSCloseCode.POLICY_VIOLATION, b"max frame size below the relay's")

    def _stream_crashed(self, stream: TunnelStream) -> None:
        self.stats.protocol_errors["internal_error"] += 1
        log.exception("internal error on stream %s; aborting it", stream.session_id)
        try:
            stream.abort("internal error")
        except Exception:
            self.streams.pop(stream.sid, None)


class CarrierListener(WSListener):
    def __init__(self, carrier: Carrier) -> None:
        super().__init__()
        self.carrier = carrier
        self.ping_sent_at = 0.0

    # picows' auto-ping calls these two; timing them gives the round trip.
    # is_user_specific_pong runs for each frame only while a pong is due.
    def send_user_specific_ping(self, transport: WSTransport) -> None:
        self.ping_sent_at = time.monotonic()
        transport.send_ping()

    def is_user_specific_pong(self, frame: WSFrame) -> bool:
        if frame.msg_type is not WSMsgType.PONG:
            return False
        self.carrier.stats.ping_rtt.observe(time.monotonic() - self.ping_sent_at)
        return True

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.carrier.connected(transport)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        try:
            if msg_type is _BINARY and frame.fin:
                self.carrier.receive(frame.get_payload_as_memoryview())
            elif msg_type is WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code())
                transport.disconnect()
            elif msg_type is not WSMsgType.PING and msg_type is not WSMsgType.PONG:
                raise ProtocolError(f"unexpected WebSocket {msg_type.name} frame from the relay")
        except ProtocolError as exc:
            self.carrier.stats.protocol_errors[exc.kind] += 1
            log.error("closing relay connection: %s", exc)
            transport.send_close(WSCloseCode(exc.close_code), str(exc).encode()[:120])
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.carrier.disconnected()

    def pause_writing(self) -> None:
        self.carrier.set_paused(True)

    def resume_writing(self) -> None:
        self.carrier.set_paused(False)


def describe_dial_error(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if response is not None and getattr(response, "status", None) is not None:
        status = int(response.status)
        if status == 401:
            return "the relay rejected the token (HTTP 401)"
        return f"the relay answered HTTP {status}"
    return str(exc) or type(exc).__name__


def carrier_metrics(stats: CarrierStats, role: str, carriers: list[Carrier]) -> Iterable[Metric]:
    """The metrics every program with carriers exports (client_a and the agent)."""
    yield metrics.gauge(
        metrics.RELAY_CONNECTED,
        "Relay WebSockets up and open for new streams",
        [],
        {(): sum(1 for c in carriers if c.ready)},
    )
    yield metrics.gauge(
        metrics.WS_WRITE_BUFFER,
        "Bytes queued on the relay connections, not yet taken by the kernel",
        ["role"],
        {(role,): sum(c.write_buffer_size() for c in carriers)},
    )
    yield metrics.counter(
        metrics.RECONNECTS, "Relay redials by role", ["role"], {(role,): stats.reconnects}
    )
    yield metrics.histogram(
        metrics.PING_RTT,
        "WebSocket ping round-trip time to the relay",
        ["role"],
        {(role,): stats.ping_rtt},
    )
    yield metrics.counter(
        metrics.FRAMES_DROPPED,
        "Frames dropped, by reason",
        ["reason"],
        {("unknown_stream",): stats.dropped_unknown_stream},
    )
    yield metrics.counter(
        metrics.FLOW_CONTROL_STALLS,
        "Times a stream waited for credit",
        [],
        {(): stats.flow_control_stalls},
    )
    yield metrics.counter(
        metrics.BACKPRESSURE_PAUSES,
        "Times the relay connection's backlog paused local sockets",
        [],
        {(): stats.backpressure_pauses},
    )
    yield metrics.counter(
        metrics.PROTOCOL_ERRORS,
        "Protocol errors by kind",
        ["kind"],
        {(k,): n for k, n in stats.protocol_errors.items()},
    )


def carrier_stream_bytes(stats: CarrierStats, carriers: list[Carrier]) -> tuple[int, int]:
    """Tunnel payload bytes (upstream, downstream), ended streams and live ones."""
    up, down = stats.ended_bytes_up, stats.ended_bytes_down
    for carrier in carriers:
        for stream in carrier.streams.values():
            up += stream.bytes_up
            down += stream.bytes_down
    return up, down
