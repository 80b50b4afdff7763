"""The endpoint's decisions as pure code: one relay connection at client_a or the agent.

A `Session` is one WebSocket to a relay, seen from an endpoint: it reads the
relay's messages (HELLO, GOAWAY, MEMBERS, opens, answers, data, credit, FIN,
TUNNEL_ERROR), keeps the stream table and each stream's state (only through
`state.next_state`, the one table), credit windows (from a `CreditPool`
within the relay's budget), half-close bookkeeping and open expiry, and says
what happens through three narrow interfaces:

* `Link`: whole mux frames out to the relay, and closing the connection;
* `Socket`: one stream's local TCP side (an asyncio transport fits as is);
* `SessionEvents`: what the program decides (client_a answers the browser,
  the agent dials the target).

No sockets, no asyncio, no clock: the caller passes `now`. The picows and
uvloop adapters (fastrelay/io/carrier.py, fastrelay/io/tunnel.py) carry the
bytes; `fastrelay.protocol.pair` joins sessions to the relay's `Switch` in
memory, so a protocol property is a millisecond test.

How a stream ends is recorded once, in `Stream.end` (see `End`). A stream
that ends before its open succeeded leaves its socket alone: the program
answers it (a 502 to the browser, a retry on another relay). After the open,
a clean end (both FINs) closes the socket and any other end aborts it.
"""

from __future__ import annotations

import enum
from collections import Counter, deque
from collections.abc import Callable
from typing import Protocol

from fastrelay.protocol.errors import (
    CLOSE_GOING_AWAY,
    CLOSE_POLICY_VIOLATION,
    ControlMessageError,
    StreamError,
)
from fastrelay.protocol.flow import (
    QUEUE_HIGH,
    QUEUE_LOW,
    CreditPool,
    PathDelay,
    RecvWindow,
    SendWindow,
)
from fastrelay.protocol.frames import (
    FLAG_BLOCKED,
    FRAME_TYPES,
    HEADER,
    HEADER_SIZE,
    T_CONNECT,
    T_CONNECT_RESPONSE,
    T_FIN,
    T_GOAWAY,
    T_HELLO,
    T_MEMBERS,
    T_PROBE,
    T_REQUEST,
    T_RULES,
    T_TUNNEL_DATA,
    T_TUNNEL_ERROR,
    T_WINDOW_UPDATE,
    decode_probe_answer,
    decode_window_increment,
    encode_frame,
    encode_probe,
    encode_window_update,
    read_frame,
    write_header,
)
from fastrelay.protocol.messages import (
    DEFAULT_POOL,
    ConnectResponse,
    GoAway,
    Hello,
    Members,
    OpenStream,
    TunnelError,
)
from fastrelay.protocol.output import Output
from fastrelay.protocol.rules import PushedRules
from fastrelay.protocol.state import (
    ACCEPTS_DATA_DOWN,
    ACCEPTS_DATA_UP,
    Event,
    State,
    StreamState,
)

MAX_CHUNK = 256 * 1024  # the largest TUNNEL_DATA payload an endpoint sends in one frame
# A message from the relay this long is bulk data arriving: time the path
# (at most every PROBE_INTERVAL), as for a sender out of credit.
BULK_MESSAGE = 64 * 1024
_pack = HEADER.pack


class Paused(enum.IntFlag):
    """Why a stream's socket is not being read (`Stream.paused`); reading
    resumes when no reason is left."""

    CREDIT = 1  # no send credit left
    LINK = 2  # the relay connection's write buffer is over its high-water mark
    OPENING = 4  # the stream is not open yet


# Plain ints on the data path (IntFlag operations cost a method call each).
PAUSED_CREDIT = int(Paused.CREDIT)
PAUSED_LINK = int(Paused.LINK)
PAUSED_OPENING = int(Paused.OPENING)


class End(enum.Enum):
    """How a stream ended (`Stream.end`)."""

    __hash__ = object.__hash__

    FINISHED = "finished"  # FIN both ways
    REFUSED = "refused"  # the open was answered with a failure (`Stream.response`)
    EXPIRED = "expired"  # no answer to the open within the session's open timeout
    REMOTE_ERROR = "remote_error"  # TUNNEL_ERROR from the relay's side (`Stream.error`)
    ABORTED = "aborted"  # this side gave up (`Stream.error`): a lost socket, a bad frame
    LOST = "lost"  # the relay connection under it ended


# Enum members bound to module names for the functions below. On Python 3.11 each
# `Enum.MEMBER` inside a function goes through EnumType.__getattr__'s slot hook,
# ~850 instructions compiled (3.12 dropped the hook), and client_a made ~30 such
# look-ups per open; a module global is a dict look-up.
_S_REQUEST = State.REQUEST
_S_CONNECT_REQUEST = State.CONNECT_REQUEST
_E_RESPONSE_OK = Event.RESPONSE_OK
_E_RESPONSE_FAIL = Event.RESPONSE_FAIL
_E_ABORT = Event.ABORT
_E_TIMEOUT = Event.TIMEOUT
_END_FINISHED = End.FINISHED
_END_REFUSED = End.REFUSED
_END_EXPIRED = End.EXPIRED
_END_REMOTE_ERROR = End.REMOTE_ERROR
_END_ABORTED = End.ABORTED
_END_LOST = End.LOST


