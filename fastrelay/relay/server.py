"""The relay's routing core: opens, forwards and closes streams between peers.

`route` is the per-message hot path. TUNNEL_DATA is forwarded with its header
as a view of picows' read buffer (valid only during `on_ws_frame`, which is
where `route` runs): no copy for frames of 8 KiB and more, and small frames
are coalesced per destination by `MuxWriter`. Stream ids are unique
relay-wide (see `routing.StreamIdSlots`), so headers are never rewritten.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time

from picows import WSCloseCode, WSUpgradeRequest, WSUpgradeResponse, WSUpgradeResponseWithListener

from fastrelay.accesslog import AccessLog
from fastrelay.io.mux import FlushScheduler
from fastrelay.logs import RateLimitedLog
from fastrelay.protocol.errors import FrameError, ProtocolError, StreamError
from fastrelay.protocol.frames import (
    HEADER,
    HEADER_SIZE,
    OPEN_FRAMES,
    FrameType,
    check_header,
    decode_window_increment,
)
from fastrelay.protocol.messages import (
    ConnectResponse,
    GoAway,
    Hello,
    Members,
    OpenStream,
    TunnelError,
    format_authority,
)
from fastrelay.protocol.state import Event, State, next_state
from fastrelay.relay.backpressure import Backpressure
from fastrelay.relay.cluster import RedisMembership, StaticMembership
from fastrelay.relay.config import RelayConfig
from fastrelay.relay.peer import Peer
from fastrelay.relay.routing import SLOT_SIZE, AgentPool, StreamIdSlots
from fastrelay.relay.stats import RelayStats

log = logging.getLogger("fastrelay.relay")

ROLE_PATHS = {b"/v1/client": "client", b"/v1/agent": "agent"}
_TUNNEL_DATA = int(FrameType.TUNNEL_DATA)
_TUNNELING = State.TUNNELING  # the common case, tested by identity before the set
_unpack = HEADER.unpack_from


class RelayStream:
    __slots__ = (
        "agent",
        "client",
        "opened_at",
        "session_id",
        "sid",
        "state",
        "target",
        "timer",
    )

    def __init__(
        self, sid: int, session_id: str, client: Peer, agent: Peer, state: State, target: str
    ) -> None:
        self.sid = sid
        self.session_id = session_id
        self.client = client
        self.agent = agent
        self.state = state
        self.target = target
        self.timer: asyncio.TimerHandle | None = None
        self.opened_at = time.monotonic()


class Relay:
    def __init__(
        self, config: RelayConfig, instance_id: str, access_log: AccessLog | None = None
    ) -> None:
        self.config = config
        self.instance_id = instance_id
        self.loop = asyncio.get_running_loop()
        self.scheduler = FlushScheduler(self.loop)
        self.stats = RelayStats()
        self.backpressure = Backpressure(self.stats)
        self.agents: AgentPool[Peer] = AgentPool()
        self.clients: set[Peer] = set()
        self.slots = StreamIdSlots()
        self.draining = False
        self.members: tuple[str, ...] = (instance_id,)
        self.membership: StaticMembership | RedisMembership | None = None  # set by the app
        self.auth_log = RateLimitedLog(log)
        self.access_log = access_log
        self._tokens = {
            "client": [t.encode() for t in config.client_tokens],
            "agent": [t.encode() for t in config.agent_tokens],
        }

    # --- the WebSocket upgrade: authentication before any state exists ---

    def listener_factory(
        self, request: WSUpgradeRequest, peer: str
    ) -> WSUpgradeResponseWithListener | None:
        role = ROLE_PATHS.get(request.path.split(b"?", 1)[0])
        if role is None:
            return None  # picows answers 404
        if not self._authorized(role, request.headers.get("authorization")):
            self.stats.auth_failures[role] += 1
            fields = {"role": role, "peer": peer}
            forwarded = request.headers.get("x-forwarded-for")
            if forwarded:  # behind a load balancer the socket peer is the balancer
                fields["forwarded_for"] = forwarded[:200]
            self.auth_log.warning("rejected WebSocket upgrade: bad or missing token", **fields)
            return WSUpgradeResponseWithListener(
                WSUpgradeResponse.create_error_response(
                    401,
                    b"invalid or missing bearer token\n",
                    extra_headers={"WWW-Authenticate": 'Bearer realm="fastrelay"'},
                ),
                None,
            )
        if self.draining:
            return WSUpgradeResponseWithListener(
                WSUpgradeResponse.create_error_response(503, b"relay is shutting down\n"), None
            )
        return WSUpgradeResponseWithListener(
            WSUpgradeResponse.create_101_response(
                extra_headers={"X-Fastrelay-Instance": self.instance_id}
            ),
            Peer(self, role, peer),
        )

    def _authorized(self, role: str, header: str | None) -> bool:
        if not header or header[:7].lower() != "bearer ":
            return False
        offered = header[7:].strip().encode()
        ok = False
        for token in self._tokens[role]:  # compare with every token: no early exit to time
            ok |= hmac.compare_digest(offered, token)
        return ok

    # --- connection lifecycle ---

    def attach(self, peer: Peer) -> None:
        assert peer.writer is not None and peer.transport is not None
        if peer.is_client:
            base = self.slots.acquire()
            if base is None:
                peer.transport.send_close(WSCloseCode.TRY_AGAIN_LATER, b"no stream id range free")
                peer.transport.disconnect()
                return
            peer.stream_id_base = base
            self.clients.add(peer)
            hello = Hello(self.instance_id, stream_id_base=base, stream_id_count=SLOT_SIZE)
        else:
            self.agents.add(peer)
            hello = Hello(self.instance_id)
        self.stats.connections_opened[peer.role] += 1
        peer.writer.write(hello.encode())
        if not peer.is_client:
            peer.writer.write(Members(self.members).encode())
        if self.draining:
            peer.writer.write(GoAway("relay is shutting down").encode())

    def detach(self, peer: Peer) -> None:
        if peer.is_client:
            if peer in self.clients:
                self.clients.discard(peer)
                self.slots.release(peer.stream_id_base)
                self.stats.connections_closed["client"] += 1
            self.stats.closed_bytes_up += peer.data_bytes
            self.stats.closed_frames_up += peer.data_frames
            reason = "client_a disconnected"
        else:
            if peer in self.agents.agents:
                self.agents.remove(peer)
                self.stats.connections_closed["agent"] += 1
            self.stats.closed_bytes_down += peer.data_bytes
            self.stats.closed_frames_down += peer.data_frames
            reason = "agent disconnected"
        peer.data_bytes = peer.data_frames = 0
        for stream in list(peer.streams.values()):
            other = stream.agent if peer.is_client else stream.client
            self._send(other, TunnelError(stream.session_id, reason).encode(stream.sid))
            self._close(stream, "error" if stream.state in _OPENING else None, aborted=True)
        self.backpressure.forget(peer)
        if peer.writer is not None:
            peer.writer.close()

    def membership_errors(self) -> int:
        return 0 if self.membership is None else self.membership.errors

    def set_members(self, members: tuple[str, ...]) -> None:
        """The live relay set changed: every agent hears it (its mesh follows)."""
        if members == self.members:
            return
        self.members = members
        frame = Members(members).encode()
        for agent in self.agents.agents:
            self._send(agent, frame)

    def start_draining(self) -> None:
        self.draining = True
        goaway = GoAway("relay is shutting down").encode()
        for peer in [*self.clients, *self.agents.agents]:
            self._send(peer, goaway)

    @property
    def active_streams(self) -> int:
        return sum(len(c.streams) for c in self.clients)

    # --- the hot path ---

    def route(self, src: Peer, message: memoryview) -> None:
        """Handle every mux frame of one WebSocket message from `src`.

        Consecutive TUNNEL_DATA frames bound for the same peer are forwarded as
        one slice of the message (one write, and no copy once the run reaches
        8 KiB): a message of 100 small frames costs about a third as much as
        100 separate writes (bench/micro/test_forward_bench.py).
        """
        total = len(message)
        offset = 0
        streams = src.streams
        accepts = src.accepts_data
        is_client = src.is_client
        run_dest: Peer | None = None  # the open run: message[run_start:offset] goes to run_dest
        run_start = 0
        data_bytes = data_frames = 0
        try:
            while offset < total:
                if total - offset < HEADER_SIZE:
                    raise FrameError(f"truncated header: {total - offset} bytes left")
                frame_type, _flags, sid, length = _unpack(message, offset)
                end = offset + HEADER_SIZE + length
                if frame_type == _TUNNEL_DATA:
                    if end > total:
                        raise FrameError(f"truncated frame: header says {length} payload bytes")
                    stream = streams.get(sid)
                    state = None if stream is None else stream.state
                    if state is _TUNNELING or state in accepts:
                        dest = stream.agent if is_client else stream.client  # type: ignore[union-attr]
                        if dest is not run_dest:
                            if run_dest is not None:
                                run_dest.writer.write(message[run_start:offset])  # type: ignore[union-attr]
                            run_dest, run_start = dest, offset
                        data_bytes += length
                        data_frames += 1
                        offset = end
                        continue
                    if stream is None:
                        self.stats.dropped_unknown_stream += 1
                    else:
                        event = Event.DATA_UP if is_client else Event.DATA_DOWN
                        self.stats.count_protocol_error("illegal_transition")
                        self._abort(stream, f"{event.value} not allowed in {state.value}")  # type: ignore[union-attr]
                else:
                    check_header(frame_type, sid, length, total - offset - HEADER_SIZE)
                    if run_dest is not None:  # keep the order: data before this control frame
                        run_dest.writer.write(message[run_start:offset])  # type: ignore[union-attr]
                        run_dest = None
                    self._control(
                        src,
                        frame_type,
                        sid,
                        message[offset + HEADER_SIZE : end],
                        message[offset:end],
                    )
                if run_dest is not None:  # a dropped frame ends the run
                    run_dest.writer.write(message[run_start:offset])  # type: ignore[union-attr]
                    run_dest = None
                offset = end
        finally:
            # Frames before a malformed one were valid and are passed on.
            if run_dest is not None:
                run_dest.writer.write(message[run_start:offset])  # type: ignore[union-attr]
            src.data_bytes += data_bytes
            src.data_frames += data_frames

    # --- control frames ---

    def _control(
        self, src: Peer, frame_type: int, sid: int, payload: memoryview, raw: memoryview
    ) -> None:
        if frame_type in OPEN_FRAMES:
            self._open(src, FrameType(frame_type), sid, payload, raw)
            return
        if frame_type == FrameType.HELLO:
            Hello.decode(payload)  # peers may announce themselves; the version must match
            return
        if frame_type == FrameType.GOAWAY:
            GoAway.decode(payload)
            src.draining = True
            return
        stream = src.streams.get(sid)
        if stream is None:
            self.stats.dropped_unknown_stream += 1
            return
        try:
            if frame_type == FrameType.CONNECT_RESPONSE:
                self._answer(src, stream, ConnectResponse.decode(payload), raw)
            elif frame_type == FrameType.TUNNEL_ERROR:
                TunnelError.decode(payload)
                self._send(stream.agent if src.is_client else stream.client, raw)
                self._close(stream, "error" if stream.state in _OPENING else None, aborted=True)
            elif frame_type == FrameType.FIN:
                self._advance(stream, Event.FIN_UP if src.is_client else Event.FIN_DOWN, src, raw)
            elif frame_type == FrameType.WINDOW_UPDATE:
                decode_window_increment(payload)
                event = Event.WINDOW_DOWN if src.is_client else Event.WINDOW_UP
                self._advance(stream, event, src, raw)
        except StreamError as exc:
            self.stats.count_protocol_error(exc.kind)
            self._abort(stream, str(exc))
        except ProtocolError:
            raise
        except Exception:  # a bug must cost one stream, not every stream on the connection
            self.stats.count_protocol_error("internal_error")
            log.exception("internal error on stream %s; aborting it", stream.session_id)
            self._abort(stream, "internal error")

    def _open(self, src: Peer, kind: FrameType, sid: int, payload: memoryview, raw: memoryview):
        if not src.is_client:
            raise ProtocolError(f"agents do not open streams (got {kind.name})")
        request = OpenStream.decode(kind, payload)
        if not src.stream_id_base <= sid < src.stream_id_base + SLOT_SIZE:
            raise ProtocolError(f"stream id {sid} is outside the range this relay assigned")
        if sid in src.streams:
            raise ProtocolError(f"stream id {sid} is already open")
        agent = None if self.draining else self.agents.pick()
        if agent is None:
            # Both are worth one retry on another relay (client_a does that).
            reason = "draining" if self.draining else "no_agent"
            why = "relay is shutting down" if self.draining else "no agent connected"
            self._send(
                src, ConnectResponse(request.session_id, 503, why, reason=reason).encode(sid)
            )
            self.stats.results["no_agent"] += 1
            if self.access_log is not None:
                self.access_log.write(
                    session=request.session_id,
                    client=src.remote,
                    target=format_authority(request.host, request.port),
                    route="relay",
                    result="no_agent",
                    bytes_up=None,
                    bytes_down=None,
                )
            return
        state = State.CONNECT_REQUEST if kind == FrameType.CONNECT else State.REQUEST
        stream = RelayStream(
            sid, request.session_id, src, agent, state, format_authority(request.host, request.port)
        )
        src.streams[sid] = agent.streams[sid] = stream
        stream.timer = self.loop.call_later(self.config.connect_timeout, self._expire, stream)
        self._send(agent, raw)

    def _answer(self, src: Peer, stream: RelayStream, response: ConnectResponse, raw) -> None:
        if src.is_client:
            raise StreamError("client_a sent CONNECT_RESPONSE")
        stream.state = next_state(
            stream.state, Event.RESPONSE_OK if response.ok else Event.RESPONSE_FAIL
        )
        if stream.timer is not None:
            stream.timer.cancel()
            stream.timer = None
        self.stats.open_latency.observe(time.monotonic() - stream.opened_at)
        self._send(stream.client, raw)
        if response.ok:
            self.stats.results["ok"] += 1
        else:
            self._close(stream, _result_of(response))

    def _advance(self, stream: RelayStream, event: Event, src: Peer, raw: memoryview) -> None:
        stream.state = next_state(stream.state, event)
        self._send(stream.agent if src.is_client else stream.client, raw)
        if stream.state is State.CLOSED:
            self._close(stream, None)

    def _expire(self, stream: RelayStream) -> None:
        stream.timer = None
        if stream.state not in _OPENING or stream.sid not in stream.client.streams:
            return
        timeout = self.config.connect_timeout
        self._send(
            stream.client,
            ConnectResponse(
                stream.session_id, 504, f"no answer from the agent within {timeout:g} s"
            ).encode(stream.sid),
        )
        self._send(
            stream.agent, TunnelError(stream.session_id, "connect timeout").encode(stream.sid)
        )
        self._close(stream, "timeout")

    def _abort(self, stream: RelayStream, reason: str) -> None:
        """TUNNEL_ERROR to both ends, for a stream that broke the rules."""
        frame = TunnelError(stream.session_id, reason).encode(stream.sid)
        self._send(stream.client, frame)
        self._send(stream.agent, frame)
        self._close(stream, "error" if stream.state in _OPENING else None, aborted=True)

    def _close(self, stream: RelayStream, result: str | None, aborted: bool = False) -> None:
        """`result` is the open's outcome if it never opened; None for a
        tunnel that opened (its "ok" was counted then). `aborted`: it ended
        with TUNNEL_ERROR or a lost connection, not with FINs."""
        opened = result is None
        stream.state = State.CLOSED
        stream.client.streams.pop(stream.sid, None)
        stream.agent.streams.pop(stream.sid, None)
        if stream.timer is not None:
            stream.timer.cancel()
            stream.timer = None
        if result is not None:
            self.stats.results[result] += 1
        duration = time.monotonic() - stream.opened_at
        if opened:
            self.stats.stream_duration.observe(duration)
        if self.access_log is not None:
            self.access_log.write(
                session=stream.session_id,
                client=stream.client.remote,
                target=stream.target,
                route="relay",
                result=result or ("aborted" if aborted else "ok"),
                # No per-tunnel bytes here: counting them cost ~25 ns per
                # forwarded frame (6 % at 100-byte frames, bench/micro
                # test_forward_bench.py); client_a's and the agent's lines
                # for the same session have them.
                bytes_up=None,
                bytes_down=None,
                duration=duration,
                agent=stream.agent.remote,
            )

    def _send(self, peer: Peer, frames: bytes | memoryview) -> None:
        if peer.writer is not None and not peer.closed:
            peer.writer.write(frames)

    def log_protocol_error(self, peer: Peer, exc: ProtocolError) -> None:
        log.warning(
            "closing %s connection: %s", peer.role, exc, extra={"fields": {"kind": exc.kind}}
        )


_OPENING = frozenset({State.REQUEST, State.CONNECT_REQUEST})


def _result_of(response: ConnectResponse) -> str:
    if response.status_code == 403:
        return "denied"
    if response.status_code == 504:
        return "timeout"
    if response.status_code == 502 and response.reason == "refused":
        return "refused"
    if response.status_code == 502:
        return "dial_failed"
    return "error"
