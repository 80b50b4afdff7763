"""One WebSocket from client_a or the agent to a relay: a `Carrier`.

A Carrier lives exactly as long as its connection: `open()` dials the relay,
authenticates with a bearer token and waits for HELLO; when the connection
ends, every stream on it is ended at once and `done` resolves. Who dials
again, when and how many lives at once is the owner's business: client_a's
`CarrierPool` (fastrelay/io/pool.py) and the agent's mesh (agent/mesh.py),
both pacing their dials with `Backoff` (fastrelay/protocol/carriers.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from picows import (
    WSAutoPingStrategy,
    WSCloseCode,
    WSFrame,
    WSMsgType,
    WSTransport,
    picows,
    ws_connect,
)
from prometheus_client.core import Metric

from fastrelay import metrics
from fastrelay.io.mux import FlushScheduler, MuxWriter, bound_reads
from fastrelay.io.tunnel import abort_socket
from fastrelay.lifecycle import format_address
from fastrelay.protocol.errors import CLOSE_NORMAL, CLOSE_PROTOCOL_ERROR, ProtocolError
from fastrelay.protocol.flow import CreditPool
from fastrelay.protocol.messages import (
    FEATURE_RULES,
    FEATURES_HEADER,
    POOL_HEADER,
    Hello,
    Members,
    OpenStream,
)
from fastrelay.protocol.rules import PushedRules
from fastrelay.protocol.session import (
    AGENT_SIDE,
    CLIENT_SIDE,
    Link,
    Session,
    SessionStats,
    Stream,
)
from fastrelay.tls import client_context

log = logging.getLogger("fastrelay.carrier")

WS_BUFFER_HIGH = 2 * 1024 * 1024
# The kernel keeps at most this much unsent data for the relay connection
# (TCP_NOTSENT_LOWAT); the rest waits in user space, where WS_BUFFER_HIGH pauses
# the streams. Autotuned, the kernel took megabytes more, queued ahead of every
# other stream's frames on a slow link: another tenant's open behind a download
# over a 20 MB/s link took 564 ms with it, 385 without (bench.hol_probe
# --direction down), and loopback bulk moved the same.
NOTSENT_LOWAT = 128 * 1024
TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)  # Linux
HELLO_TIMEOUT = 5.0  # after the upgrade, the relay's HELLO must come this soon
TICK = 0.25  # how often a carrier with an open timeout expires late opens
_now = time.monotonic
_BINARY = WSMsgType.BINARY
_CLOSE = WSMsgType.CLOSE
_PING = WSMsgType.PING
_PONG = WSMsgType.PONG
# The payload of the session's probes (`Link.probe`), so their pongs are told
# apart from the answers to picows' keep-alive pings, which are empty.
PROBE = b"p"


class CarrierStats(SessionStats):
    """The session counters, plus what only the adapter can measure."""

    def __init__(self) -> None:
        super().__init__()
        self.reconnects = 0
        self.ping_rtt = metrics.Histogram()
        # What each probe's answer measured, by the metric's `direction` label.
        self.path_to_relay = metrics.Histogram()
        self.path_from_relay = metrics.Histogram()
        self.path_round_trip = metrics.Histogram()  # a relay that does not stamp probes
        self.stream_duration = metrics.Histogram(metrics.DURATION_BUCKETS)

    def path_measured(self, queue_out: float, queue_in: float, stamped: bool) -> None:
        if stamped:
            self.path_to_relay.observe(queue_out)
            self.path_from_relay.observe(queue_in)
        else:
            self.path_round_trip.observe(queue_out)


class CarrierHandler(Protocol):
    """The program's side of the streams (client_a's Proxy, the Agent)."""

    def on_open(self, carrier: Carrier, stream: Stream, request: OpenStream) -> None:
        """(agent) An open arrived: dial, then `stream.accept` or `stream.refuse`."""

    def on_opened(self, carrier: Carrier, stream: Stream) -> None:
        """(client_a) The agent answered 200."""

    def on_stream_end(self, carrier: Carrier, stream: Stream) -> None: ...


class CarrierOwner(Protocol):
    """Whoever keeps the carriers (the pool or the mesh): connection events."""

    def carrier_goaway(self, carrier: Carrier) -> None: ...
    def carrier_members(self, carrier: Carrier, members: Members) -> None: ...
    def carrier_lost(self, carrier: Carrier) -> None: ...


class CarrierSettings(Protocol):
    """What a program's (frozen) config gives its carriers."""

    @property
    def relay(self) -> str: ...
    @property
    def token(self) -> str: ...
    @property
    def ca_file(self) -> Path | None: ...
    @property
    def ping_interval(self) -> float: ...
    @property
    def max_frame_size(self) -> int: ...
    @property
    def reconnect_max(self) -> float: ...
    @property
    def window(self) -> int: ...
    @property
    def max_window(self) -> int: ...


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
    max_window: int = 0  # how far a stream's window may grow on a long path (0: window)
    pool: str = ""  # an agent's pool, sent in the upgrade ("": none, the default pool)
    rules: bool = False  # (client_a) ask the relay for the rules it pushes (RULES frames)

    @classmethod
    def from_config(
        cls, config: CarrierSettings, role: str, pool: str = "", rules: bool = False
    ) -> RelayLink:
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
            config.max_window,
            pool,
            rules,
        )

    def __repr__(self) -> str:  # never print the token
        return f"RelayLink({self.url!r})"


