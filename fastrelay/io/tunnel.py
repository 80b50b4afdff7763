"""A stream's TCP socket at an endpoint (client_a or the agent): the asyncio side
of `fastrelay.protocol.session.Stream`.

The stream decides (credit, state, half-close, when credit goes back); this
module only moves bytes between the socket and the stream:

* socket -> relay: reads land in one process-wide buffer behind room for
  picows' WebSocket header and the mux header, so a full read goes out as one
  frame from that very buffer, with no copy (`filled`); a shorter read is
  copied once; a read is never larger than the stream's credit;
* relay -> socket: the stream writes payload views to the transport, and
  returns credit once the transport's write buffer is at or below its
  low-water mark. High and low marks are set equal (`attach`), so "not
  paused" means exactly "at or below low water", and `resume_writing` is the
  moment to return withheld credit.

Half-close: EOF becomes FIN, FIN becomes `write_eof()`, and the socket is
closed explicitly once both directions have ended (a transport left open after
`write_eof()` crashed uvloop 0.23 after ~1,000 tunnels in a probe here).
"""

from __future__ import annotations

import asyncio
import os
from socket import IPPROTO_TCP

from aiofastnet.transport import Protocol as FastProtocol

from fastrelay.io.reset import TCP_CLOSE, TCP_INFO, rearm, reset_when_sent, state_socket
from fastrelay.protocol.frames import HEADER_SIZE
from fastrelay.protocol.session import MAX_CHUNK, Socket, Stream

TCP_LOW_WATER = 64 * 1024
READ_SIZE = MAX_CHUNK  # one TCP read, one frame
PAUSED_READ_SIZE = 16 * 1024  # the last read of a stream whose WebSocket is full
WS_HEADROOM = 14  # the longest WebSocket frame header picows writes in front
READ_HEADROOM = WS_HEADROOM + HEADER_SIZE
# The process-wide read buffer. picows masks a frame sent from it in place, and
# aiofastnet copies any part the socket does not take at once, so it is free
# again when a send returns: a read is handled completely before the next one
# starts, so one buffer serves every stream and idle tunnels hold none.
_READ_BUF = bytearray(READ_HEADROOM + READ_SIZE)
_READ_VIEW = memoryview(_READ_BUF)[READ_HEADROOM:]
_PAUSED_VIEW = _READ_VIEW[:PAUSED_READ_SIZE]


def read_buffer(stream: Stream) -> memoryview:
    """Where the next read of `stream`'s socket lands: at most what the stream
    may send now, so bytes beyond its credit wait in the kernel's receive queue
    (which the socket's own window bounds) rather than in a backlog here. With
    1,000 busy streams, full reads past the credit had left 50-157 MB of
    backlog at the agent.

    While the WebSocket is over its high-water mark a stream gets one small
    read before it pauses (see Session.set_paused): with 1,000 busy streams,
    full reads there had queued 60-127 MB at the agent."""
    if stream.session.paused:
        return _PAUSED_VIEW
    credit = stream.send_window.available
    if credit >= READ_SIZE:
        return _READ_VIEW
    return _READ_VIEW[: credit if credit > PAUSED_READ_SIZE else PAUSED_READ_SIZE]


def filled(stream: Stream, n: int) -> None:
    """`n` bytes arrived in `read_buffer()`, behind room for the mux header: a
    full read leaves as its own frame from the buffer itself (picows sends the
    buffer to its end), a shorter one through the stream's writer: copied once,
    header and all, into the coalesced batch, or sent on its own from 64 KiB.
    Without the credit for all of it (a read in flight when the credit
    ran out), the stream takes a copy and sends what it may."""
    if stream.send_in_place(_READ_BUF, WS_HEADROOM, n, n == READ_SIZE):
        return
    stream.send(bytes(_READ_VIEW[:n]))


def attach(stream: Stream, transport: asyncio.Transport, socket: Socket | None = None) -> None:
    """Give `stream` its TCP transport (reading paused), through `socket` if
    the program wraps it (client_a's response-head rewriter)."""
    transport.set_write_buffer_limits(high=TCP_LOW_WATER, low=TCP_LOW_WATER)
    stream.attach(socket if socket is not None else transport)


def abort_socket(socket: Socket) -> None:
    """How a session aborts a stream's socket: a transport gets an RST once
    the bytes written to it are through (`reset_when_sent`), so the peer sees
    an abort, not a clean end; a program's wrapper decides for itself."""
    if isinstance(socket, LoopStreamSocket):
        if socket.transport is not None:
            reset_when_sent(socket.transport)
    elif isinstance(socket, asyncio.Transport) or hasattr(socket, "get_write_buffer_size"):
        reset_when_sent(socket)  # type: ignore[arg-type]
    else:
        socket.abort()


