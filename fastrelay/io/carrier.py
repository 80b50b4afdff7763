"""The WebSocket that client_a and the agent keep to the relay.

A `Carrier` dials the relay, authenticates with a bearer token, and redials
with exponential backoff and full jitter when the connection drops (the
backoff resets once a connection has stayed up for `STABLE_AFTER` seconds).
Incoming mux frames are dispatched to the program's streams; every stream on
a lost carrier is ended at once.
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
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from picows import (
    WSAutoPingStrategy,
    WSCloseCode,
    WSError,
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
from fastrelay.protocol.frames import FrameType, decode_window_increment, iter_frames
from fastrelay.protocol.messages import ConnectResponse, GoAway, Hello, OpenStream, TunnelError
from fastrelay.tls import client_context

if TYPE_CHECKING:
    from fastrelay.io.tunnel import TunnelStream

log = logging.getLogger("fastrelay.carrier")

BACKOFF_INITIAL = 0.1
WS_BUFFER_HIGH = 2 * 1024 * 1024
STABLE_AFTER = 10.0
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
    def on_hello(self, carrier: Carrier, hello: Hello) -> None: ...
    def on_stream_end(self, carrier: Carrier, stream: TunnelStream) -> None: ...
    def on_open(self, carrier: Carrier, sid: int, request: OpenStream) -> None: ...
    def on_response(
        self, carrier: Carrier, stream: TunnelStream, resp: ConnectResponse
    ) -> None: ...


class CarrierSettings(Protocol):
    relay: str
    token: str
    ca_file: Path | None
    ping_interval: float
    max_frame_size: int
    reconnect_max: float


class Carrier:
    @classmethod
    def from_config(
        cls, config: CarrierSettings, role: str, handler: CarrierHandler, stats: CarrierStats
    ) -> Carrier:
        tls = client_context(config.ca_file) if config.relay.startswith("wss://") else None
        return cls(
            config.relay,
            role,
            config.token,
            handler,
            ssl_context=tls,
            ping_interval=config.ping_interval,
            max_frame_size=config.max_frame_size,
            reconnect_max=config.reconnect_max,
            stats=stats,
        )

    def __init__(
        self,
        url: str,
        role: str,
        token: str,
        handler: CarrierHandler,
        *,
        ssl_context: ssl.SSLContext | None,
        ping_interval: float,
        max_frame_size: int,
        reconnect_max: float,
        stats: CarrierStats,
    ) -> None:
        self.url = f"{url}/v1/{role}"
        self.token = token
        self.handler = handler
        self.ssl_context = ssl_context
        self.ping_interval = ping_interval
        self.max_frame_size = max_frame_size
        self.reconnect_max = reconnect_max
        self.stats = stats
        self.streams: dict[int, TunnelStream] = {}
        self.scheduler = FlushScheduler(asyncio.get_running_loop())
        self.transport: WSTransport | None = None
        self.writer: MuxWriter | None = None
        self.hello: Hello | None = None
        self.goaway = False
        self.paused = False
        self.connections = 0
        self.sid_cursor = 0
        self.closing = False  # we are closing on purpose (shutdown)
        self.waiting: list[TunnelStream] = []  # streams paused by a full WebSocket
        self.relay_address = "unknown"  # the relay's socket address, for logs

    @property
    def ready(self) -> bool:
        return self.hello is not None and not self.goaway

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
            self.stats.stream_ended(stream)
            self.handler.on_stream_end(self, stream)

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

    # --- the dial loop ---

    async def run(self, stop: asyncio.Event) -> None:
        attempt = 0
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            started = loop.time()
            try:
                await self._connect_once(stop)
            except (TimeoutError, OSError, WSError) as exc:
                log.warning("cannot reach relay %s: %s", self.url, _describe(exc))
            if stop.is_set():
                break
            if loop.time() - started >= STABLE_AFTER:
                attempt = 0
            delay = random.uniform(0, min(self.reconnect_max, BACKOFF_INITIAL * 2**attempt))
            attempt = min(attempt + 1, 30)
            self.stats.reconnects += 1
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)

    async def _connect_once(self, stop: asyncio.Event) -> None:
        transport, _listener = await ws_connect(
            lambda: CarrierListener(self),
            self.url,
            ssl_context=self.ssl_context,
            # Periodic (not idle-only) pings, so the round trip is measured
            # under load too.
            enable_auto_ping=True,
            auto_ping_idle_timeout=self.ping_interval,
            auto_ping_reply_timeout=self.ping_interval,
            auto_ping_strategy=WSAutoPingStrategy.PING_PERIODICALLY,
            max_frame_size=self.max_frame_size,
            extra_headers={"Authorization": f"Bearer {self.token}"},
            websocket_handshake_timeout=5,
        )
        disconnected = asyncio.ensure_future(transport.wait_disconnected())
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({disconnected, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not disconnected.done():
                self.closing = True
                transport.send_close(WSCloseCode.OK, b"shutting down")
                transport.disconnect()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(disconnected, 2)
            elif not disconnected.cancelled() and disconnected.exception() is not None:
                log.warning("relay connection failed: %s", disconnected.exception())

    # --- events from the listener ---

    def connected(self, transport: WSTransport) -> None:
        self.transport = transport
        # The 64 KiB default would pause every local socket after each 256 KiB
        # frame; per-stream credit already bounds what can queue here.
        transport.underlying_transport.set_write_buffer_limits(
            high=WS_BUFFER_HIGH, low=WS_BUFFER_HIGH // 4
        )
        self.writer = MuxWriter(transport, self.scheduler)
        self.connections += 1
        peer = transport.underlying_transport.get_extra_info("peername")
        self.relay_address = format_address(peer) if peer else "unknown"

    def disconnected(self) -> None:
        was_ready = self.hello is not None
        self.hello = None
        self.goaway = False
        if self.writer is not None:
            self.writer.close()
        self.writer = None
        self.transport = None
        self.paused = False
        self.waiting = []
        for stream in list(self.streams.values()):
            stream.remote_error("relay connection lost")
        self.streams.clear()
        if was_ready and not self.closing:
            log.warning("lost the relay connection %s", self.url)

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
            self.hello = Hello.decode(payload)
            log.info("connected to relay %s (instance %s)", self.url, self.hello.instance_id)
            self.handler.on_hello(self, self.hello)
            return
        if frame_type == FrameType.GOAWAY:
            self.goaway = True
            log.info("relay sent GOAWAY: %s", GoAway.decode(payload).error)
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


def _describe(exc: BaseException) -> str:
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
        "1 while the relay connection is up",
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
