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

from fastrelay.protocol.errors import ProtocolError, StreamError
from fastrelay.protocol.flow import CreditPool, RecvWindow, SendWindow
from fastrelay.protocol.frames import (
    HEADER_SIZE,
    FrameType,
    decode_window_increment,
    encode_frame,
    encode_window_update,
    iter_frames,
)
from fastrelay.protocol.messages import (
    DEFAULT_WINDOW,
    ConnectResponse,
    Hello,
    OpenStream,
    TunnelError,
)
from fastrelay.protocol.state import Event, State, StreamState
from fastrelay.protocol.switch import Conn, Limits, Switch

_DATA = int(FrameType.TUNNEL_DATA)
MAX_CHUNK = 256 * 1024  # largest TUNNEL_DATA payload an endpoint sends, as the programs do


class Wire:
    """What the relay writes to one connection, queued until the endpoint
    reads it: the switch's `Output` and `Link` for that connection."""

    def __init__(self) -> None:
        self.queue: deque[bytes] = deque()
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


class EndStream:
    """One stream at an in-memory endpoint."""

    def __init__(self, sid: int, session_id: str, initial: State, window: int) -> None:
        self.sid = sid
        self.session_id = session_id
        self.state = StreamState(initial)
        self.send = SendWindow(0)
        self.recv = RecvWindow(window)
        self.sent = 0  # data bytes sent
        self.received = 0  # data bytes received
        self.response: ConnectResponse | None = None
        self.error: str | None = None  # the TUNNEL_ERROR that ended it

    @property
    def ended(self) -> bool:
        return self.state.closed


