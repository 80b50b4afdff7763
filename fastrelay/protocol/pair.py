"""The switch joined to in-memory endpoints: protocol properties in milliseconds.

`Pair` owns a `Switch`, a clock and any number of client_a and agent
`Endpoint`s. Each endpoint speaks the wire protocol the way the real programs
do (HELLO, opens, credit from a `CreditPool`, WINDOW_UPDATE after it has
read, FIN, TUNNEL_ERROR) but keeps its bytes in memory, and can misbehave on
request: stop reading (a stalled laptop: no pongs either), never answer opens
(a rogue agent), or send whatever raw bytes a test likes.

    pair = Pair(Limits(connection_buffer=1 << 20))
    client, agent = pair.client(), pair.agent()
    sid = client.open()
    pair.run()                      # everyone reads until nothing moves
    client.write(sid, 1000)
    pair.run()
    assert agent.streams[sid].received == 1000

Like h11's ConnectionPair, it is a test and benchmark helper: no sockets, no
asyncio, no clock but `Pair.now`.
"""

from __future__ import annotations

from collections import deque

from fastrelay.protocol.errors import ProtocolError
from fastrelay.protocol.flow import CreditPool, SendWindow
from fastrelay.protocol.frames import FrameType
from fastrelay.protocol.messages import (
    DEFAULT_POOL,
    DEFAULT_WINDOW,
    ConnectResponse,
    Hello,
    Members,
    OpenStream,
)
from fastrelay.protocol.output import Output
from fastrelay.protocol.rules import PushedRules
from fastrelay.protocol.session import (
    AGENT_SIDE,
    CLIENT_SIDE,
    Link,
    Session,
    SessionStats,
    Stream,
)
from fastrelay.protocol.state import StreamState
from fastrelay.protocol.switch import Conn, Limits, Switch


class Wire(Output):
    """What the relay writes to one connection, queued until the endpoint
    reads it: the switch's `Output` and `Link` for that connection."""

    def __init__(self) -> None:
        self.queue: deque[bytes | None] = deque()  # None: a pong, behind what came before
        self.queued = 0  # bytes written and not read: what the relay holds
        self.peak = 0
        self.closed: tuple[int, str] | None = None
        self.pings = 0
        self.endpoint: Endpoint | None = None

    def write(self, frames: bytes | bytearray | memoryview) -> None:
        if self.closed is not None:
            return
        data = bytes(frames)  # a view is valid only during the switch's call
        self.queue.append(data)
        self.queued += len(data)
        self.peak = max(self.peak, self.queued)
        if self.endpoint is not None:
            self.endpoint.pair.wrote(self.endpoint)

    def close(self, code: int, reason: str) -> None:
        if self.closed is None:
            self.closed = (code, reason)

    def ping(self) -> None:
        self.pings += 1

    def pong(self) -> None:
        """The relay answers an endpoint's probe (picows' auto-pong): it is read
        after everything the relay queued before it, as on a real link."""
        if self.closed is None:
            self.queue.append(None)


class Discard(Output):
    """The switch's `Output` and `Link` for a connection nobody reads (memory and
    instruction counts): frames are dropped, and a close is a failure."""

    def write(self, frames: bytes | bytearray | memoryview) -> None:
        pass

    def close(self, code: int, reason: str) -> None:
        raise AssertionError(f"closed {code} {reason}")

    def ping(self) -> None:
        pass


class MemorySocket:
    """A stream's local socket, in memory: it reads whatever arrives at once."""

    def __init__(self) -> None:
        self.received = 0  # bytes written to it
        self.eof = False  # write_eof() was called
        self.closed = ""  # "" while open, else "close" or "abort"
        self.reading = True

    def write(self, data: bytes | memoryview) -> None:
        self.received += len(data)

    def write_eof(self) -> None:
        self.eof = True

    def can_write_eof(self) -> bool:
        return True

    def is_closing(self) -> bool:
        return bool(self.closed)

    def close(self) -> None:
        self.closed = self.closed or "close"

    def abort(self) -> None:
        self.closed = self.closed or "abort"

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


class EndStream:
    """A test's handle on one stream: the endpoint's real session `Stream` and
    its in-memory socket."""

    def __init__(self, stream: Stream, socket: MemorySocket) -> None:
        self.stream = stream
        self.socket = socket
        self.sid = stream.sid
        self.session_id = stream.session_id

    @property
    def state(self) -> StreamState:
        return self.stream.state

    @property
    def send(self) -> SendWindow:
        return self.stream.send_window

    @property
    def sent(self) -> int:
        """Data bytes sent."""
        return self.stream.bytes_out

    @property
    def received(self) -> int:
        """Data bytes that reached the socket."""
        return self.socket.received

    @property
    def response(self) -> ConnectResponse | None:
        return self.stream.response

    @property
    def error(self) -> str | None:
        """The TUNNEL_ERROR (or refusal) that ended it."""
        return self.stream.error or None

    @property
    def ended(self) -> bool:
        return self.stream.ended


