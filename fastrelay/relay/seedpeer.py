"""A seed-dialect WebSocket (`/v1/seed`) at the relay, as a thin picows listener.

The decisions are `fastrelay.protocol.seed.SeedConnection`'s; this module
carries them out. To the switch the connection is one more client_a
connection (`Conn` role "client", its own stream-id range, the client
tokens' limits): the seed machine writes mux frames into `Switch.receive`
and reads the frames the switch routes to it from `SeedOut.write`.

Towards Client A: each TUNNEL_DATA goes out as its JSON header and then the
payload as one binary message straight from the agent's read buffer (no
copy here; aiofastnet copies only an unsent tail). The write buffer's
watermarks are the backpressure: above the high mark the machine stops
returning credit to the agents, below the low mark it returns what it owes.
A write buffer over the relay's per-connection budget cuts the connection
off (1008), as for any connection. From Client A: past the held-bytes
bounds the machine pauses reading this socket, and resumes it when the
agent's credit lets the held bytes go.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from picows import WSFrame, WSMsgType, WSTransport

from fastrelay.io.mux import bound_reads
from fastrelay.protocol.errors import BudgetExceeded, ProtocolError
from fastrelay.protocol.output import Output
from fastrelay.protocol.seed import OP_BINARY, OP_CONTINUATION, OP_TEXT, SeedConnection, SeedError
from fastrelay.protocol.switch import Conn
from fastrelay.relay.peer import Peer, _now

if TYPE_CHECKING:
    from fastrelay.relay.server import Relay

_TEXT = WSMsgType.TEXT
_BINARY = WSMsgType.BINARY
_CONTINUATION = WSMsgType.CONTINUATION
_CLOSE = WSMsgType.CLOSE
_PONG = WSMsgType.PONG
_PING = WSMsgType.PING
log = logging.getLogger("fastrelay.relay")
_OPCODES = {_TEXT: OP_TEXT, _BINARY: OP_BINARY, _CONTINUATION: OP_CONTINUATION}
# The seed WebSocket's write-buffer watermarks: credit is returned only below LOW.
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024


class SeedOut(Output):
    """The switch's `Output` for a seed connection: mux frames in, seed messages out."""

    __slots__ = ("peer",)

    def __init__(self, peer: SeedPeer) -> None:
        self.peer = peer

    def write(self, frames: bytes | bytearray | memoryview) -> None:
        peer = self.peer
        if peer.closed:
            return
        peer.inside = True
        try:
            peer.machine.from_switch(memoryview(frames))
        except Exception:  # a bug here must not close the agent's connection, which is
            # the one whose message the switch is routing: close this seed connection only
            log.exception("seed bridge failed on frames from the switch")
            peer.fail(ProtocolError("internal error in the seed bridge"))
        finally:
            peer.inside = False


class SeedPeer(Peer):
    """One seed WebSocket: the `Link` and `Sink` of its `SeedConnection`."""

    def __init__(self, relay: Relay, remote: str = "unknown", token: int = 0) -> None:
        super().__init__(relay, "client", remote, token)
        config = relay.config
        self.dialect = "seed"
        self.machine = SeedConnection(
            self,
            window=config.seed_window,
            budget=config.max_connection_buffer,
            max_sessions=config.max_streams_per_connection,
            max_data=config.max_frame_size,
            stats=relay.seed_stats,
        )
        self.inside = False  # in SeedOut.write: frames for the switch wait a moment
        self.deferred: list[bytes | bytearray] = []
        self.backed = False  # the write buffer is above the high-water mark

    # --- picows ---

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        bound_reads(transport)
        transport.underlying_transport.set_write_buffer_limits(high=HIGH_WATER, low=LOW_WATER)
        self.conn = Conn("client", SeedOut(self), self, self.token, self.remote)
        self.relay.seed_peers[self] = None
        if self.switch.attach(self.conn, _now()):
            self.machine.id_base = self.conn.id_base
        self.relay.peer_connected(self)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        conn = self.conn
        assert conn is not None
        scheduler = self.scheduler
        scheduler.in_frame = True
        try:
            msg_type = frame.msg_type
            opcode = _OPCODES.get(msg_type)
            if opcode is not None:
                if conn.failed:
                    return
                conn.last_rx = _now()
                try:
                    self.machine.frame(opcode, frame.get_payload_as_memoryview(), frame.fin)
                except ProtocolError as exc:  # SeedError (1002), BudgetExceeded (1008)
                    if isinstance(exc, BudgetExceeded):
                        self.switch.stats.limits["connection_buffer"] += 1
                    self.fail(exc)
            elif msg_type is _PONG:
                self.switch.heard(conn, _now())
            elif msg_type is _CLOSE:
                self.closed_by_peer(transport, frame)
            elif msg_type is not _PING:  # pragma: no cover - picows knows no other type
                self.fail(SeedError(f"unexpected WebSocket {msg_type.name} frame"))
        finally:
            scheduler.frame_done(frame.last_in_buffer)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.relay.seed_peers.pop(self, None)
        super().on_ws_disconnected(transport)

    def fail(self, exc: ProtocolError) -> None:
        assert self.conn is not None
        self.switch.fail(self.conn, exc, _now())

    def pause_writing(self) -> None:
        self.backed = True
        self._check_budget()

    def resume_writing(self) -> None:
        self.backed = False
        if not self.closed and self.conn is not None and not self.conn.failed:
            self.machine.drained()

    def _check_budget(self) -> None:
        if self.conn is not None:
            size = self.write_buffer_size()
            if size > self.relay.config.max_connection_buffer:
                self.switch.over_budget(self.conn, size, _now())

    # --- seed.Sink ---

    def to_switch(self, frames: bytes | bytearray) -> None:
        conn = self.conn
        if conn is None or conn.failed:
            return
        if self.inside or self.deferred:  # called from the switch's routing, or frames
            # from there still wait: let that finish first, and keep the bytes in order
            self.deferred.append(frames)
            if len(self.deferred) == 1:
                self.relay.loop.call_soon(self._flush_deferred)
            return
        self.switch.receive(conn, memoryview(frames), _now())

    def _flush_deferred(self) -> None:
        deferred, self.deferred = self.deferred, []
        conn = self.conn
        for frames in deferred:
            if conn is None or conn.failed:
                return
            self.switch.receive(conn, memoryview(frames), _now())

    def to_client(self, text: bytes) -> None:
        transport = self.transport
        if transport is not None and not self.closed:
            transport.send(_TEXT, text)

    def to_client_data(self, header: bytes, data: memoryview) -> None:
        transport = self.transport
        if transport is not None and not self.closed:
            transport.send(_TEXT, header)
            transport.send(_BINARY, data)
            if self.backed:
                self._check_budget()

    def backed_up(self) -> bool:
        return self.backed

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.underlying_transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.underlying_transport.resume_reading()

    def __repr__(self) -> str:
        return f"<SeedPeer {self.remote}>"