class Endpoint:
    """client_a (opens streams, sends upstream) or an agent (answers opens,
    sends downstream), in memory."""

    def __init__(self, pair: Pair, role: str, name: str, token: int, want: int) -> None:
        self.pair = pair
        self.role = role
        self.name = name
        self.want = want
        self.wire = Wire()
        self.wire.endpoint = self
        self.conn = Conn(role, self.wire, self.wire, token, name)
        self.streams: dict[int, EndStream] = {}
        self.ended: list[EndStream] = []
        self.hello: Hello | None = None
        self.pool: CreditPool | None = None
        self.reading = True  # False: stalled (reads nothing, answers no ping)
        self.answers = True  # agents: False never answers an open (but reads and pongs)
        self.refuse_with: int | None = None  # agents: answer opens with this status
        self.pongs = 0
        self.next_sid = 0
        self.errors: list[Exception] = []  # what this endpoint's parser raised

    @property
    def is_client(self) -> bool:
        return self.role == "client"

    @property
    def closed(self) -> tuple[int, str] | None:
        return self.wire.closed

    # --- sending ---

    def send(self, frames: bytes) -> None:
        """Raw bytes, as one WebSocket message to the relay."""
        if self.wire.closed is None:
            self.pair.switch.route(self.conn, memoryview(frames), self.pair.now)

    def open(self, host: str = "target.test", port: int = 443) -> int:
        """client_a: a CONNECT on the next stream id (window from the pool)."""
        assert self.is_client and self.hello is not None and self.pool is not None
        window = self.pool.open()
        assert window, "the connection carries max_streams already"
        self.next_sid += 1
        sid = self.hello.stream_id_base + self.next_sid
        session = f"{self.name}-{sid}"
        self.streams[sid] = EndStream(sid, session, State.CONNECT_REQUEST, window)
        self.send(OpenStream(FrameType.CONNECT, session, host, port, window=window).encode(sid))
        return sid

    def write(self, sid: int, n: int) -> int:
        """Send up to `n` data bytes on a stream, within its credit; how many went."""
        stream = self.streams.get(sid)
        if stream is None or stream.ended:
            return 0
        n = min(n, stream.send.available)
        if n:
            stream.send.consume(n)
            stream.sent += n
            stream.state.apply(Event.DATA_UP if self.is_client else Event.DATA_DOWN)
        chunk = min(MAX_CHUNK, self.pair.limits.max_message - HEADER_SIZE)
        for start in range(0, n, chunk):  # one message per chunk, as the programs send
            self.send(encode_frame(_DATA, sid, bytes(min(chunk, n - start))))
        return n

    def fin(self, sid: int) -> None:
        stream = self.streams[sid]
        stream.state.apply(Event.FIN_UP if self.is_client else Event.FIN_DOWN)
        self.send(encode_frame(FrameType.FIN, sid))
        self._maybe_forget(stream)

    def abort(self, sid: int, reason: str = "aborted") -> None:
        stream = self.streams[sid]
        stream.state.apply(Event.ABORT)
        self.send(TunnelError(stream.session_id, reason).encode(sid))
        self._maybe_forget(stream)

    # --- receiving ---

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
            wire.queued -= len(message)
            taken += len(message)
            try:
                self._receive(memoryview(message))
            except (ProtocolError, StreamError) as exc:
                self.errors.append(exc)
        return taken

    def _receive(self, message: memoryview) -> None:
        for frame_type, _flags, sid, start, length in iter_frames(message):
            payload = message[start : start + length]
            if frame_type == FrameType.HELLO:
                self.hello = Hello.decode(payload)
                self.pool = CreditPool.for_relay(
                    self.hello.buffer_budget, self.hello.max_streams, self.want
                )
                continue
            if frame_type in (FrameType.GOAWAY, FrameType.MEMBERS):
                continue
            if frame_type in (FrameType.CONNECT, FrameType.REQUEST):
                self._on_open(sid, OpenStream.decode(FrameType(frame_type), payload))
                continue
            stream = self.streams.get(sid)
            if stream is None:
                continue
            if frame_type == _DATA:
                self._on_data(stream, length)
            elif frame_type == FrameType.CONNECT_RESPONSE:
                stream.response = ConnectResponse.decode(payload)
                if stream.response.ok:
                    stream.state.apply(Event.RESPONSE_OK)
                    stream.send.grant(stream.response.window)
                else:
                    stream.state.apply(Event.RESPONSE_FAIL)
                    self._maybe_forget(stream)
            elif frame_type == FrameType.WINDOW_UPDATE:
                stream.state.apply(Event.WINDOW_UP if self.is_client else Event.WINDOW_DOWN)
                stream.send.grant(decode_window_increment(payload))
            elif frame_type == FrameType.FIN:
                stream.state.apply(Event.FIN_DOWN if self.is_client else Event.FIN_UP)
                self._maybe_forget(stream)
            elif frame_type == FrameType.TUNNEL_ERROR:
                stream.error = TunnelError.decode(payload).error
                stream.state.apply(Event.ABORT)
                self._maybe_forget(stream)

    def _on_open(self, sid: int, request: OpenStream) -> None:
        if not self.answers:
            return
        assert self.pool is not None
        if self.refuse_with is not None:
            self.send(ConnectResponse(request.session_id, self.refuse_with, "refused").encode(sid))
            return
        window = self.pool.open()
        if not window:
            self.send(ConnectResponse(request.session_id, 503, "busy").encode(sid))
            return
        initial = State.CONNECT_REQUEST if request.kind == FrameType.CONNECT else State.REQUEST
        stream = EndStream(sid, request.session_id, initial, window)
        self.streams[sid] = stream
        stream.state.apply(Event.RESPONSE_OK)
        stream.send.grant(request.window)
        self.send(ConnectResponse(request.session_id, 200, window=window).encode(sid))

    def _on_data(self, stream: EndStream, n: int) -> None:
        stream.state.apply(Event.DATA_DOWN if self.is_client else Event.DATA_UP)
        stream.recv.received(n)
        stream.received += n
        increment = stream.recv.release(n, self.pool)  # read at once: credit goes back
        if increment and not stream.ended:
            self.send(encode_window_update(stream.sid, increment))

    def _maybe_forget(self, stream: EndStream) -> None:
        if stream.ended and self.streams.get(stream.sid) is stream:
            del self.streams[stream.sid]
            self.ended.append(stream)
            if self.pool is not None:
                self.pool.close(stream.recv.window)


class Pair:
    """A switch, a clock and in-memory endpoints."""

    def __init__(self, limits: Limits | None = None, now: float = 1000.0) -> None:
        self.limits = limits or Limits()
        self.now = now
        self.switch = Switch(self.limits, "relay-test")
        self.endpoints: list[Endpoint] = []

    def _join(self, role: str, token: int, want: int) -> Endpoint:
        name = f"{role}-{len(self.endpoints)}"
        endpoint = Endpoint(self, role, name, token, want)
        self.endpoints.append(endpoint)
        self.switch.attach(endpoint.conn, self.now)
        endpoint.read()
        return endpoint

    def client(self, token: int = 0, want: int = DEFAULT_WINDOW) -> Endpoint:
        return self._join("client", token, want)

    def agent(self, token: int = 0, want: int = DEFAULT_WINDOW) -> Endpoint:
        return self._join("agent", token, want)

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
            self.run()

    def disconnect(self, endpoint: Endpoint) -> None:
        endpoint.wire.close(1006, "gone")
        self.switch.detach(endpoint.conn, self.now)