class _EndpointLink(Link):
    """The session's link: one WebSocket message to the switch per write."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    def write(self, frames: bytes | bytearray | memoryview) -> None:
        self.endpoint.send(bytes(frames))

    def write_external(self, buf: bytearray, offset: int) -> None:
        self.endpoint.send(bytes(buf[offset:]))

    def disconnect(self, code: int, reason: str) -> None:
        self.endpoint.disconnect(code, reason)

    def probe(self) -> None:
        endpoint = self.endpoint
        if endpoint.outbox is not None:
            endpoint.outbox.append(None)  # the ping waits behind what the endpoint sent
        else:
            endpoint.wire.pong()


class Endpoint:
    """client_a (opens streams, sends upstream) or an agent (answers opens,
    sends downstream): a real `Session` whose link is the switch and whose
    sockets are in memory."""

    def __init__(
        self,
        pair: Pair,
        role: str,
        name: str,
        token: int,
        want: int,
        open_timeout: float,
        pool: str = DEFAULT_POOL,
        rules: bool = False,
    ) -> None:
        self.pair = pair
        self.role = role
        self.name = name
        self.want = want
        self.wire = Wire()
        self.wire.endpoint = self
        self.conn = Conn(role, self.wire, self.wire, token, name, pool, rules)
        self.session = Session(
            _EndpointLink(self),
            self,
            SessionStats(),
            side=CLIENT_SIDE if role == "client" else AGENT_SIDE,
            window=want,
            max_frame_size=pair.limits.max_message,
            open_timeout=open_timeout,
            pool=pool if role == "agent" else "",
        )
        self.streams: dict[int, EndStream] = {}
        self.ended: list[EndStream] = []
        self.reading = True  # False: stalled (reads nothing, answers no ping)
        self.answers = True  # agents: False never answers an open (but reads and pongs)
        self.opened: list[OpenStream] = []  # agents: every open that arrived
        self.refuse_with: int | None = None  # agents: answer opens with this status
        self.pongs = 0
        # A slow link towards the relay (`slow_link_out`): what the endpoint sent and
        # the relay has not read yet, None for a probe's ping; None: no such link.
        self.outbox: deque[bytes | None] | None = None
        self.errors: list[Exception] = []  # what this endpoint's session raised
        self.pushed: list[PushedRules] = []  # clients: every RULES the relay sent
        self.rules_refused: list[str] = []  # clients: why a RULES frame was refused

    @property
    def is_client(self) -> bool:
        return self.role == "client"

    @property
    def closed(self) -> tuple[int, str] | None:
        return self.wire.closed

    @property
    def hello(self) -> Hello | None:
        return self.session.hello

    @property
    def pool(self) -> CreditPool:
        return self.session.credit

    def disconnect(self, code: int, reason: str) -> None:
        """The endpoint closes its connection (the relay sees it go)."""
        if self.wire.closed is None:
            self.wire.close(code, reason)
            self.pair.switch.detach(self.conn, self.pair.now)
            self.session.connection_lost()

    # --- the session's events ---

    def on_hello(self, session: Session, hello: Hello) -> None:
        pass

    def on_hello_refused(self, session: Session, why: str) -> None:
        self.errors.append(ProtocolError(why))

    def on_goaway(self, session: Session, reason: str) -> None:
        pass

    def on_members(self, session: Session, members: Members) -> None:
        pass

    def on_rules(self, session: Session, pushed: PushedRules) -> None:
        self.pushed.append(pushed)

    def on_rules_refused(self, session: Session, why: str) -> None:
        self.rules_refused.append(why)

    def on_open(self, session: Session, stream: Stream, request: OpenStream) -> None:
        socket = MemorySocket()
        self.streams[stream.sid] = EndStream(stream, socket)
        self.opened.append(request)
        if not self.answers:
            return  # a rogue agent: the open stays unanswered
        if self.refuse_with is not None:
            stream.refuse(self.refuse_with, "refused")
            return
        stream.attach(socket)
        stream.accept(request.window, self.pair.now)

    def on_opened(self, session: Session, stream: Stream) -> None:
        pass

    def on_stream_end(self, session: Session, stream: Stream) -> None:
        handle = self.streams.pop(stream.sid, None)
        if handle is not None and handle.stream is stream:
            self.ended.append(handle)

    def on_internal_error(self, session: Session, stream: Stream, exc: Exception) -> None:
        self.errors.append(exc)

    # --- acting as the program would ---

    def send(self, frames: bytes) -> None:
        """Raw bytes, as one WebSocket message to the relay."""
        if self.outbox is not None:
            self.outbox.append(frames)
        elif self.wire.closed is None:
            self.pair.switch.receive(self.conn, memoryview(frames), self.pair.now)

    def slow_link_out(self) -> None:
        """From now on what this endpoint sends waits in `outbox` until
        `deliver` hands it to the relay (a slow link the test paces)."""
        if self.outbox is None:
            self.outbox = deque()

    def deliver(self, limit: int) -> int:
        """The relay reads the whole messages of `outbox` that fit in `limit`
        bytes, in order, and answers the pings among them; the bytes read."""
        outbox = self.outbox
        taken = 0
        while outbox:
            head = outbox[0]
            if head is not None and taken + len(head) > limit:
                break
            outbox.popleft()
            if head is None:
                self.wire.pong()
                continue
            taken += len(head)
            if self.wire.closed is None:
                self.pair.switch.receive(self.conn, memoryview(head), self.pair.now)
        return taken

    @property
    def unsent(self) -> int:
        """Bytes in `outbox`: what waits on this endpoint's slow link."""
        return sum(len(m) for m in self.outbox or () if m is not None)

    def open(self, host: str = "target.test", port: int = 443, pool: str = DEFAULT_POOL) -> int:
        """client_a: a CONNECT on the next stream id (window from the credit
        pool), for an agent of agent pool `pool`."""
        assert self.is_client
        socket = MemorySocket()
        session_id = f"{self.name}-{self.session.sid_cursor}"
        request = OpenStream(FrameType.CONNECT, session_id, host, port, pool=pool)
        # An open may cross the relay's GOAWAY on the wire: send it regardless.
        goaway, self.session.goaway = self.session.goaway, False
        try:
            stream = self.session.open(request, socket, self.pair.now)
        finally:
            self.session.goaway = goaway
        assert stream is not None, "no stream can open on this connection now"
        self.streams[stream.sid] = EndStream(stream, socket)
        return stream.sid

    def write(self, sid: int, n: int) -> int:
        """Send up to `n` data bytes on a stream, within its credit; how many went."""
        handle = self.streams.get(sid)
        if handle is None or handle.ended:
            return 0
        stream = handle.stream
        n = min(n, stream.send_window.available)
        before = stream.bytes_out
        if n:
            stream.send(bytes(n))  # as if the socket had read them
        return stream.bytes_out - before

    def fin(self, sid: int) -> None:
        """The socket reported EOF."""
        self.streams[sid].stream.eof()

    def abort(self, sid: int, reason: str = "aborted") -> None:
        self.streams[sid].stream.abort(reason)

    def read(self, limit: int | None = None) -> int:
        """Take what the relay queued (up to `limit` bytes) and act on it, as
        the program would; returns the bytes read."""
        if not self.reading:
            return 0
        wire = self.wire
        if wire.pings > self.pongs:
            self.pongs = wire.pings
            self.pair.switch.heard(self.conn, self.pair.now)
        taken = 0
        while wire.queue and (limit is None or taken < limit):
            message = wire.queue.popleft()
            if message is None:
                self.session.probe_answered(self.pair.now)
                continue
            wire.queued -= len(message)
            taken += len(message)
            try:
                self.session.receive(memoryview(message), self.pair.now)
            except ProtocolError as exc:  # the program closes the connection
                self.errors.append(exc)
        return taken

    def tick(self) -> None:
        self.session.tick(self.pair.now)