class Link(Output):
    """The relay connection: complete mux frames out (`Output`), and its close.
    The session writes to `Session.out`, which starts as the link; an adapter
    points it straight at its writer (fastrelay.io.mux.MuxWriter) while the
    connection is up."""

    __slots__ = ()

    def disconnect(self, code: int, reason: str) -> None:
        """Close the connection with this WebSocket close code."""
        raise NotImplementedError

    def probe(self) -> None:
        """Send a timed probe to a relay that does not answer PROBE frames (a
        WebSocket ping it answers behind the data it queued here); its answer
        is `Session.probe_answered`."""
        raise NotImplementedError


class Socket(Protocol):
    """One stream's local TCP side."""

    def write(self, data: bytes | memoryview) -> None: ...
    def write_eof(self) -> None:
        """Half-close; raises OSError when the connection is gone already."""

    def can_write_eof(self) -> bool: ...
    def is_closing(self) -> bool: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


class SessionEvents(Protocol):
    """What the program decides. Every call is made once per event."""

    def on_hello(self, session: Session, hello: Hello) -> None: ...

    def on_hello_refused(self, session: Session, why: str) -> None:
        """A relay this program cannot work with; the session closes the link."""

    def on_goaway(self, session: Session, reason: str) -> None: ...
    def on_members(self, session: Session, members: Members) -> None: ...

    def on_rules(self, session: Session, pushed: PushedRules) -> None:
        """The relay pushed rules (a well-formed RULES frame)."""

    def on_rules_refused(self, session: Session, why: str) -> None:
        """A RULES frame that could not be used; the connection stays up."""

    def on_open(self, session: Session, stream: Stream, request: OpenStream) -> None:
        """(agent) An open arrived and has a stream: dial, then `stream.accept`
        or `stream.refuse`."""

    def on_opened(self, session: Session, stream: Stream) -> None:
        """(client_a) The agent answered 200: data flows."""

    def on_stream_end(self, session: Session, stream: Stream) -> None:
        """The stream left the table; `stream.end` says how."""

    def on_internal_error(self, session: Session, stream: Stream, exc: Exception) -> None:
        """A bug in the handling of one stream (it is aborted)."""


class SessionStats:
    """Plain counters, shared by every session of a program; exported at scrape time."""

    def __init__(self) -> None:
        self.dropped_unknown_stream = 0
        self.flow_control_stalls = 0
        self.backpressure_pauses = 0
        self.protocol_errors: Counter[str] = Counter()
        self.window_growths = 0  # FLAG_BLOCKED from a sender this end kept up with
        self.window_backoffs = 0  # the path's round trip rose: windows were cut
        self.send_backoffs = 0  # ... and what this end's streams may have unacknowledged
        # Bytes of streams that ended; live streams are summed at scrape time.
        self.ended_bytes_up = 0
        self.ended_bytes_down = 0

    def path_measured(self, queue_out: float, queue_in: float, stamped: bool) -> None:
        """A probe's answer measured this much queueing to the relay and back
        (`stamped`: apart; else the round trip's, in both). For the adapter's
        histograms; plain counters here."""


class Side:
    """The events an endpoint sends and receives, by its place in the tunnel."""

    def __init__(self, upstream_sender: bool) -> None:
        up = self.upstream_sender = upstream_sender
        self.fin_out = Event.FIN_UP if up else Event.FIN_DOWN
        self.fin_in = Event.FIN_DOWN if up else Event.FIN_UP
        self.window_in = Event.WINDOW_UP if up else Event.WINDOW_DOWN
        self.accepts_in = ACCEPTS_DATA_DOWN if up else ACCEPTS_DATA_UP
        self.accepts_out = ACCEPTS_DATA_UP if up else ACCEPTS_DATA_DOWN


CLIENT_SIDE = Side(upstream_sender=True)
AGENT_SIDE = Side(upstream_sender=False)