class Carrier(Link):
    """One relay WebSocket: picows under a `Session` (fastrelay/protocol/session.py),
    which makes every decision. The carrier dials, carries the session's
    frames, ticks its open expiry and turns its events into the owner's and
    the program's."""

    def __init__(
        self,
        link: RelayLink,
        handler: CarrierHandler,
        owner: CarrierOwner,
        stats: CarrierStats,
        open_timeout: float = 0.0,
        on_rules: Callable[[Carrier, PushedRules], None] | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        self.on_rules_pushed = on_rules
        self.loop = loop
        self.link = link
        self.handler = handler
        self.owner = owner
        self.stats = stats
        self.scheduler = FlushScheduler(loop)
        self.transport: WSTransport | None = None
        self.writer: MuxWriter | None = None
        side = CLIENT_SIDE if link.role == "client" else AGENT_SIDE
        self.session = Session(
            self,
            self,
            stats,
            side=side,
            window=link.window,
            max_window=link.max_window,
            max_frame_size=link.max_frame_size,
            open_timeout=open_timeout,
            abort_socket=abort_socket,
            pool=link.pool,
        )
        self.streams = self.session.streams
        self.ticker: asyncio.TimerHandle | None = None
        self.relay_address = "unknown"  # the relay's socket address, for logs
        self.got_hello: asyncio.Future[Hello] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()

    # The session's state, for the pool and the mesh.
    @property
    def ready(self) -> bool:
        return self.session.ready

    @property
    def full(self) -> bool:
        return self.session.full

    @property
    def lost(self) -> bool:
        return self.session.lost

    @property
    def goaway(self) -> bool:
        return self.session.goaway

    @property
    def closing(self) -> bool:
        return self.session.closing

    @property
    def hello(self) -> Hello | None:
        return self.session.hello

    @property
    def credit(self) -> CreditPool:
        return self.session.credit

    @property
    def instance_id(self) -> str:
        return self.session.instance_id

    async def open(self) -> Hello:
        """Dial, upgrade, and wait for HELLO. Raises OSError, WSError,
        TimeoutError or ConnectionError (closed before HELLO)."""
        link = self.link
        headers = {"Authorization": f"Bearer {link.token}"}
        if link.pool:
            headers[POOL_HEADER] = link.pool
        if link.rules:
            headers[FEATURES_HEADER] = FEATURE_RULES
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
            extra_headers=headers,
            websocket_handshake_timeout=5,
        )
        try:
            return await asyncio.wait_for(asyncio.shield(self.got_hello), HELLO_TIMEOUT)
        except TimeoutError:
            self.session.close(CLOSE_PROTOCOL_ERROR, "no HELLO")
            raise

    def close(self, code: int = CLOSE_NORMAL, reason: str = "shutting down") -> None:
        self.session.close(code, reason)

    def close_if_idle(self) -> None:
        self.session.close_if_idle()

    async def aclose(self, timeout: float = 2.0) -> None:
        self.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.done), timeout)

    def write_buffer_size(self) -> int:
        transport = self.transport
        if transport is None or transport.is_disconnected:
            return 0
        return int(transport.underlying_transport.get_write_buffer_size())

    # --- the session's Link (its `out` is the MuxWriter itself while connected) ---

    def write(self, frames: bytes | bytearray | memoryview) -> None:
        if self.writer is not None:
            self.writer.write(frames)

    def write_external(self, buf: bytearray, offset: int) -> None:
        if self.writer is not None:
            self.writer.write_external(buf, offset)

    def probe(self) -> None:
        transport = self.transport
        if transport is not None:
            transport.send_ping(PROBE)

    def disconnect(self, code: int, reason: str) -> None:
        transport = self.transport
        if transport is not None:
            if self.writer is not None:
                # Frames queued this loop iteration (the FIN that ended the last
                # stream, say) go out before the close, or the peer sees an abort.
                self.writer.flush()
            transport.send_close(WSCloseCode(code), reason.encode()[:120])
            transport.disconnect()

    # --- the session's events ---

    def on_hello(self, session: Session, hello: Hello) -> None:
        if self.writer is not None and hello.max_frame_size:
            self.writer.peer_accepts(hello.max_frame_size)
        if hello.pool:
            log.info(
                "connected to relay %s (%s), pool %s", hello.instance_id, self.link.url, hello.pool
            )
        else:
            log.info("connected to relay %s (%s)", hello.instance_id, self.link.url)
        if self.session.open_timeout > 0 and self.ticker is None:
            self.ticker = self.loop.call_later(TICK, self._tick)
        if not self.got_hello.done():
            self.got_hello.set_result(hello)

    def on_hello_refused(self, session: Session, why: str) -> None:
        """A relay this program cannot work with: say why; the session hangs up
        (the owner redials with back-off, and readiness stays "not connected")."""
        log.error("%s", why)
        if not self.got_hello.done():
            self.got_hello.set_exception(ConnectionError(why))

    def on_goaway(self, session: Session, reason: str) -> None:
        log.info("relay %s sent GOAWAY: %s", self.instance_id, reason)
        self.owner.carrier_goaway(self)

    def on_members(self, session: Session, members: Members) -> None:
        self.owner.carrier_members(self, members)

    def on_rules(self, session: Session, pushed: PushedRules) -> None:
        if self.on_rules_pushed is None or not self.link.rules:
            # Never asked for: a relay that sends them anyway is ignored, not obeyed.
            self.stats.protocol_errors["unexpected_rules"] += 1
            log.warning("relay %s sent RULES, which this program did not ask for", self.instance_id)
            return
        self.on_rules_pushed(self, pushed)

    def on_rules_refused(self, session: Session, why: str) -> None:
        log.error(
            "refused the rules relay %s pushed, keeping the current ones: %s", self.instance_id, why
        )

    def on_open(self, session: Session, stream: Stream, request: OpenStream) -> None:
        self.handler.on_open(self, stream, request)

    def on_opened(self, session: Session, stream: Stream) -> None:
        self.handler.on_opened(self, stream)

    def on_stream_end(self, session: Session, stream: Stream) -> None:
        if stream.opened:
            self.stats.stream_duration.observe(time.monotonic() - stream.opened_at)
        self.handler.on_stream_end(self, stream)

    def on_internal_error(self, session: Session, stream: Stream, exc: Exception) -> None:
        log.error("internal error on stream %s; aborting it", stream.session_id, exc_info=exc)

    def _tick(self) -> None:
        self.ticker = None
        if self.session.lost:
            return
        self.session.tick(time.monotonic())
        self.ticker = self.loop.call_later(TICK, self._tick)

    # --- events from the listener ---

    def connected(self, transport: WSTransport) -> None:
        self.transport = transport
        bound_reads(transport)
        # The 64 KiB default would pause every local socket after each 256 KiB
        # frame; per-stream credit already bounds what can queue here.
        transport.underlying_transport.set_write_buffer_limits(
            high=WS_BUFFER_HIGH, low=WS_BUFFER_HIGH // 4
        )
        sock = transport.underlying_transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # not TCP (a test's pipe) or not Linux
                sock.setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, NOTSENT_LOWAT)
        # Until HELLO says what the relay accepts, what this program accepts.
        writer = self.writer = MuxWriter(transport, self.scheduler, self.link.max_frame_size)
        session = self.session
        session.out = writer
        peer = transport.underlying_transport.get_extra_info("peername")
        self.relay_address = format_address(peer) if peer else "unknown"

    def receive(self, message: memoryview) -> None:
        self.session.receive(message, time.monotonic())

    def disconnected(self) -> None:
        session = self.session
        was_ready = session.hello is not None
        if self.writer is not None:
            self.writer.close()
        self.writer = None
        self.transport = None
        session.out = self  # drops everything from now on
        if self.ticker is not None:
            self.ticker.cancel()
            self.ticker = None
        closing = session.closing
        session.connection_lost()
        if was_ready and not closing:
            log.warning("lost the connection to relay %s (%s)", self.instance_id, self.link.url)
        if not self.got_hello.done():
            self.got_hello.set_exception(ConnectionError("the relay closed before HELLO"))
            self.got_hello.exception()  # retrieved here: open() may not be waiting
        if not self.done.done():
            self.done.set_result(None)
        self.owner.carrier_lost(self)