class Pair:
    """A switch, a clock and in-memory endpoints."""

    def __init__(
        self,
        limits: Limits | None = None,
        now: float = 1000.0,
        open_timeout: float = 0.0,
        instance: str = "relay-test",
    ) -> None:
        self.limits = limits or Limits()
        self.open_timeout = open_timeout  # the clients' sessions expire opens after it
        self.now = now
        self.switch = Switch(self.limits, instance)  # `instance`: the relay's --instance-id
        self.endpoints: list[Endpoint] = []

    def _join(
        self, role: str, token: int, want: int, pool: str = DEFAULT_POOL, rules: bool = False
    ) -> Endpoint:
        name = f"{role}-{len(self.endpoints)}"
        endpoint = Endpoint(self, role, name, token, want, self.open_timeout, pool, rules)
        self.endpoints.append(endpoint)
        self.switch.attach(endpoint.conn, self.now)
        endpoint.read()
        return endpoint

    def client(self, token: int = 0, want: int = DEFAULT_WINDOW, rules: bool = False) -> Endpoint:
        """A client_a; `rules`: its upgrade asked for RULES."""
        return self._join("client", token, want, rules=rules)

    def agent(
        self, token: int = 0, want: int = DEFAULT_WINDOW, pool: str = DEFAULT_POOL
    ) -> Endpoint:
        """An agent in agent pool `pool` (as its upgrade named it)."""
        return self._join("agent", token, want, pool)

    def wrote(self, endpoint: Endpoint) -> None:
        """The relay queued bytes for `endpoint`: past the budget, the adapter
        reports it (picows' pause_writing does, at the same mark)."""
        queued = endpoint.wire.queued
        if queued > self.limits.connection_buffer:
            self.switch.over_budget(endpoint.conn, queued, self.now)

    def run(self, rounds: int = 100) -> None:
        """Every reading endpoint reads until nothing is left to read."""
        for _ in range(rounds):
            if not sum(e.read() for e in self.endpoints):
                return

    def advance(self, seconds: float, step: float = 0.1) -> None:
        """Let time pass in ticks; endpoints that read answer pings meanwhile."""
        end = self.now + seconds
        while self.now < end - 1e-9:
            self.now = min(end, self.now + step)
            self.switch.tick(self.now)
            for endpoint in self.endpoints:
                endpoint.tick()
            self.run()

    def disconnect(self, endpoint: Endpoint) -> None:
        endpoint.disconnect(1006, "gone")
