"""The seed's own wire format (the *seed dialect*), for the existing C# Client A.

The seed document describes a Client A that speaks JSON text messages to the
relay and, for tunnel bytes, its "proposal 2": a JSON ``TUNNEL_DATA`` header
message (``sessionId``, ``length``) followed by one binary WebSocket message
holding exactly those bytes. The relay accepts that dialect on ``/v1/seed``
and bridges every seed session to an agent over the normal binary protocol;
agents never see the difference. docs/PROTOCOL.md §13 documents it, with the
seed's own JSON examples as test vectors.

This module is pure: decoded messages and mux frames in, calls on a `Sink`
out. `SeedConnection` is one seed WebSocket as the relay's switch sees it: a
client_a connection whose stream frames it writes (`Sink.to_switch`) and
whose frames from the switch it turns into seed messages (`from_switch`).
Each session's state goes through the one transition table (state.py): a
CONNECT starts it in CONNECT_REQUEST, CONNECT_RESPONSE 200 makes it
TUNNELING, and a failure, a TUNNEL_ERROR or both ends' close make it CLOSED,
when it is forgotten.

Flow control. The seed client cannot return credit, so the bridge does it
for it: each session grants the agent a window (`CreditPool`, within the
connection's budget) and returns credit only once the bytes were handed to
the seed WebSocket while its write buffer is below the low-water mark (the
adapter calls `drained` when it drops back). Upstream, the bridge spends the
agent's credit; bytes beyond it are held, at most `hold_limit` per session
and `conn_hold_limit` per connection, and past either the adapter stops
reading the seed WebSocket (`Sink.pause_reading`) until credit comes back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from fastrelay.protocol.errors import (
    CLOSE_PROTOCOL_ERROR,
    BudgetExceeded,
    ControlMessageError,
    ProtocolError,
    StreamError,
)
from fastrelay.protocol.flow import CreditPool, RecvWindow, SendWindow
from fastrelay.protocol.frames import (
    FLAG_BLOCKED,
    HEADER,
    HEADER_SIZE,
    T_CONNECT_RESPONSE,
    T_FIN,
    T_TUNNEL_DATA,
    T_TUNNEL_ERROR,
    T_WINDOW_UPDATE,
    FrameType,
    decode_window_increment,
    encode_frame,
    encode_window_update,
    read_frame,
)
from fastrelay.protocol.messages import ConnectResponse, OpenStream, TunnelError, split_url
from fastrelay.protocol.state import ACCEPTS_DATA_UP, Event, State, StreamState
from fastrelay.protocol.status import CONNECTION_ESTABLISHED, Failure, failure_of

# RFC 6455 opcodes of the data frames a seed client sends.
OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2

CONNECT = "CONNECT"
CONNECT_RESPONSE = "CONNECT_RESPONSE"
TUNNEL_DATA = "TUNNEL_DATA"
TUNNEL_ERROR = "TUNNEL_ERROR"
TUNNEL_CLOSE = "TUNNEL_CLOSE"
# What Client A may send; CONNECT_RESPONSE is the relay's alone.
CLIENT_TYPES = (CONNECT, TUNNEL_DATA, TUNNEL_CLOSE, TUNNEL_ERROR)

MAX_TEXT = 64 * 1024  # one JSON message, reassembled from its frames if need be
MAX_SESSION_ID = 256  # characters; the seed's are GUIDs (36)

# The seed's error messages (its "Errors" section), with fastrelay's detail after them.
TARGET_FAILED = "Connection to target server failed"  # a CONNECT that failed at the target
CONNECTION_FAILED = "Connection failed"  # a CONNECT the relay could not carry
CONNECTION_LOST = "Connection lost"  # TUNNEL_ERROR: a tunnel that broke
CONNECTION_TIMEOUT = "connection timeout"
_AT_TARGET = frozenset(
    {
        Failure.DENIED,
        Failure.DNS,
        Failure.REFUSED,
        Failure.UNREACHABLE,
        Failure.DIAL_ERROR,
        Failure.DIAL_TIMEOUT,
        Failure.OPEN_TIMEOUT,
    }
)

_pack_header = HEADER.pack_into


class SeedError(ProtocolError):
    """A seed message that breaks the dialect so that the connection cannot go on
    (unparsable, unknown type, a broken header/binary pairing): close 1002."""

    close_code = CLOSE_PROTOCOL_ERROR
    kind = "seed_malformed"


class SeedRefusal(Exception):
    """A CONNECT that names its session but cannot be carried: answered with
    CONNECT_RESPONSE `status` and `error`; the connection goes on."""

    def __init__(self, session_id: str, error: str, failure: Failure = Failure.BAD_REQUEST) -> None:
        super().__init__(error)
        self.session_id = session_id
        self.error = error
        self.failure = failure


# --- messages ---


@dataclass(frozen=True, slots=True)
class SeedConnect:
    session_id: str
    method: str
    url: str
    host: str
    port: int
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SeedDataHeader:
    session_id: str
    length: int


@dataclass(frozen=True, slots=True)
class SeedClose:
    session_id: str


@dataclass(frozen=True, slots=True)
class SeedAbort:
    session_id: str
    error: str


SeedMessage = SeedConnect | SeedDataHeader | SeedClose | SeedAbort


def _dumps(body: dict[str, Any]) -> bytes:
    return orjson.dumps(body)


def encode_connect(
    session_id: str, url: str, headers: dict[str, str] | None = None, method: str = "CONNECT"
) -> bytes:
    body = {"type": CONNECT, "sessionId": session_id, "method": method, "url": url}
    body["headers"] = headers or {}  # type: ignore[assignment]
    return _dumps(body)


def encode_connect_ok(session_id: str) -> bytes:
    return _dumps(
        {
            "type": CONNECT_RESPONSE,
            "sessionId": session_id,
            "statusCode": 200,
            "statusDescription": CONNECTION_ESTABLISHED,
        }
    )


def encode_connect_failed(session_id: str, status: int, error: str) -> bytes:
    return _dumps(
        {"type": CONNECT_RESPONSE, "sessionId": session_id, "statusCode": status, "error": error}
    )


def encode_data_header(session_id: str, length: int) -> bytes:
    return b'{"type":"TUNNEL_DATA","sessionId":%s,"length":%d}' % (
        orjson.dumps(session_id),
        length,
    )


def encode_tunnel_error(session_id: str, error: str) -> bytes:
    return _dumps({"type": TUNNEL_ERROR, "sessionId": session_id, "error": error})


def encode_tunnel_close(session_id: str) -> bytes:
    return _dumps({"type": TUNNEL_CLOSE, "sessionId": session_id})


def _string(doc: dict[str, Any], kind: str, name: str, session_id: str | None) -> str:
    value = doc.get(name)
    if isinstance(value, str):
        return value
    if value is None:
        problem = f"{kind} is missing {name!r}"
    else:
        problem = f"{kind} {name!r} must be a string"
    if session_id is None:
        raise SeedError(problem)
    raise SeedRefusal(session_id, problem)


def decode_text(payload: bytes | bytearray | memoryview, max_length: int) -> SeedMessage:
    """One text message from Client A. SeedError when the connection cannot
    go on; SeedRefusal for a CONNECT that names its session but is wrong."""
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise SeedError(f"text message is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise SeedError("text message must be a JSON object")
    kind = doc.get("type")
    if not isinstance(kind, str):
        raise SeedError("message has no string 'type'")
    if kind not in CLIENT_TYPES:
        if kind == CONNECT_RESPONSE:
            raise SeedError("CONNECT_RESPONSE is the relay's answer; Client A does not send it")
        raise SeedError(f"unknown message type {kind[:40]!r}")
    session_id = _string(doc, kind, "sessionId", None)
    if not session_id or len(session_id) > MAX_SESSION_ID:
        raise SeedError(f"{kind} 'sessionId' must be 1..{MAX_SESSION_ID} characters")
    if kind == TUNNEL_DATA:
        length = doc.get("length")
        if not isinstance(length, int) or isinstance(length, bool):
            raise SeedError("TUNNEL_DATA 'length' must be an integer")
        if not 0 <= length <= max_length:
            raise SeedError(f"TUNNEL_DATA length {length} is outside 0..{max_length}")
        return SeedDataHeader(session_id, length)
    if kind == CONNECT:
        method = _string(doc, kind, "method", session_id)
        if method != "CONNECT":
            raise SeedRefusal(
                session_id, f"method {method[:40]!r}: the seed dialect carries CONNECT only"
            )
        url = _string(doc, kind, "url", session_id)
        headers = doc.get("headers", {})
        if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            raise SeedRefusal(session_id, "CONNECT 'headers' must map strings to strings")
        try:
            host, port = split_url(url)
        except ControlMessageError as exc:
            raise SeedRefusal(session_id, str(exc)) from None
        return SeedConnect(session_id, method, url, host, port, headers)
    if kind == TUNNEL_ERROR:
        error = doc.get("error", "")
        if not isinstance(error, str):
            raise SeedError("TUNNEL_ERROR 'error' must be a string")
        return SeedAbort(session_id, error)
    return SeedClose(session_id)


def failure_text(response: ConnectResponse) -> str:
    """The seed's `error` for a CONNECT_RESPONSE that is not 200."""
    failure = failure_of(response.status_code, response.reason)
    if failure in (Failure.DIAL_TIMEOUT, Failure.OPEN_TIMEOUT):
        return f"{TARGET_FAILED}: {CONNECTION_TIMEOUT}"
    detail = response.error or failure.reason
    return f"{TARGET_FAILED if failure in _AT_TARGET else CONNECTION_FAILED}: {detail}"


