"""One stream at an endpoint (client_a or agent): a TCP socket on one side,
the multiplexed WebSocket on the other, with flow control both ways.

TCP -> mux: bytes go out as TUNNEL_DATA while the stream has send credit;
without credit the socket stops being read (only this stream stalls).
mux -> TCP: bytes are written to the socket, and credit goes back with
WINDOW_UPDATE only once the socket's write buffer is at or below its low-water
mark. The TCP transport's high and low marks are set equal, so "not paused"
means exactly "at or below low water", and `resume_writing` is the moment to
return withheld credit.

Half-close: TCP EOF becomes FIN, FIN becomes `write_eof()`, and the socket is
closed explicitly once both directions have ended (a transport left open after
`write_eof()` crashed uvloop 0.23 after ~1,000 tunnels in a probe here).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from fastrelay.protocol.errors import StreamError
from fastrelay.protocol.flow import RecvWindow, SendWindow
from fastrelay.protocol.frames import (
    HEADER,
    HEADER_SIZE,
    FrameType,
    encode_frame,
    encode_window_update,
)
from fastrelay.protocol.messages import TunnelError
from fastrelay.protocol.state import ACCEPTS_DATA_DOWN, ACCEPTS_DATA_UP, Event, State, StreamState

if TYPE_CHECKING:
    from fastrelay.io.carrier import Carrier

TCP_LOW_WATER = 64 * 1024
READ_CHUNK_LIMIT = 256 * 1024  # largest TUNNEL_DATA payload sent in one frame
READ_SIZE = READ_CHUNK_LIMIT  # one TCP read, one frame
PAUSED_READ_SIZE = 16 * 1024  # the last read of a stream whose WebSocket is full
WS_HEADROOM = 14  # the longest WebSocket frame header picows writes in front
READ_HEADROOM = WS_HEADROOM + HEADER_SIZE
# The process-wide read buffer (see TunnelStream.read_buffer). picows masks a
# frame sent from it in place, and aiofastnet copies any part the socket does
# not take at once, so it is free again when a send returns.
_READ_BUF = bytearray(READ_HEADROOM + READ_SIZE)
_READ_VIEW = memoryview(_READ_BUF)[READ_HEADROOM:]
_DATA = int(FrameType.TUNNEL_DATA)
_pack = HEADER.pack

PAUSED_CREDIT = 1  # no send credit left
PAUSED_CARRIER = 2  # the WebSocket's own write buffer is over its high-water mark
PAUSED_OPENING = 4  # the stream is not open yet


class Side:
    """The events an endpoint sends and receives, by its place in the tunnel."""

    def __init__(self, upstream_sender: bool) -> None:
        up = self.upstream_sender = upstream_sender
        self.data_out = Event.DATA_UP if up else Event.DATA_DOWN
        self.fin_out = Event.FIN_UP if up else Event.FIN_DOWN
        self.fin_in = Event.FIN_DOWN if up else Event.FIN_UP
        self.window_out = Event.WINDOW_DOWN if up else Event.WINDOW_UP
        self.window_in = Event.WINDOW_UP if up else Event.WINDOW_DOWN
        self.accepts_in = ACCEPTS_DATA_DOWN if up else ACCEPTS_DATA_UP
        self.accepts_out = ACCEPTS_DATA_UP if up else ACCEPTS_DATA_DOWN


CLIENT_SIDE = Side(upstream_sender=True)
AGENT_SIDE = Side(upstream_sender=False)


class TunnelStream:
    def __init__(
        self,
        carrier: Carrier,
        sid: int,
        session_id: str,
        side: Side,
        initial: State,
        recv_window: int,
    ) -> None:
        self.carrier = carrier
        self.sid = sid
        self.session_id = session_id
        self.side = side
        self.state = StreamState(initial)
        self.send_window = SendWindow(0)  # granted by the peer's open or CONNECT_RESPONSE
        self.recv_window = RecvWindow(recv_window)
        self.tcp: asyncio.Transport | None = None
        self.paused = PAUSED_OPENING
        self.backlog: memoryview | None = None  # read from TCP, waiting for credit
        self.eof_pending = False  # TCP EOF seen while backlog waits
        # The socket reported EOF: never pause or resume its reading again. A
        # resume_reading() after EOF reads EOF a second time, and aiofastnet
        # then closes the transport (a carrier pause/resume did exactly that).
        self.read_eof = False
        self.undrained = 0  # bytes written to TCP, credit not yet returned
        self.tcp_write_paused = False
        self.bytes_out = 0
        self.bytes_in = 0
        self.stats = carrier.stats
        self.started_at = time.monotonic()  # the open was sent or received
        self.opened_at = 0.0  # the open succeeded; 0 while opening or if it failed
        self.aborted = False  # ended by TUNNEL_ERROR or a lost socket, not by FINs

    @property
    def bytes_up(self) -> int:
        return self.bytes_out if self.side.upstream_sender else self.bytes_in

    @property
    def bytes_down(self) -> int:
        return self.bytes_in if self.side.upstream_sender else self.bytes_out

    # --- becoming a tunnel ---

    def attach_tcp(self, transport: asyncio.Transport) -> None:
        """Take over a socket whose reading the caller has paused."""
        self.tcp = transport
        transport.set_write_buffer_limits(high=TCP_LOW_WATER, low=TCP_LOW_WATER)
        if not self.paused:
            transport.resume_reading()

    def opened(self, send_window: int) -> None:
        """The open succeeded: data may flow both ways."""
        self.state.apply(Event.RESPONSE_OK)
        self.opened_at = time.monotonic()
        self.send_window.grant(send_window)
        self._unpause(PAUSED_OPENING)

    # --- TCP -> mux ---

    def read_buffer(self) -> memoryview:
        """Where the next TCP read lands (BufferedProtocol): behind room for
        picows' WebSocket header and our mux header, so a full read goes out
        as one frame from this very buffer, with no copy (`tcp_filled`).

        One buffer serves every stream of the process: a read is handled
        completely before the next one starts, so idle tunnels hold none.

        While the WebSocket is over its high-water mark a stream gets one
        small read before it pauses (see Carrier.set_paused): with 1,000 busy
        streams, full reads there had queued 60-127 MB at the agent."""
        if self.carrier.paused:
            return _READ_VIEW[:PAUSED_READ_SIZE]
        return _READ_VIEW

    def tcp_filled(self, n: int) -> None:
        """`n` bytes arrived in `read_buffer()`."""
        if self.state.state not in self.side.accepts_out:
            return  # the stream ended while this read was in flight
        if n == READ_SIZE and self.backlog is None and self.send_window.available >= n:
            buf = _READ_BUF
            HEADER.pack_into(buf, WS_HEADROOM, _DATA, 0, self.sid, n)
            self.send_window.consume(n)
            self.bytes_out += n
            # picows masks the frame in place and aiofastnet copies whatever the
            # socket does not take at once, so the buffer is free again on return.
            self.carrier.send_external(buf, WS_HEADROOM)
            if self.carrier.paused:
                self.carrier.wait_for_room(self)
            return
        self.tcp_data(bytes(_READ_VIEW[:n]))  # a short read: one copy

    def tcp_data(self, data: bytes) -> None:
        if self.backlog is not None:  # only while paused; a read already in flight
            self.backlog = memoryview(bytes(self.backlog) + data)
            self._pause(PAUSED_CREDIT)
            return
        self._send_data(memoryview(data))

    def _send_data(self, view: memoryview) -> None:
        avail = self.send_window.available
        n = len(view)
        if n > avail:
            self.backlog = view[avail:]
            view = view[:avail]
            n = avail
            self.stats.flow_control_stalls += 1
            self._pause(PAUSED_CREDIT)
        if n:
            self.send_window.consume(n)
            self.bytes_out += n
            sid, send = self.sid, self.carrier.send
            # Frames stay below every peer's max frame size. The concatenation
            # is one memcpy per chunk; picows masks client-side frames into its
            # own buffer anyway (docs/PROTOCOL.md, 5.3).
            for start in range(0, n, READ_CHUNK_LIMIT):
                chunk = view[start : start + READ_CHUNK_LIMIT]
                send(_pack(_DATA, 0, sid, len(chunk)) + chunk)
            if self.carrier.paused and not self.paused & PAUSED_CARRIER:
                self.carrier.wait_for_room(self)

    def tcp_eof(self) -> None:
        self.read_eof = True
        if self.backlog is not None:
            self.eof_pending = True
            return
        self._send_fin()

    def _send_fin(self) -> None:
        if self.state.state not in self.side.accepts_out:
            return
        self.carrier.send(encode_frame(FrameType.FIN, self.sid))
        self._apply(self.side.fin_out)

    def grant(self, increment: int) -> None:
        self._apply(self.side.window_in)
        self.send_window.grant(increment)
        if self.backlog is not None:
            backlog, self.backlog = self.backlog, None
            self._send_data(backlog)
            if self.backlog is None and self.eof_pending:
                self.eof_pending = False
                self._send_fin()
        if self.backlog is None and self.send_window.available > 0:
            self._unpause(PAUSED_CREDIT)

    # --- mux -> TCP ---

    def deliver(self, payload: memoryview) -> None:
        if self.state.state not in self.side.accepts_in:
            raise StreamError(f"data not allowed in state {self.state.state.value}")
        n = len(payload)
        self.recv_window.received(n)
        self.bytes_in += n
        tcp = self.tcp
        if tcp is None or tcp.is_closing():
            return
        self.write_tcp(tcp, payload)
        if self.tcp_write_paused:
            self.undrained += n
        else:
            self._return_credit(n)

    def write_tcp(self, tcp: asyncio.Transport, payload: memoryview) -> None:
        tcp.write(payload)  # aiofastnet copies only what the socket does not take now

    def _return_credit(self, n: int) -> None:
        increment = self.recv_window.release(n, self.carrier.credit)
        if increment and self.state.state in self.side.accepts_in:
            self.carrier.send(encode_window_update(self.sid, increment))

    def tcp_paused_writing(self) -> None:
        self.tcp_write_paused = True

    def tcp_resumed_writing(self) -> None:
        self.tcp_write_paused = False
        if self.undrained:
            n, self.undrained = self.undrained, 0
            self._return_credit(n)

    def remote_fin(self) -> None:
        self._apply(self.side.fin_in)
        if self.tcp is not None and not self.tcp.is_closing() and self.tcp.can_write_eof():
            self.tcp.write_eof()
        self._maybe_finish()

    # --- ends ---

    def remote_error(self, reason: str) -> None:
        """TUNNEL_ERROR from the peer: drop the socket now."""
        self.state.apply(Event.ABORT)
        self.aborted = True
        self._teardown(abort_tcp=True)
        self.on_aborted(reason)

    def carrier_lost(self) -> None:
        """The WebSocket under this stream is gone."""
        self.remote_error("relay connection lost")

    def abort(self, reason: str) -> None:
        """This side gives up on the stream: tell the peer, drop the socket."""
        if self.state.closed:
            return
        self.carrier.send(TunnelError(self.session_id, reason).encode(self.sid))
        self.state.apply(Event.ABORT)
        self.aborted = True
        self._teardown(abort_tcp=True)
        self.on_aborted(reason)

    def tcp_lost(self, exc: BaseException | None) -> None:
        self.tcp = None
        if not self.state.closed:
            self.abort(f"connection lost: {exc}" if exc else "connection closed")

    def on_aborted(self, reason: str) -> None:
        """Hook for the program (client_a answers the browser, say)."""

    def _apply(self, event: Event) -> None:
        self.state.apply(event)
        if event is not self.side.window_in:
            self._maybe_finish()

    def _maybe_finish(self) -> None:
        if self.state.closed:
            self._teardown(abort_tcp=False)

    def _teardown(self, abort_tcp: bool) -> None:
        self.carrier.forget(self)
        self.backlog = None
        tcp, self.tcp = self.tcp, None
        if tcp is not None and not tcp.is_closing():
            if abort_tcp:
                tcp.abort()
            else:
                tcp.close()

    # --- pausing the TCP reader ---

    def _pause(self, why: int) -> None:
        if not self.paused and self.tcp is not None and not self.read_eof:
            self.tcp.pause_reading()
        self.paused |= why

    def _unpause(self, why: int) -> None:
        was = self.paused
        self.paused &= ~why
        if was and not self.paused and not self.read_eof:
            tcp = self.tcp
            if tcp is not None and not tcp.is_closing():
                tcp.resume_reading()

    def carrier_paused(self, paused: bool) -> None:
        if paused:
            self._pause(PAUSED_CARRIER)
        else:
            self._unpause(PAUSED_CARRIER)


class StreamSocket(asyncio.BufferedProtocol):
    """The TCP socket of a stream: hands every event to the stream.

    Reading starts paused; `TunnelStream.attach_tcp` resumes it when the
    stream may send.
    """

    def __init__(self, stream: TunnelStream | None = None) -> None:
        self.stream = stream

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.pause_reading()  # type: ignore[attr-defined]

    def get_buffer(self, sizehint: int) -> memoryview:
        assert self.stream is not None
        return self.stream.read_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        if self.stream is not None:
            self.stream.tcp_filled(nbytes)

    def eof_received(self) -> bool:
        if self.stream is not None:
            self.stream.tcp_eof()
        return True  # keep the socket for the other direction; the stream closes it

    def connection_lost(self, exc: Exception | None) -> None:
        if self.stream is not None:
            self.stream.tcp_lost(exc)

    def pause_writing(self) -> None:
        if self.stream is not None:
            self.stream.tcp_paused_writing()

    def resume_writing(self) -> None:
        if self.stream is not None:
            self.stream.tcp_resumed_writing()