class CarrierListener(picows.WSListener):  # carrier.pxd: a C extension type when compiled
    def __init__(self, carrier: Carrier) -> None:
        super().__init__()
        self.carrier = carrier
        self.session = carrier.session
        self.scheduler = carrier.scheduler
        self.ping_sent_at = 0.0

    # picows' auto-ping calls these two; timing them gives the round trip.
    # is_user_specific_pong runs for each frame only while a pong is due; the
    # session's probes (with a payload) go on to on_ws_frame.
    def send_user_specific_ping(self, transport: WSTransport) -> None:
        self.ping_sent_at = _now()
        transport.send_ping()

    def is_user_specific_pong(self, frame: WSFrame) -> bool:
        if frame.msg_type != _PONG or frame.payload_size:
            return False
        now = _now()
        rtt = now - self.ping_sent_at
        self.carrier.stats.ping_rtt.observe(rtt)
        self.session.path.observe(rtt, now)  # mostly idle: a base for the queueing delay
        return True

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.carrier.connected(transport)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        scheduler = self.scheduler
        scheduler.in_frame = True  # what this frame makes goes out after the read's last one
        try:
            if msg_type == _BINARY and frame.fin:
                self.session.receive(frame.get_payload_as_memoryview(), _now())
            elif msg_type == _CLOSE:
                transport.send_close(frame.get_close_code())
                transport.disconnect()
            elif msg_type == _PONG:
                if frame.payload_size:  # a probe's answer (keep-alive ones are empty)
                    self.session.probe_answered(_now())
            elif msg_type != _PING:
                name = WSMsgType(msg_type).name
                raise ProtocolError(f"unexpected WebSocket {name} frame from the relay")
        except ProtocolError as exc:
            self.carrier.stats.protocol_errors[exc.kind] += 1
            log.error("closing relay connection: %s", exc)
            transport.send_close(WSCloseCode(exc.close_code), str(exc).encode()[:120])
            transport.disconnect()
        finally:
            scheduler.frame_done(frame.last_in_buffer)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.carrier.disconnected()

    def pause_writing(self) -> None:
        self.session.set_paused(True)

    def resume_writing(self) -> None:
        self.session.set_paused(False)