class StreamSocket(FastProtocol):
    """The TCP socket of a stream on one of aiofastnet's transports (client_a's
    browser side): hands every event to the stream.

    A buffered protocol on aiofastnet's Cython `Protocol`, whose transports
    call `get_buffer` and `buffer_updated` in C when this module is compiled
    (fastrelay/io/tunnel.pxd) rather than through Python method look-ups.
    Reading starts paused; the stream resumes it when it may send. `owner`,
    if given, hears of the socket's end (`connection_lost`) instead of the
    stream: client_a's browser connection, which hands its socket over once
    the tunnel is open (with its `transport`). After each read the socket's
    state is checked (`rearm_if_closed`), or on uvloop a reset that came with
    the last bytes would go unseen.
    """

    def __init__(
        self,
        stream: Stream,
        owner: asyncio.BaseProtocol | None = None,
        transport: asyncio.BaseTransport | None = None,
    ) -> None:
        self.stream = stream
        self.owner = owner
        self.transport = transport
        self.sock = None if transport is None else state_socket(transport)

    def is_buffered_protocol(self) -> bool:
        return True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.sock = state_socket(transport)
        transport.pause_reading()  # type: ignore[attr-defined]

    def get_buffer(self, sizehint: int) -> memoryview:
        return read_buffer(self.stream)

    def buffer_updated(self, nbytes: int) -> None:
        filled(self.stream, nbytes)
        # rearm_if_closed (fastrelay/io/reset.py), inline: uvloop can hide a reset.
        sock = self.sock
        if sock is None:
            return
        try:
            state = sock.getsockopt(IPPROTO_TCP, TCP_INFO, 1)
        except (OSError, ValueError):  # closed meanwhile: its end is on its way already
            return
        if state and state[0] == TCP_CLOSE and self.transport is not None:
            rearm(self.transport)

    def data_received(self, data: bytes) -> None:
        """A transport that does not read into buffers (not aiofastnet's)."""
        self.stream.send(bytes(data))

    def eof_received(self) -> bool:
        self.stream.eof()
        return True  # keep the socket for the other direction; the stream closes it

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = self.sock = None
        owner = self.owner
        if owner is not None:
            self.owner = None
            owner.connection_lost(exc)
        else:
            self.stream.socket_lost(exc)

    def pause_writing(self) -> None:
        self.stream.socket_paused_writing()

    def resume_writing(self) -> None:
        self.stream.socket_resumed_writing()


class _LoopSocket:
    """What LoopStreamSocket does, as a C extension type when this module is
    compiled (fastrelay/io/tunnel.pxd): uvloop calls `get_buffer` and
    `buffer_updated` through bound methods it looks up once, and the stream
    calls `write`, so each read and each write of a tunnel's target socket is
    a C call rather than a Python frame. LoopStreamSocket adds the asyncio
    protocol class that the stdlib loop's transports look for.

    The TCP socket of a stream on a transport of the event loop's own
    (uvloop's, in C; the agent's target side): hands every event to the
    stream, and is the stream's `Socket`.

    The loop's transport keeps a reference to any memoryview it cannot send at
    once (uvloop's UVStream._buffer_write; only aiofastnet's transports copy the
    unsent tail), while the stream writes views of picows' read buffer, which
    the next read overwrites. So `write` sends a view itself while nothing is
    queued and hands the transport a copy of only what the socket did not take:
    no copy when the socket takes it all, as with aiofastnet.

    Reading starts paused; the stream resumes it when it may send.
    """

    __slots__ = ("fd", "stream", "transport")  # interpreted; tunnel.pxd when compiled

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.transport: asyncio.Transport | None = None
        self.fd = -1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.fd = transport.get_extra_info("socket").fileno()
        transport.pause_reading()  # type: ignore[attr-defined]

    def get_buffer(self, sizehint: int) -> memoryview:
        return read_buffer(self.stream)

    def buffer_updated(self, nbytes: int) -> None:
        filled(self.stream, nbytes)

    def eof_received(self) -> bool:
        self.stream.eof()
        return True  # keep the socket for the other direction; the stream closes it

    def connection_lost(self, exc: Exception | None) -> None:
        self.stream.socket_lost(exc)

    def pause_writing(self) -> None:
        self.stream.socket_paused_writing()

    def resume_writing(self) -> None:
        self.stream.socket_resumed_writing()

    # --- the stream's Socket ---

    def write(self, data: bytes | memoryview) -> None:
        transport = self.transport
        assert transport is not None
        if type(data) is not bytes:
            if not transport.get_write_buffer_size() and not transport.is_closing():
                # The fd is this transport's while it is not closing: the loop
                # closes it only once is_closing() says so.
                try:
                    sent = os.write(self.fd, data)
                except OSError:  # EAGAIN; or an error the transport meets and reports below
                    sent = 0
                if sent == len(data):
                    return
                data = data[sent:]
            data = bytes(data)  # what the socket does not take now: the transport's own
        transport.write(data)

    def write_eof(self) -> None:
        self.transport.write_eof()  # type: ignore[union-attr]

    def can_write_eof(self) -> bool:
        return self.transport.can_write_eof()  # type: ignore[union-attr]

    def is_closing(self) -> bool:
        return self.transport.is_closing()  # type: ignore[union-attr]

    def close(self) -> None:
        self.transport.close()  # type: ignore[union-attr]

    def abort(self) -> None:
        self.transport.abort()  # type: ignore[union-attr]

    def pause_reading(self) -> None:
        self.transport.pause_reading()  # type: ignore[union-attr]

    def resume_reading(self) -> None:
        self.transport.resume_reading()  # type: ignore[union-attr]


class LoopStreamSocket(_LoopSocket, asyncio.BufferedProtocol):
    """The TCP socket of a stream on a transport of the event loop's own
    (uvloop's, in C; the agent's target side): `_LoopSocket` with the asyncio
    protocol class, which the stdlib loop's transports check for to read into
    `get_buffer` (uvloop looks for the method itself)."""

    __slots__ = ()