class Stream:
    """One stream at an endpoint: its state, credit both ways, and its socket."""

    __slots__ = (
        "accepts_in",
        "accepts_out",
        "backlog",
        "bytes_in",
        "bytes_out",
        "deadline",
        "end",
        "eof_pending",
        "error",
        "one_exchange",
        "opened",
        "opened_at",
        "owner",
        "paused",
        "read_eof",
        "recv_window",
        "response",
        "send_window",
        "session",
        "session_id",
        "sid",
        "side",
        "socket",
        "socket_write_paused",
        "started_at",
        "state",
        "undrained",
    )

    def __init__(
        self,
        session: Session,
        sid: int,
        session_id: str,
        initial: State,
        recv_window: int,
        now: float,
    ) -> None:
        side = session.side
        self.session = session
        self.sid = sid
        self.session_id = session_id
        self.side = side
        self.accepts_in = side.accepts_in
        self.accepts_out = side.accepts_out
        self.state = StreamState(initial)
        self.send_window = SendWindow(0)  # granted by the peer's open or CONNECT_RESPONSE
        self.recv_window = RecvWindow(recv_window)
        self.socket: Socket | None = None
        self.paused = PAUSED_OPENING  # Paused bits: why the socket is not read
        self.backlog: memoryview | None = None  # read from the socket, waiting for credit
        self.eof_pending = False  # the socket's EOF, behind the backlog
        # The socket reported EOF: never pause or resume its reading again. A
        # resume_reading() after EOF reads EOF a second time, and aiofastnet
        # then closes the transport.
        self.read_eof = False
        self.undrained = 0  # bytes written to the socket, credit not yet returned
        self.socket_write_paused = False
        # client_a's plain-HTTP REQUEST: one request, one response, so the
        # response's FIN ends the exchange both ways.
        self.one_exchange = side.upstream_sender and initial is _S_REQUEST
        self.bytes_out = 0
        self.bytes_in = 0
        self.started_at = now  # the open was sent or received
        self.opened = False  # the open succeeded (data may have flowed)
        self.opened_at = 0.0  # when the open succeeded
        self.deadline = 0.0  # (client_a) the open expires at this time; 0: never
        self.end: End | None = None
        self.error = ""  # the TUNNEL_ERROR text (either way) or the refusal
        self.response: ConnectResponse | None = None  # the answer to our open
        self.owner: object = None  # the program's object for this stream

    @property
    def bytes_up(self) -> int:
        return self.bytes_out if self.side.upstream_sender else self.bytes_in

    @property
    def bytes_down(self) -> int:
        return self.bytes_in if self.side.upstream_sender else self.bytes_out

    @property
    def ended(self) -> bool:
        return self.end is not None

    # --- opening ---

    def attach(self, socket: Socket) -> None:
        """Take over a socket whose reading is paused; reading resumes once the
        stream may send."""
        self.socket = socket
        if not self.paused:
            socket.resume_reading()

    def detach(self) -> Socket | None:
        """Give the socket back (the program answers it itself)."""
        socket, self.socket = self.socket, None
        return socket

    def _opened(self, send_window: int, now: float) -> None:
        self.state.apply(_E_RESPONSE_OK)
        self.opened = True
        self.opened_at = now
        self.send_window.grant(send_window, self.session.credit.send_cap)
        self._unpause(PAUSED_OPENING)

    def accept(self, send_window: int, now: float) -> None:
        """(agent) The target is connected (its socket `attach`ed): answer 200
        and let data flow; `send_window` is the credit the open granted."""
        self.session.out.write(
            ConnectResponse(self.session_id, 200, window=self.recv_window.window).encode(self.sid)
        )
        self._opened(send_window, now)

    def refuse(self, status: int, message: str, reason: str | None = None) -> None:
        """(agent) The open failed: answer `status`, and the stream is over."""
        if self.end is not None:
            return
        self.session.out.write(
            ConnectResponse(self.session_id, status, message, reason=reason).encode(self.sid)
        )
        self.error = message
        self.state.apply(_E_RESPONSE_FAIL)
        self._finish(_END_REFUSED)

    # --- socket -> relay ---

    def send_in_place(self, buf: bytearray, at: int, n: int, alone: bool = True) -> bool:
        """`n` bytes were read into `buf` behind room for the mux header at
        `at`: write the header there and send the frame from `buf`, if the
        credit allows it. `alone`: as its own WebSocket message, with no copy
        (a full read); else through `write`, which coalesces it with the other
        small frames of this loop iteration (its one copy). False: the caller
        copies and `send`s."""
        if self.state.state not in self.accepts_out:
            return True  # the stream ended while the read was in flight
        session = self.session
        if self.backlog is not None or self.send_window.available < n or n > session.max_chunk:
            return False
        # A read that takes the last credit (the adapter reads no more than the
        # credit) most likely left more behind: FLAG_BLOCKED, as for a backlog,
        # and no more reads until a grant.
        blocked = 0
        window = self.send_window
        avail = window.available - n
        if avail == 0:
            blocked = FLAG_BLOCKED
            session.stats.flow_control_stalls += 1
            session.probing = True  # is the path queueing what this end sends?
            self._pause(PAUSED_CREDIT)
        write_header(buf, at, T_TUNNEL_DATA, blocked, self.sid, n)
        window.available = avail
        window.unacked += n
        self.bytes_out += n
        if alone:
            session.out.write_external(buf, at)
        else:
            session.out.write(memoryview(buf)[at : at + HEADER_SIZE + n])
        if session.paused:
            session.wait_for_room(self)
        return True

    def send(self, data: bytes) -> None:
        """Bytes read from the socket."""
        if self.state.state not in self.accepts_out:
            return
        if self.backlog is not None:  # only while paused; a read already in flight
            self.backlog = memoryview(bytes(self.backlog) + data)
            self._pause(PAUSED_CREDIT)
            return
        self._send_data(memoryview(data))

    def _send_data(self, view: memoryview) -> None:
        avail = self.send_window.available
        n = len(view)
        # FLAG_BLOCKED on the frame that uses the last credit while more waits:
        # a new stall, or a grant that the backlog used up.
        blocked = 0
        if n > avail:
            self.backlog = view[avail:]
            view = view[:avail]
            n = avail
            self.session.stats.flow_control_stalls += 1
            self.session.probing = True
            blocked = FLAG_BLOCKED
            self._pause(PAUSED_CREDIT)
        elif n == avail and self.paused & PAUSED_CREDIT:
            blocked = FLAG_BLOCKED
        if n:
            self.send_window.available = avail - n  # n <= avail: checked above
            self.send_window.unacked += n
            self.bytes_out += n
            session = self.session
            sid, out, size = self.sid, session.out, session.max_chunk
            # Frames stay below every peer's max frame size. The concatenation
            # is one memcpy per chunk; picows masks client-side frames into its
            # own buffer anyway (docs/PROTOCOL.md, 5.3).
            for start in range(0, n, size):
                chunk = view[start : start + size]
                flags = blocked if start + size >= n else 0  # on the last chunk
                out.write(_pack(T_TUNNEL_DATA, flags, sid, len(chunk)) + chunk)
            if session.paused and not self.paused & PAUSED_LINK:
                session.wait_for_room(self)
        elif blocked:
            self.session.out.write(_pack(T_TUNNEL_DATA, blocked, self.sid, 0))

    def eof(self) -> None:
        """The socket reported EOF: FIN, once the backlog is out."""
        self.read_eof = True
        if self.backlog is not None:
            self.eof_pending = True
            return
        self.send_fin()

    def send_fin(self) -> None:
        if self.state.state not in self.accepts_out:
            return
        self.session.out.write(encode_frame(T_FIN, self.sid))
        self.state.apply(self.side.fin_out)
        if self.state.closed:
            self._finish(_END_FINISHED)

    def _grant(self, increment: int) -> None:
        self.state.apply(self.side.window_in)
        self.send_window.grant(increment, self.session.credit.send_cap)
        self._may_send()

    def _may_send(self) -> None:
        """Credit arrived or was released: send the backlog, then read again."""
        if self.backlog is not None:
            backlog, self.backlog = self.backlog, None
            self._send_data(backlog)
            if self.backlog is None and self.eof_pending:
                self.eof_pending = False
                self.send_fin()
        if self.backlog is None and self.send_window.available > 0:
            self._unpause(PAUSED_CREDIT)

    # --- relay -> socket ---

    def _deliver(self, payload: memoryview, flags: int = 0) -> None:
        if self.state.state not in self.accepts_in:
            raise StreamError(f"data not allowed in state {self.state.state.value}")
        n = len(payload)
        self.recv_window.received(n)
        self.bytes_in += n
        socket = self.socket
        if socket is None or socket.is_closing():
            return
        socket.write(payload)  # aiofastnet copies only what the socket does not take now
        if self.socket_write_paused:
            self.undrained += n
        elif flags & FLAG_BLOCKED:
            self._peer_blocked(n)
        else:
            self._return_credit(n)

    def _return_credit(self, n: int, now: bool = False) -> None:
        increment = self.recv_window.release(n, self.session.credit, now)
        if increment and self.state.state in self.accepts_in:
            self.session.out.write(encode_window_update(self.sid, increment))

    def _peer_blocked(self, n: int) -> None:
        """The sender ran out of credit (FLAG_BLOCKED) and this end keeps up
        (its socket took the `n` bytes without backing up): the window is what
        limits the stream. Aim it higher, and return what is owed now rather
        than at the batch mark. (A slow reader's window stays as it is.)"""
        session = self.session
        credit = session.credit
        self.recv_window.grow(credit)
        session.stats.window_growths += 1
        session.probing = True  # is the path queueing? (Session.receive times it)
        if credit.growing and session.path.sent_at < 0.0:
            # A window doubled: time the path now, not a PROBE_INTERVAL
            # later, so a queue the growth builds is seen within a round trip.
            session.path.next_probe = 0.0
        self._return_credit(n, now=True)

    def socket_paused_writing(self) -> None:
        """The socket's write buffer is over its high-water mark: hold the credit."""
        self.socket_write_paused = True

    def socket_resumed_writing(self) -> None:
        """The socket's write buffer drained to its low-water mark: return the credit."""
        self.socket_write_paused = False
        if self.undrained:
            n, self.undrained = self.undrained, 0
            self._return_credit(n)

    def _remote_fin(self) -> None:
        self.state.apply(self.side.fin_in)
        socket = self.socket
        if socket is not None and not socket.is_closing() and socket.can_write_eof():
            try:
                socket.write_eof()
            except OSError as exc:  # the peer is gone already (ENOTCONN, a reset)
                if not self.state.closed:
                    self.abort(f"connection lost: {exc}")  # and the socket with it
                    return
                # Both directions had ended (the browser's FIN came first): nothing is
                # left to abort, only the socket to close, which _finish does.
        if self.state.closed:
            self._finish(_END_FINISHED)
        elif self.one_exchange:
            self.send_fin()  # the response ended, so the exchange did

    # --- ends ---

    def abort(self, reason: str) -> None:
        """This side gives up on the stream: TUNNEL_ERROR to the peer."""
        if self.end is not None:
            return
        self.session.out.write(TunnelError(self.session_id, reason).encode(self.sid))
        self.error = reason
        self.state.apply(_E_ABORT)
        self._finish(_END_ABORTED)

    def socket_lost(self, exc: BaseException | None) -> None:
        """The socket closed under the stream."""
        self.socket = None
        if self.end is None:
            self.abort(f"connection lost: {exc}" if exc else "connection closed")

    def _remote_error(self, reason: str) -> None:
        self.error = reason
        self.state.apply(_E_ABORT)
        self._finish(_END_REMOTE_ERROR)

    def _finish(self, end: End) -> None:
        """Leave the table, then settle the socket (see the module docstring)."""
        self.end = end
        self.backlog = None
        socket, self.socket = self.socket, None
        if socket is not None and self.opened and not socket.is_closing():
            if end is _END_FINISHED:
                socket.close()
            else:
                self.session.abort_socket(socket)
        self.session._forget(self)

    # --- pausing the socket's reading ---

    def _pause(self, why: int) -> None:
        if not self.paused and self.socket is not None and not self.read_eof:
            self.socket.pause_reading()
        self.paused |= why

    def _unpause(self, why: int) -> None:
        was = self.paused
        self.paused &= ~why
        if was and not self.paused and not self.read_eof:
            socket = self.socket
            if socket is not None and not socket.is_closing():
                socket.resume_reading()

    def link_paused(self, paused: bool) -> None:
        if paused:
            self._pause(PAUSED_LINK)
        else:
            self._unpause(PAUSED_LINK)