def dial_rejected(exc: BaseException) -> bool:
    """The relay answered the upgrade with 401 or 403: the token is wrong, and
    redialling soon will not fix it."""
    response = getattr(exc, "response", None)
    return getattr(response, "status", None) in (401, 403)


def describe_dial_error(exc: BaseException, role: str = "this program") -> str:
    """Why a dial of the relay failed, for the log and for the browser's 503."""
    response = getattr(exc, "response", None)
    if response is not None and getattr(response, "status", None) is not None:
        status = int(response.status)
        if status in (401, 403):
            return f"the relay rejected {role}'s token (HTTP {status})"
        # The relay's refusals say why in one plain-text line (a limit, a bad pool name).
        body = getattr(exc, "raw_body", None)
        first = bytes(body).split(b"\n", 1)[0] if isinstance(body, bytes | bytearray) else b""
        why = first[:200].decode("utf-8", "replace").strip()
        return (
            f"the relay answered HTTP {status}: {why}"
            if why
            else f"the relay answered HTTP {status}"
        )
    if isinstance(exc, OSError) and exc.errno:
        return f"relay unreachable: {os.strerror(exc.errno).lower()}"
    if isinstance(exc, TimeoutError):
        return "relay unreachable: no answer to the WebSocket upgrade in time"
    return f"relay unreachable: {exc or type(exc).__name__}"


def carrier_metrics(stats: CarrierStats, role: str, carriers: list[Carrier]) -> Iterable[Metric]:
    """The metrics every program with carriers exports (client_a and the agent)."""
    yield metrics.F_RELAY_CONNECTED.one(sum(1 for c in carriers if c.ready))
    yield metrics.F_WS_WRITE_BUFFER_CARRIER.build(
        {(role,): sum(c.write_buffer_size() for c in carriers)}
    )
    yield metrics.F_RECONNECTS.build({(role,): stats.reconnects})
    yield metrics.F_PING_RTT_CARRIER.build({(role,): stats.ping_rtt})
    yield metrics.F_PATH_QUEUEING.build(
        {
            (role, "to_relay"): stats.path_to_relay,
            (role, "from_relay"): stats.path_from_relay,
            (role, "round_trip"): stats.path_round_trip,
        }
    )
    yield metrics.frames_dropped(stats.dropped_unknown_stream)
    yield metrics.F_FLOW_CONTROL_STALLS.one(stats.flow_control_stalls)
    yield metrics.F_WINDOW_GROWTHS.one(stats.window_growths)
    yield metrics.F_WINDOW_BACKOFFS.one(stats.window_backoffs)
    yield metrics.F_SEND_BACKOFFS.one(stats.send_backoffs)
    yield metrics.F_BACKPRESSURE_PAUSES.one(stats.backpressure_pauses)
    yield metrics.protocol_errors(stats.protocol_errors)


def carrier_stream_bytes(stats: CarrierStats, carriers: list[Carrier]) -> tuple[int, int]:
    """Tunnel payload bytes (upstream, downstream), ended streams and live ones."""
    up, down = stats.ended_bytes_up, stats.ended_bytes_down
    for carrier in carriers:
        for stream in carrier.streams.values():
            up += stream.bytes_up
            down += stream.bytes_down
    return up, down
