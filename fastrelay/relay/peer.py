"""One WebSocket at the relay (a client_a or an agent), as a thin picows listener.

The listener only sorts picows events for the switch: whole binary messages
go to `Switch.receive` with the time, pongs prove the peer alive, CLOSE frames
get their reply, and anything else a peer must not send (text, fragments)
fails the connection. It is also the switch's `Link` (close, ping) for this
connection, and reports a write buffer past the budget (`pause_writing`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from picows import WSCloseCode, WSFrame, WSMsgType, WSTransport, picows

from fastrelay.io.mux import MuxWriter, bound_reads
from fastrelay.protocol.errors import ProtocolError
from fastrelay.protocol.messages import DEFAULT_POOL
from fastrelay.protocol.switch import Conn

if TYPE_CHECKING:
    from fastrelay.relay.server import Relay

_BINARY = WSMsgType.BINARY
_CLOSE = WSMsgType.CLOSE
_PONG = WSMsgType.PONG
_PING = WSMsgType.PING
_now = time.monotonic
CLOSE_DRAIN_LIMIT = 64 * 1024  # a closing connection's queue sent before it hangs up


class Peer(picows.WSListener):  # peer.pxd: a C extension type when compiled
    def __init__(
        self,
        relay: Relay,
        role: str,
        remote: str = "unknown",
        token: int = 0,
        pool: str = DEFAULT_POOL,
        rules: bool = False,
    ) -> None:
        super().__init__()
        self.rules = rules  # a client_a that asked for RULES
        self.pool = pool  # an agent's, from its X-Fastrelay-Pool header
        self.relay = relay
        self.switch = relay.switch
        self.scheduler = relay.scheduler
        self.role = role
        self.remote = remote  # the socket's peer address, for logs
        self.token = token
        self.ping_sent_at = 0.0
        self.transport: WSTransport | None = None
        self.writer: MuxWriter | None = None
        self.conn: Conn | None = None
        self.closed = False
        self.forwarded_for: str | None = None  # X-Forwarded-For at the upgrade, for logs
        self.close_reason: str | None = None  # who closed, with what code; for the log

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        bound_reads(transport)
        # The endpoints accept messages at least as large as this relay's (HELLO).
        self.writer = MuxWriter(transport, self.relay.scheduler, self.relay.config.max_frame_size)
        # Past the budget, pause_writing() reports it and the switch cuts this
        # connection off; nothing else is ever paused for it.
        budget = self.relay.config.max_connection_buffer
        transport.underlying_transport.set_write_buffer_limits(high=budget, low=budget // 4)
        self.conn = Conn(
            self.role, self.writer, self, self.token, self.remote, self.pool, self.rules
        )
        self.switch.attach(self.conn, _now())
        self.relay.peer_connected(self)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        conn = self.conn
        assert conn is not None
        scheduler = self.scheduler
        scheduler.in_frame = True  # what this frame makes goes out after the read's last one
        try:
            msg_type = frame.msg_type  # one enum conversion per frame (~0.2 us each)
            if msg_type == _BINARY and frame.fin:
                self.switch.receive(conn, frame.get_payload_as_memoryview(), _now())
            elif msg_type == _PONG:
                self.switch.heard(conn, _now())
            elif msg_type == _CLOSE:
                self.closed_by_peer(transport, frame)
            elif msg_type != _PING:
                error = ProtocolError(
                    f"unexpected WebSocket {WSMsgType(msg_type).name} frame (fin={frame.fin}): "
                    "fastrelay sends whole binary messages only"
                )
                self.switch.fail(conn, error, _now())
        finally:
            scheduler.frame_done(frame.last_in_buffer)

    def closed_by_peer(self, transport: WSTransport, frame: WSFrame) -> None:
        """The peer's CLOSE: remember why (for the log), answer it, hang up."""
        if self.close_reason is None:
            message = (frame.get_close_message() or b"").decode("utf-8", "replace")[:120]
            code = int(frame.get_close_code().value)
            self.close_reason = f"closed by peer ({code}{' ' + message if message else ''})"
        transport.send_close(frame.get_close_code())
        transport.disconnect()

    # --- switch.Link ---

    def close(self, code: int, reason: str) -> None:
        transport = self.transport
        if transport is not None and not self.closed:
            # A graceful disconnect waits for the queue to drain: for a peer cut
            # off because it does not read, that would keep its whole queue in
            # memory until the ping timeout. Past a small queue, drop it now.
            graceful = self.write_buffer_size() <= CLOSE_DRAIN_LIMIT
            self.closed = True
            if self.close_reason is None:
                self.close_reason = f"closed by relay ({int(code)} {reason})"
            transport.send_close(WSCloseCode(code), reason.encode()[:120])
            transport.disconnect(graceful=graceful)
        if self.writer is not None:
            self.writer.close()  # nothing more leaves for a closed connection

    def ping(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.send_ping()

    # picows' auto-ping calls these two; timing them gives the round trip.
    # is_user_specific_pong runs for each frame only while a pong is due.
    def send_user_specific_ping(self, transport: WSTransport) -> None:
        self.ping_sent_at = _now()
        transport.send_ping()

    def is_user_specific_pong(self, frame: WSFrame) -> bool:
        if frame.msg_type != _PONG:
            return False
        now = _now()
        self.relay.stats.ping_rtt[self.role].observe(now - self.ping_sent_at)
        if self.conn is not None:
            self.switch.heard(self.conn, now)
        return True

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.closed = True
        if self.conn is not None:
            self.switch.detach(self.conn, _now())
            self.relay.peer_disconnected(self, self.close_reason or "connection lost")
        if self.writer is not None:
            self.writer.close()

    def pause_writing(self) -> None:
        if self.conn is not None:
            self.switch.over_budget(self.conn, self.write_buffer_size(), _now())

    def resume_writing(self) -> None:
        pass

    def write_buffer_size(self) -> int:
        if self.transport is None or self.closed:
            return 0
        return int(self.transport.underlying_transport.get_write_buffer_size())

    def __repr__(self) -> str:
        return f"<Peer {self.role} {self.remote}>"