def _bytes_out(stream: Stream) -> int:
    return stream.bytes_out


def _abort(socket: Socket) -> None:
    socket.abort()


class Session:
    """One relay connection at an endpoint (see the module docstring).

    `side` is CLIENT_SIDE for client_a (it opens streams) and AGENT_SIDE for
    the agent (it answers them). `open_timeout` (client_a) is how long an open
    may wait for its answer; `tick(now)` expires the late ones.
    """

    def __init__(
        self,
        link: Link,
        events: SessionEvents,
        stats: SessionStats,
        *,
        side: Side,
        window: int,
        max_frame_size: int,
        open_timeout: float = 0.0,
        abort_socket: Callable[[Socket], None] | None = None,
        max_window: int = 0,
        pool: str = "",
    ) -> None:
        self.link = link
        # An agent's pool: a relay's HELLO must confirm it, unless it is the
        # default one (a relay without pools routes every open to every agent).
        self.pool = pool
        # How an aborted stream's socket is ended (the adapter resets it once
        # the bytes already written are through); plain `abort()` by default.
        self.abort_socket = abort_socket or _abort
        self.out: Output = link  # the adapter points it at its writer while connected
        self.events = events
        self.stats = stats
        self.side = side
        self.want = window
        self.max_window = max_window  # how far a stream's window may grow (0: `window`)
        self.max_frame_size = max_frame_size
        # The largest data payload in one frame: within the relay's limit once
        # its HELLO announces one.
        self.max_chunk = MAX_CHUNK
        self.open_timeout = open_timeout
        self.streams: dict[int, Stream] = {}
        self.hello: Hello | None = None
        # The credit our streams grant on this connection, within the relay's
        # budget (set from HELLO): honest, however slow, is never cut off.
        self.credit = CreditPool.for_relay(0, 0, window, max_window)
        self.goaway = False
        self.leaving = False  # the owner no longer wants it: close once idle
        self.lost = False  # the connection has ended
        self.closing = False  # this side closed the link
        self.paused = False  # the link's write buffer is over its high-water mark
        self.waiting: list[Stream] = []  # streams paused by a full link
        self.sid_cursor = 0
        self.expiry: deque[Stream] = deque()  # opens in the order they expire
        # The round trip to the relay, timed while a sender is blocked on this
        # end's windows, so they follow the path's queue (`CreditPool.pace`).
        self.path = PathDelay()
        self.probing = False  # a sender ran out of our credit since the last probe
        self.probe_frames = False  # the relay answers PROBE frames (HELLO); else pings

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

    def close(self, code: int, reason: str) -> None:
        if self.closing or self.lost:
            return
        self.closing = True
        self.link.disconnect(code, reason)

    def close_if_idle(self) -> None:
        if not self.streams:
            self.close(CLOSE_GOING_AWAY, "drained")

    def retire(self, reason: str) -> None:
        """The owner no longer wants this connection: GOAWAY, no new streams,
        and close once the last one ends."""
        self.leaving = True
        self.out.write(GoAway(reason).encode())

    # --- opening (client_a) ---

    def next_stream_id(self) -> int | None:
        """A free id in the range the relay's HELLO assigned."""
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

    def open(self, request: OpenStream, socket: Socket, now: float) -> Stream | None:
        """Send `request` (its window is set here) on a new stream that takes
        `socket` (reading paused); None when no stream can open here now."""
        if not self.ready or self.credit.full:
            return None
        sid = self.next_stream_id()
        if sid is None:
            return None
        initial = _S_CONNECT_REQUEST if request.kind == T_CONNECT else _S_REQUEST
        stream = Stream(self, sid, request.session_id, initial, self.credit.open(), now)
        self.streams[sid] = stream
        self.out.write(request.encode(sid, stream.recv_window.window))
        stream.attach(socket)
        if self.open_timeout > 0:
            stream.deadline = now + self.open_timeout
            self.expiry.append(stream)
        return stream

    def tick(self, now: float) -> None:
        """Expire the opens whose answer is late: TUNNEL_ERROR to the relay,
        and the program hears `End.EXPIRED`."""
        expiry = self.expiry
        while expiry:
            stream = expiry[0]
            if stream.end is None and stream.state.opening and stream.deadline > now:
                return
            expiry.popleft()
            if stream.end is None and stream.state.opening:
                self.out.write(TunnelError(stream.session_id, "open timeout").encode(stream.sid))
                stream.error = "open timeout"
                stream.state.apply(_E_TIMEOUT)
                stream._finish(_END_EXPIRED)

    # --- the link ---

    def set_paused(self, paused: bool) -> None:
        """The link's write buffer crossed its high (or low) water mark.

        Pausing is lazy: a stream that sends while the link is paused stops
        reading its socket after that one read and queues in `waiting`. So
        every stream gets at most one read per pause cycle (fair with 1,000
        busy tunnels, where pausing every socket eagerly starved most of
        them), and only streams that actually read pay a pause and a resume.

        When the link drains, the least served streams (fewest bytes sent)
        resume first, ties in the order they queued. The event loop reads
        sockets in the order they resumed, and the first to read take the
        room the drained link has while the later ones get one small read
        each before it fills again. Resuming in the order they queued gave
        that room to the same streams every cycle: those whose sockets always
        had bytes waiting, the oldest tunnels' (bench/README.md, scenario 4,
        fourth look). Least served first also puts a new tunnel's first
        bytes ahead of long downloads on a congested link.
        """
        self.paused = paused
        if paused:
            self.stats.backpressure_pauses += 1
            self.probing = True  # a full link: is it a slow one?
            return
        waiting, self.waiting = self.waiting, []
        waiting.sort(key=_bytes_out)  # stable: ties keep their queue order
        for stream in waiting:
            stream.link_paused(False)

    def wait_for_room(self, stream: Stream) -> None:
        stream.link_paused(True)
        self.waiting.append(stream)

    def connection_lost(self) -> None:
        """The link is gone: every stream ends (`End.LOST`)."""
        self.lost = True
        self.paused = False
        self.waiting = []
        self.expiry.clear()
        for stream in list(self.streams.values()):
            if stream.end is None:
                stream.error = "relay connection lost"
                if not stream.state.closed:
                    stream.state.apply(_E_ABORT)
                stream._finish(_END_LOST)
        self.streams.clear()

    def _forget(self, stream: Stream) -> None:
        if self.streams.get(stream.sid) is stream:
            del self.streams[stream.sid]
            self.credit.close(stream.recv_window.window)
            stats = self.stats
            stats.ended_bytes_up += stream.bytes_up
            stats.ended_bytes_down += stream.bytes_down
            self.events.on_stream_end(self, stream)
            if not self.streams and (self.goaway or self.leaving):
                self.close(CLOSE_GOING_AWAY, "drained")

    # --- reading the relay's messages ---

    def receive(self, message: memoryview, now: float) -> None:
        """One WebSocket message from the relay. A malformed frame raises
        ProtocolError (close the link); frames before it were handled. A
        stream's own error costs that stream only."""
        streams = self.streams
        total = len(message)
        offset = 0
        while offset < total:
            frame_type, flags, sid, start, offset = read_frame(message, offset)
            if frame_type == T_TUNNEL_DATA:
                stream = streams.get(sid)
                if stream is None:
                    self.stats.dropped_unknown_stream += 1
                    continue
                try:
                    stream._deliver(message[start:offset], flags)
                except StreamError as exc:
                    self._stream_failed(stream, exc)
                except Exception as exc:  # a bug must cost one stream, not the link
                    self._crashed(stream, exc)
            else:
                self._control(frame_type, sid, message[start:offset], now)
        path = self.path
        # A bulk message times the path too: a window's first burst queues on
        # a slow link before its sender is ever BLOCKED, and a window that
        # grows on the BLOCKED behind it must not grow on a stale "calm".
        if (self.probing or total >= BULK_MESSAGE or path.sent_at >= 0.0) and (
            now >= path.next_probe
        ):
            self._probe(now)

    def _probe(self, now: float) -> None:
        """Time the path: send a probe, or with one still out, judge by how
        late it is already (a lower bound: it can say "queued", not "calm").
        Only an answer's stamp splits the two ways, so a late probe stops
        growth and cuts on both; its answer lifts the way it finds calm.
        (Taking the way out to hold what the last answer found there, and
        the rest to be the way back's, let queues build: bench/README.md.)"""
        path = self.path
        if path.in_flight:
            late = path.late(now)
            if late > QUEUE_LOW:
                self.credit.calm = False  # no growth into a queue that is building
            if late > QUEUE_HIGH and not path.cut:
                path.cut = True
                self._pace(late, late)
            return
        self.probing = False
        path.sent(now)
        if self.probe_frames:
            path.token += 1
            self.out.write(encode_probe(path.token))  # behind what this end sent
        else:
            self.link.probe()

    def probe_answered(self, now: float) -> float:
        """The answer to `Link.probe` (a pong) arrived: the queueing delay it
        measured (-1: it answered no probe)."""
        queueing = self.path.answered(now)
        if queueing >= 0.0:
            self._path_answered(False)
        return queueing

    def _path_answered(self, stamped: bool) -> None:
        path = self.path
        queue_in, queue_out = path.queue_in, path.queue_out
        self.stats.path_measured(queue_out, queue_in, stamped)
        self.credit.growing = False  # the next doubling times the path again
        # What the late probe cut already is not cut again by its answer; a way
        # the answer finds calm is lifted (`_probe` cut both, not knowing which).
        cut = path.cut
        self._pace(
            -1.0 if cut and queue_in > QUEUE_LOW else queue_in,
            -1.0 if cut and queue_out > QUEUE_LOW else queue_out,
        )

    def _pace(self, queue_in: float, queue_out: float) -> None:
        """The windows this end grants follow the queue on the way in (what
        it receives crosses it), the send cap the way out; -1 leaves one be."""
        credit, base = self.credit, self.path.base
        if queue_in >= 0.0 and credit.pace(queue_in, base):
            self.stats.window_backoffs += 1
        if queue_out > QUEUE_HIGH:
            largest = 0
            for stream in self.streams.values():
                if stream.send_window.unacked > largest:
                    largest = stream.send_window.unacked
            if credit.pace_send(queue_out, base, largest):
                self.stats.send_backoffs += 1
                self._limit_senders()
        elif queue_out >= 0.0 and credit.send_cap and credit.pace_send(queue_out, base, 0):
            self._limit_senders()

    def _limit_senders(self) -> None:
        """The send cap moved: every stream keeps back what is over it, and a
        stream with credit usable again sends its backlog and reads on."""
        cap = self.credit.send_cap
        for stream in list(self.streams.values()):
            window = stream.send_window
            had = window.available
            if window.limit(cap) and not had and stream.opened and stream.end is None:
                stream._may_send()

    def _control(self, frame_type: int, sid: int, payload: memoryview, now: float) -> None:
        if frame_type == T_HELLO:
            self._hello(Hello.decode(payload))
            return
        if frame_type == T_GOAWAY:
            self.goaway = True
            self.events.on_goaway(self, GoAway.decode(payload).error)
            if not self.streams:
                self.close(CLOSE_GOING_AWAY, "drained")
            return
        if frame_type == T_MEMBERS:
            self.events.on_members(self, Members.decode(payload))
            return
        if frame_type == T_RULES:
            self._rules(payload)
            return
        if frame_type == T_PROBE:
            token, stamp = decode_probe_answer(payload)
            path = self.path
            if token == path.token and path.answered_stamped(now, stamp * 1e-6) >= 0.0:
                self._path_answered(True)
            return
        if frame_type in (T_CONNECT, T_REQUEST):
            self._incoming_open(sid, OpenStream.decode(FRAME_TYPES[frame_type], payload), now)
            return
        stream = self.streams.get(sid)
        if stream is None:
            self.stats.dropped_unknown_stream += 1
            return
        try:
            if frame_type == T_WINDOW_UPDATE:
                stream._grant(decode_window_increment(payload))
            elif frame_type == T_FIN:
                stream._remote_fin()
            elif frame_type == T_TUNNEL_ERROR:
                stream._remote_error(TunnelError.decode(payload).error)
            elif frame_type == T_CONNECT_RESPONSE:
                self._answered(stream, ConnectResponse.decode(payload), now)
        except StreamError as exc:
            self._stream_failed(stream, exc)
        except Exception as exc:  # a bug must cost one stream, not the link
            self._crashed(stream, exc)

    def _rules(self, payload: memoryview) -> None:
        """RULES: unlike other control messages, a malformed one does not close the link.
        It is configuration, not stream state: the frame's bounds were sound, so nothing
        else on the connection is in doubt, and closing would cost every open tunnel only
        for the relay to send the same frame again on the next connection."""
        try:
            pushed = PushedRules.decode(payload)
        except ControlMessageError as exc:
            self.stats.protocol_errors["bad_rules"] += 1
            self.events.on_rules_refused(self, str(exc))
            return
        self.events.on_rules(self, pushed)

    def _hello(self, hello: Hello) -> None:
        if hello.max_frame_size > self.max_frame_size:
            self.stats.protocol_errors["config_mismatch"] += 1
            self.events.on_hello_refused(
                self,
                f"relay {hello.instance_id} forwards WebSocket messages of up to "
                f"{hello.max_frame_size} bytes, more than this program's --max-frame-size "
                f"({self.max_frame_size}): set it to at least {hello.max_frame_size}",
            )
            self.close(CLOSE_POLICY_VIOLATION, "max frame size below the relay's")
            return
        if self.pool and self.pool != DEFAULT_POOL and hello.pool != self.pool:
            self.stats.protocol_errors["config_mismatch"] += 1
            said = f"put it in pool {hello.pool!r}" if hello.pool else "does not support pools"
            self.events.on_hello_refused(
                self,
                f"relay {hello.instance_id} {said}, but this agent is in pool {self.pool!r}: "
                "it would be sent other pools' opens (upgrade the relay)",
            )
            self.close(CLOSE_POLICY_VIOLATION, "relay did not confirm the agent's pool")
            return
        self.hello = hello
        if hello.max_frame_size:
            self.max_chunk = max(1, min(MAX_CHUNK, hello.max_frame_size - HEADER_SIZE))
        self.credit = CreditPool.for_relay(
            hello.buffer_budget, hello.max_streams, self.want, self.max_window
        )
        self.probing = True  # the first probe times the path while it is empty
        self.probe_frames = hello.probe
        self.events.on_hello(self, hello)

    def _incoming_open(self, sid: int, request: OpenStream, now: float) -> None:
        if self.side.upstream_sender:
            self.stats.protocol_errors["unexpected_open"] += 1
            return
        if sid in self.streams:
            self.out.write(TunnelError(request.session_id, "stream id in use").encode(sid))
            return
        window = self.credit.open()
        if not window:  # the relay keeps within this too; a stale or foreign one may not
            self.out.write(
                ConnectResponse(
                    request.session_id,
                    503,
                    f"the agent carries {self.credit.max_streams} streams on this connection",
                    reason="stream_limit",
                ).encode(sid)
            )
            return
        initial = _S_CONNECT_REQUEST if request.kind == T_CONNECT else _S_REQUEST
        stream = Stream(self, sid, request.session_id, initial, window, now)
        self.streams[sid] = stream
        self.events.on_open(self, stream, request)

    def _answered(self, stream: Stream, response: ConnectResponse, now: float) -> None:
        if not self.side.upstream_sender:
            raise StreamError("agents do not accept CONNECT_RESPONSE")
        stream.response = response
        if not response.ok:
            stream.error = response.error or "refused by the relay"
            stream.state.apply(_E_RESPONSE_FAIL)
            stream._finish(_END_REFUSED)
            return
        stream._opened(response.window, now)
        self.events.on_opened(self, stream)

    def _stream_failed(self, stream: Stream, exc: StreamError) -> None:
        """A stream broke the rules: it ends with TUNNEL_ERROR, and only it."""
        self.stats.protocol_errors[exc.kind] += 1
        try:
            stream.abort(str(exc))
        except Exception as failed:  # the abort itself must not take the link down
            self._crashed(stream, failed)

    def _crashed(self, stream: Stream, exc: Exception) -> None:
        self.stats.protocol_errors["internal_error"] += 1
        self.events.on_internal_error(self, stream, exc)
        try:
            stream.abort("internal error")
        except Exception:
            # Its abort failed too: end it without the state table, so that its socket,
            # its credit and the program's record of it are settled all the same.
            if stream.end is None:
                stream.error = "internal error"
                try:
                    stream._finish(_END_ABORTED)
                    return
                except Exception:
                    pass
            self.streams.pop(stream.sid, None)