# --- the per-connection machine ---


class Sink(Protocol):
    """What a `SeedConnection` asks its adapter to do."""

    def to_switch(self, frames: bytes | bytearray) -> None:
        """Mux frames from this client to the relay's switch (never re-entrantly)."""

    def to_client(self, text: bytes) -> None:
        """One JSON text message to Client A."""

    def to_client_data(self, header: bytes, data: memoryview) -> None:
        """A TUNNEL_DATA header message, then the binary message with `data`."""

    def backed_up(self) -> bool:
        """Whether the seed WebSocket's write buffer is above its low-water mark."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class SeedStats:
    """Plain counters, read at scrape time."""

    __slots__ = ("read_pauses", "refused", "sessions", "unknown_session")

    def __init__(self) -> None:
        self.sessions = 0  # CONNECTs handed to the switch
        self.refused = 0  # CONNECTs answered by the bridge itself (400, 503)
        self.unknown_session = 0  # TUNNEL_DATA / TUNNEL_CLOSE for no open session
        self.read_pauses = 0  # times the bridge stopped reading a seed client


class SeedSession:
    __slots__ = (
        "fin_pending", "held", "held_bytes", "owed", "recv", "send", "session_id", "sid", "state",
    )  # fmt: skip

    def __init__(self, session_id: str, sid: int, window: int) -> None:
        self.session_id = session_id
        self.sid = sid
        self.state = StreamState(State.CONNECT_REQUEST)
        self.recv = RecvWindow(window)  # downstream: what the agent may send
        self.send = SendWindow(0)  # upstream: the agent's credit (from the 200)
        self.held: list[bytes] = []  # upstream bytes beyond the agent's credit
        self.held_bytes = 0
        self.owed = 0  # delivered downstream while backed up, credit not yet returned
        self.fin_pending = False  # Client A closed with bytes still held


class SeedConnection:
    """One seed WebSocket: seed messages in from Client A, mux frames in from
    the switch; calls on `sink` out."""

    def __init__(
        self,
        sink: Sink,
        *,
        window: int,
        budget: int,
        max_sessions: int,
        max_data: int,
        stats: SeedStats | None = None,
    ) -> None:
        self.sink = sink
        self.max_data = max_data  # largest TUNNEL_DATA length (the WebSocket message limit)
        self.max_frame = max(max_data, 2 * HEADER_SIZE)  # largest message to the switch
        self.pool = CreditPool.for_relay(budget, max_sessions, window)
        self.budget = budget  # held bytes past this close the connection (1008)
        self.hold_limit = window  # upstream bytes held per session before reads pause
        self.conn_hold_limit = max(window, budget // 4)
        self.stats = stats if stats is not None else SeedStats()
        self.id_base = 0  # the stream-id range the switch gave this connection
        self.next_id = 0
        self.sessions: dict[str, SeedSession] = {}
        self.by_sid: dict[int, SeedSession] = {}
        self.held_total = 0
        self.paused = False
        # The message being received.
        self.text: bytearray | None = None  # a fragmented text message so far
        self.data_session: SeedSession | None = None
        self.data_id = ""  # the session id of the last TUNNEL_DATA header
        self.data_length = -1  # -1: no header waiting for its binary message
        self.data_left = 0
        self.data_started = False

    # --- from Client A ---

    def frame(self, opcode: int, payload: memoryview, fin: bool) -> None:
        """One WebSocket data frame (text, binary or continuation) from Client A."""
        if opcode == OP_BINARY or (opcode == OP_CONTINUATION and self.data_started):
            self._binary(payload, fin, opcode == OP_CONTINUATION)
        elif opcode == OP_TEXT or (opcode == OP_CONTINUATION and self.text is not None):
            if self.data_started:
                raise SeedError("a text message inside a fragmented binary message")
            if opcode == OP_TEXT and self.text is not None:
                raise SeedError("a new text message before the previous one ended")
            if opcode == OP_TEXT and fin:
                self._text(payload)
                return
            text = self.text if self.text is not None else bytearray()
            text += payload
            if len(text) > MAX_TEXT:
                raise SeedError(f"text message over {MAX_TEXT} bytes")
            if fin:
                self.text = None
                self._text(memoryview(text))
            else:
                self.text = text
        elif opcode == OP_CONTINUATION:
            raise SeedError("continuation frame with no message in progress")
        else:
            raise SeedError(f"unexpected WebSocket opcode {opcode:#x}")

    def _text(self, payload: memoryview) -> None:
        if len(payload) > MAX_TEXT:
            raise SeedError(f"text message over {MAX_TEXT} bytes")
        if self.data_length >= 0:
            raise SeedError(
                f"TUNNEL_DATA header for session {self.data_id!r} must be followed by "
                "its binary message, not a text message"
            )
        try:
            message = decode_text(payload, self.max_data)
        except SeedRefusal as refusal:
            self._refuse(refusal.session_id, refusal.failure, refusal.error)
            return
        if isinstance(message, SeedDataHeader):
            self.data_id = message.session_id
            self.data_session = self.sessions.get(message.session_id)
            self.data_length = self.data_left = message.length
        elif isinstance(message, SeedConnect):
            self._connect(message)
        elif isinstance(message, SeedClose):
            self._close(message.session_id)
        else:
            self._abort_from_client(message)

    def _binary(self, payload: memoryview, fin: bool, continuation: bool) -> None:
        if not continuation:
            if self.data_started:
                raise SeedError("a new binary message before the previous one ended")
            if self.data_length < 0:
                raise SeedError("binary message without a TUNNEL_DATA header before it")
            if self.text is not None:
                raise SeedError("a binary message inside a fragmented text message")
        n = len(payload)
        if n > self.data_left:
            raise SeedError(
                f"binary message longer than the {self.data_length} bytes "
                f"its TUNNEL_DATA header announced"
            )
        self.data_left -= n
        if fin and self.data_left:
            raise SeedError(
                f"binary message of {self.data_length - self.data_left} bytes; "
                f"its TUNNEL_DATA header announced {self.data_length}"
            )
        session = self.data_session
        first = not continuation
        if fin:
            self.data_length = -1
            self.data_started = False
            self.data_session = None
        else:
            self.data_started = True
        if session is None:
            if first:  # once per message
                self.stats.unknown_session += 1
                self.sink.to_client(encode_tunnel_error(self.data_id, "unknown session"))
            return
        if session.state.state not in ACCEPTS_DATA_UP or session.fin_pending:
            where = (
                "after TUNNEL_CLOSE"
                if session.fin_pending
                else f"in state {session.state.state.value}"
            )
            self._abort(session, f"TUNNEL_DATA is not allowed {where}")
            return
        if n:
            self._up(session, payload)

    def _connect(self, message: SeedConnect) -> None:
        session_id = message.session_id
        if session_id in self.sessions:
            error = f"sessionId {session_id!r} is already open"
            self._refuse(session_id, Failure.BAD_REQUEST, error)
            return
        window = self.pool.open()
        if not window:
            self._refuse(
                session_id,
                Failure.STREAM_LIMIT,
                f"too many sessions on this connection (limit {self.pool.max_streams})",
            )
            return
        sid = self._new_sid()
        session = SeedSession(session_id, sid, window)
        self.sessions[session_id] = session
        self.by_sid[sid] = session
        self.stats.sessions += 1
        request = OpenStream(
            FrameType.CONNECT,
            session_id,
            message.host,
            message.port,
            method=message.method,
            url=message.url,
            headers=message.headers,
            window=window,
        )
        self.sink.to_switch(request.encode(sid))

    def _new_sid(self) -> int:
        # Cycle through the range, skipping ids still open; the range holds 65,536
        # ids and a connection has at most pool.max_streams (< 65,536) open.
        for _ in range(1 << 16):
            self.next_id = (self.next_id + 1) & 0xFFFF
            sid = self.id_base + self.next_id
            if sid and sid not in self.by_sid:
                return sid
        raise AssertionError("no free stream id")  # pragma: no cover

    def _refuse(self, session_id: str, failure: Failure, error: str) -> None:
        self.stats.refused += 1
        self.sink.to_client(encode_connect_failed(session_id, failure.status, error))

    def _close(self, session_id: str) -> None:
        session = self.sessions.get(session_id)
        if session is None:
            # A close crossing the relay's own close or abort is normal: count it only.
            self.stats.unknown_session += 1
            return
        if session.held:
            session.fin_pending = True
            return
        self._fin_up(session)

    def _fin_up(self, session: SeedSession) -> None:
        try:
            session.state.apply(Event.FIN_UP)
        except StreamError as exc:
            self._abort(session, str(exc))
            return
        self.sink.to_switch(encode_frame(FrameType.FIN, session.sid))
        if session.state.closed:
            self._forget(session)

    def _abort_from_client(self, message: SeedAbort) -> None:
        session = self.sessions.get(message.session_id)
        if session is None:
            return  # an abort crossing the relay's own: nothing to answer
        error = message.error or "aborted by Client A"
        self.sink.to_switch(TunnelError(session.session_id, error[:200]).encode(session.sid))
        session.state.apply(Event.ABORT)
        self._forget(session)

    def _abort(self, session: SeedSession, error: str) -> None:
        """This session broke the rules: TUNNEL_ERROR both ways, the others go on."""
        self.sink.to_client(encode_tunnel_error(session.session_id, error))
        self.sink.to_switch(TunnelError(session.session_id, error).encode(session.sid))
        session.state.apply(Event.ABORT)
        self._forget(session)

    def _up(self, session: SeedSession, payload: memoryview) -> None:
        """Client A's bytes towards the agent, within the agent's credit."""
        n = len(payload)
        if not session.held:
            room = session.send.available
            if room >= n:
                session.send.consume(n)
                self._send_data(session.sid, payload)
                return
            if room:
                session.send.consume(room)
                self._send_data(session.sid, payload[:room])
                payload = payload[room:]
        held = bytes(payload)  # the read buffer is reused: keep a copy
        session.held.append(held)
        session.held_bytes += len(held)
        self.held_total += len(held)
        if self.held_total > self.budget:
            # Reading paused long before this: picows still delivers what its last read
            # buffered (bounded by the socket's receive buffer, a few MiB), and no more.
            raise BudgetExceeded(
                f"{self.held_total} bytes held for this seed connection beyond the agents' "
                f"credit, over the relay's budget of {self.budget}"
            )
        if not self.paused and (
            session.held_bytes >= self.hold_limit or self.held_total >= self.conn_hold_limit
        ):
            self.paused = True
            self.stats.read_pauses += 1
            self.sink.pause_reading()

    def _send_data(self, sid: int, payload: memoryview) -> None:
        """TUNNEL_DATA frames, each within the switch's message limit."""
        chunk = self.max_frame - HEADER_SIZE
        for offset in range(0, len(payload), chunk):
            self.sink.to_switch(_data_frame(sid, payload[offset : offset + chunk]))

    def _flush_held(self, session: SeedSession) -> None:
        send = session.send
        while session.held and send.available:
            chunk = session.held[0]
            n = min(len(chunk), send.available)
            send.consume(n)
            self._send_data(session.sid, memoryview(chunk)[:n])
            if n == len(chunk):
                session.held.pop(0)
            else:
                session.held[0] = chunk[n:]
            session.held_bytes -= n
            self.held_total -= n
        if not session.held and session.fin_pending:
            session.fin_pending = False
            self._fin_up(session)
        self._maybe_resume()

    def _maybe_resume(self) -> None:
        if not self.paused or self.held_total >= self.conn_hold_limit:
            return
        if any(s.held_bytes >= self.hold_limit for s in self.sessions.values()):
            return
        self.paused = False
        self.sink.resume_reading()

    def _forget(self, session: SeedSession) -> None:
        """CLOSED: release the session's credit and held bytes and forget it."""
        if self.by_sid.pop(session.sid, None) is None:
            return
        del self.sessions[session.session_id]
        self.pool.close(session.recv.window)
        self.held_total -= session.held_bytes
        session.held.clear()
        session.held_bytes = 0
        if self.data_session is session:
            self.data_session = None
        self._maybe_resume()

    # --- from the switch ---

    def from_switch(self, frames: memoryview) -> None:
        """Mux frames the switch routed to this connection (each write whole)."""
        offset, total = 0, len(frames)
        while offset < total:
            frame_type, flags, sid, start, end = read_frame(frames, offset)
            offset = end
            session = self.by_sid.get(sid) if sid else None
            if session is None:
                continue  # HELLO, GOAWAY, or a stream already forgotten
            if frame_type == T_TUNNEL_DATA:
                self._down(session, frames[start:end], flags)
            elif frame_type == T_WINDOW_UPDATE:
                if session.state.state is not State.CLOSED:
                    session.send.grant(decode_window_increment(frames[start:end]))
                    if session.held:
                        self._flush_held(session)
            elif frame_type == T_CONNECT_RESPONSE:
                self._answered(session, ConnectResponse.decode(frames[start:end]))
            elif frame_type == T_FIN:
                session.state.apply(Event.FIN_DOWN)
                self.sink.to_client(encode_tunnel_close(session.session_id))
                if session.state.closed:
                    self._forget(session)
            elif frame_type == T_TUNNEL_ERROR:
                error = TunnelError.decode(frames[start:end]).error
                if session.state.opening:
                    text = encode_connect_failed(
                        session.session_id, Failure.RELAY_LOST.status, f"{TARGET_FAILED}: {error}"
                    )
                else:
                    text = encode_tunnel_error(session.session_id, f"{CONNECTION_LOST}: {error}")
                self.sink.to_client(text)
                session.state.apply(Event.ABORT)
                self._forget(session)

    def _answered(self, session: SeedSession, response: ConnectResponse) -> None:
        if response.ok:
            session.state.apply(Event.RESPONSE_OK)
            session.send.grant(response.window)
            self.sink.to_client(encode_connect_ok(session.session_id))
            return
        session.state.apply(Event.RESPONSE_FAIL)
        self.sink.to_client(
            encode_connect_failed(session.session_id, response.status_code, failure_text(response))
        )
        self._forget(session)

    def _down(self, session: SeedSession, data: memoryview, flags: int) -> None:
        n = len(data)
        # The switch forwarded it within the credit granted, in a state that carries it.
        session.recv.received(n)
        session.state.apply(Event.DATA_DOWN)
        if n:
            self.sink.to_client_data(encode_data_header(session.session_id, n), data)
        sink = self.sink
        if sink.backed_up():
            session.owed += n
            return
        if flags & FLAG_BLOCKED:
            session.recv.grow(self.pool)
        increment = session.recv.release(n, self.pool, now=bool(flags & FLAG_BLOCKED))
        if increment:
            sink.to_switch(encode_window_update(session.sid, increment))

    def drained(self) -> None:
        """The seed WebSocket's write buffer fell below its low-water mark:
        return the credit held back while it was above."""
        sink = self.sink
        for session in self.sessions.values():
            if session.owed and not session.state.closed:
                owed, session.owed = session.owed, 0
                increment = session.recv.release(owed, self.pool, now=True)
                if increment:
                    sink.to_switch(encode_window_update(session.sid, increment))

    @property
    def open_sessions(self) -> int:
        return len(self.sessions)


def _data_frame(sid: int, payload: memoryview) -> bytearray:
    """A TUNNEL_DATA mux frame: the one copy of Client A's bytes, into the frame."""
    n = len(payload)
    frame = bytearray(HEADER_SIZE + n)
    _pack_header(frame, 0, T_TUNNEL_DATA, 0, sid, n)
    frame[HEADER_SIZE:] = payload
    return frame
