"""One WebSocket at the relay (a client_a or an agent), as a thin picows listener.

The listener only sorts picows events: whole binary messages go to
`Relay.route`, CLOSE frames get their reply, and anything else a peer must not
send (text, fragments) closes the connection with a protocol error.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport

from fastrelay.io.mux import MuxWriter
from fastrelay.protocol.errors import ProtocolError
from fastrelay.protocol.state import ACCEPTS_DATA_DOWN, ACCEPTS_DATA_UP

if TYPE_CHECKING:
    from fastrelay.relay.server import Relay, RelayStream

_BINARY = WSMsgType.BINARY
_CLOSE = WSMsgType.CLOSE
_PONG = WSMsgType.PONG
_PING = WSMsgType.PING


class Peer(WSListener):
    def __init__(self, relay: Relay, role: str, remote: str = "unknown") -> None:
        super().__init__()
        self.relay = relay
        self.role = role
        self.remote = remote  # the socket's peer address, for logs
        self.ping_sent_at = 0.0
        self.is_client = role == "client"
        # The data a peer may send: upstream from client_a, downstream from agents.
        self.accepts_data = ACCEPTS_DATA_UP if self.is_client else ACCEPTS_DATA_DOWN
        self.streams: dict[int, RelayStream] = {}
        self.stream_id_base = 0
        self.transport: WSTransport | None = None
        self.writer: MuxWriter | None = None
        self.data_bytes = 0  # TUNNEL_DATA payload bytes received from this peer
        self.data_frames = 0  # and frames
        self.draining = False  # an agent that sent GOAWAY takes no new streams
        self.closed = False
        self.write_paused = False
        self.blocked_by = 0  # how many destinations have paused our reading
        self.paused_feeders: set[Peer] = set()

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.writer = MuxWriter(transport, self.relay.scheduler)
        high = self.relay.config.ws_buffer_high
        transport.underlying_transport.set_write_buffer_limits(high=high, low=high // 4)
        self.relay.attach(self)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type  # one enum conversion per frame (~0.2 us each)
        try:
            if msg_type is _BINARY and frame.fin:
                self.relay.route(self, frame.get_payload_as_memoryview())
            elif msg_type is _CLOSE:
                transport.send_close(frame.get_close_code())
                transport.disconnect()
            elif msg_type is not _PONG and msg_type is not _PING:
                raise ProtocolError(
                    f"unexpected WebSocket {msg_type.name} frame (fin={frame.fin}): "
                    "fastrelay sends whole binary messages only"
                )
        except ProtocolError as exc:
            self.fail(exc)

    def fail(self, exc: ProtocolError) -> None:
        """Close this WebSocket, and only this one, for a protocol error."""
        self.relay.stats.count_protocol_error(exc.kind)
        self.relay.log_protocol_error(self, exc)
        if self.transport is not None and not self.closed:
            reason = str(exc).encode()[:120]  # a close reason must fit a control frame
            self.transport.send_close(WSCloseCode(exc.close_code), reason)
            self.transport.disconnect()

    # picows' auto-ping calls these two; timing them gives the round trip.
    # is_user_specific_pong runs for each frame only while a pong is due.
    def send_user_specific_ping(self, transport: WSTransport) -> None:
        self.ping_sent_at = time.monotonic()
        transport.send_ping()

    def is_user_specific_pong(self, frame: WSFrame) -> bool:
        if frame.msg_type is not _PONG:
            return False
        self.relay.stats.ping_rtt[self.role].observe(time.monotonic() - self.ping_sent_at)
        return True

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.closed = True
        self.relay.detach(self)

    def pause_writing(self) -> None:
        self.write_paused = True
        self.relay.backpressure.pause_feeders(self)

    def resume_writing(self) -> None:
        self.write_paused = False
        self.relay.backpressure.resume_feeders(self)

    def write_buffer_size(self) -> int:
        if self.transport is None or self.closed:
            return 0
        return int(self.transport.underlying_transport.get_write_buffer_size())

    def pause_reading(self) -> None:
        if self.blocked_by == 0 and self.transport is not None and not self.closed:
            self.transport.underlying_transport.pause_reading()
        self.blocked_by += 1

    def resume_reading(self) -> None:
        self.blocked_by -= 1
        if self.blocked_by == 0 and self.transport is not None and not self.closed:
            self.transport.underlying_transport.resume_reading()

    def __repr__(self) -> str:
        return f"<Peer {self.role} streams={len(self.streams)}>"
