"""The endpoint session (fastrelay/protocol/session.py): flow control, half-close,
open expiry and how streams end, with a recording link and sockets. No sockets,
no asyncio: each test runs in microseconds."""

from __future__ import annotations

import pytest

from fastrelay.protocol.errors import CLOSE_GOING_AWAY, CLOSE_POLICY_VIOLATION, FrameError
from fastrelay.protocol.flow import MIN_WINDOW, PROBE_INTERVAL, QUEUE_HIGH, QUEUE_LOW
from fastrelay.protocol.frames import (
    FLAG_BLOCKED,
    HEADER_SIZE,
    FrameType,
    decode_window_increment,
    encode_frame,
    encode_probe,
    encode_probe_answer,
    encode_window_update,
    iter_frames,
)
from fastrelay.protocol.messages import (
    ConnectResponse,
    GoAway,
    Hello,
    Members,
    OpenStream,
    TunnelError,
)
from fastrelay.protocol.rules import PushedRules
from fastrelay.protocol.session import (
    AGENT_SIDE,
    BULK_MESSAGE,
    CLIENT_SIDE,
    MAX_CHUNK,
    End,
    Paused,
    Session,
    SessionStats,
    Side,
    Stream,
)
from fastrelay.protocol.session import Link as SessionLink
from fastrelay.protocol.state import State

DATA, FIN, WINDOW, ERROR, RESPONSE = (
    FrameType.TUNNEL_DATA,
    FrameType.FIN,
    FrameType.WINDOW_UPDATE,
    FrameType.TUNNEL_ERROR,
    FrameType.CONNECT_RESPONSE,
)
BASE = 1 << 16  # the client's stream-id range, from HELLO
NOW = 100.0


class Link(SessionLink):
    """Records every frame the session writes, and a close."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed: tuple[int, str] | None = None
        self.probes = 0

    def write(self, frames: bytes | bytearray | memoryview) -> None:
        self.sent.append(bytes(frames))

    def write_external(self, buf: bytearray, offset: int) -> None:
        self.sent.append(bytes(buf[offset:]))

    def disconnect(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def probe(self) -> None:
        self.probes += 1

    def frames(self, sid: int | None = None) -> list[tuple[FrameType, bytes]]:
        out = []
        for message in self.sent:
            view = memoryview(message)
            for ftype, _flags, fsid, off, length in iter_frames(view):
                if sid is None or fsid == sid:
                    out.append((FrameType(ftype), bytes(view[off : off + length])))
        return out

    def clear(self) -> None:
        self.sent.clear()


class Events:
    """Records the session's events; as an agent, accepts every open."""

    def __init__(self) -> None:
        self.log: list[tuple] = []
        self.ended: list[Stream] = []
        self.sockets: dict[int, FakeSocket] = {}
        self.accept = True

    def on_hello(self, session: Session, hello: Hello) -> None:
        self.log.append(("hello", hello.instance_id))

    def on_hello_refused(self, session: Session, why: str) -> None:
        self.log.append(("hello_refused", why))

    def on_goaway(self, session: Session, reason: str) -> None:
        self.log.append(("goaway", reason))

    def on_members(self, session: Session, members: Members) -> None:
        self.log.append(("members", members.instances))

    def on_rules(self, session: Session, pushed: PushedRules) -> None:
        self.log.append(("rules", pushed.version))

    def on_rules_refused(self, session: Session, why: str) -> None:
        self.log.append(("rules_refused", why))

    def on_open(self, session: Session, stream: Stream, request: OpenStream) -> None:
        self.log.append(("open", stream.sid, request.host))
        if self.accept:
            socket = self.sockets[stream.sid] = FakeSocket()
            stream.owner = socket  # the sid may be reused: each stream keeps its own
            stream.attach(socket)
            stream.accept(request.window, NOW)

    def on_opened(self, session: Session, stream: Stream) -> None:
        self.log.append(("opened", stream.sid))

    def on_stream_end(self, session: Session, stream: Stream) -> None:
        self.ended.append(stream)

    def on_internal_error(self, session: Session, stream: Stream, exc: Exception) -> None:
        self.log.append(("internal_error", stream.sid, repr(exc)))


class FakeSocket:
    def __init__(self) -> None:
        self.written = bytearray()
        self.calls: list[str] = []
        self.closing = False

    def write(self, data: bytes | memoryview) -> None:
        assert not self.closing
        self.written += data

    def write_eof(self) -> None:
        self.calls.append("write_eof")

    def can_write_eof(self) -> bool:
        return True

    def pause_reading(self) -> None:
        self.calls.append("pause_reading")

    def resume_reading(self) -> None:
        self.calls.append("resume_reading")

    def close(self) -> None:
        self.calls.append("close")
        self.closing = True

    def abort(self) -> None:
        self.calls.append("abort")
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing


def make_session(
    side: Side = CLIENT_SIDE, window: int = 4000, open_timeout: float = 0.0, **hello: int
) -> tuple[Session, Link, Events]:
    link, events = Link(), Events()
    session = Session(
        link,
        events,
        SessionStats(),
        side=side,
        window=window,
        max_frame_size=1 << 20,
        open_timeout=open_timeout,
    )
    fields = {"stream_id_base": BASE, "stream_id_count": 1 << 16, **hello}
    session.receive(memoryview(Hello("relay-1", **fields).encode()), NOW)
    assert session.ready and events.log == [("hello", "relay-1")]
    events.log.clear()
    return session, link, events


def client_stream(
    send_window: int = 1000,
    recv_window: int = 4000,
    open_it: bool = True,
    connect: bool = True,
    probe: bool = False,
) -> tuple[Stream, Session, Link, FakeSocket]:
    """A client_a stream, opened and answered 200 with `send_window` (`probe`:
    the relay's HELLO says it answers PROBE frames)."""
    session, link, _events = make_session(window=recv_window, probe=probe)
    link.clear()  # the first probe, if it is a frame
    socket = FakeSocket()
    kind = FrameType.CONNECT if connect else FrameType.REQUEST
    stream = session.open(OpenStream(kind, "sess", "target.test", 443), socket, NOW)
    assert stream is not None and stream.sid == BASE
    assert socket.calls == []  # reading stays paused until the open succeeds
    (ftype, payload), *_ = link.frames()
    opened = OpenStream.decode(ftype, payload)
    assert (opened.host, opened.window) == ("target.test", recv_window)
    link.clear()
    if open_it:
        answer(session, stream, send_window)
        assert socket.calls == ["resume_reading"]
        socket.calls.clear()
    return stream, session, link, socket


def answer(session: Session, stream: Stream, window: int, status: int = 200, **kw: str) -> None:
    response = ConnectResponse(stream.session_id, status, window=window, **kw)
    session.receive(memoryview(response.encode(stream.sid)), NOW)


def agent_stream(
    send_window: int = 1000, recv_window: int = 4000
) -> tuple[Stream, Session, Link, FakeSocket, Events]:
    session, link, events = make_session(side=AGENT_SIDE, window=recv_window)
    request = OpenStream(FrameType.CONNECT, "sess", "target.test", 443, window=send_window)
    session.receive(memoryview(request.encode(5)), NOW)
    stream = session.streams[5]
    (ftype, payload), *_ = link.frames()
    response = ConnectResponse.decode(payload)
    assert ftype is RESPONSE and response.ok and response.window == recv_window
    link.clear()
    socket = events.sockets[5]
    assert socket.calls == ["resume_reading"]
    socket.calls.clear()
    return stream, session, link, socket, events


def data_sent(link: Link) -> bytes:
    return b"".join(payload for ftype, payload in link.frames() if ftype is DATA)


def window_updates(link: Link) -> list[int]:
    return [decode_window_increment(p) for t, p in link.frames() if t is WINDOW]


def deliver(session: Session, sid: int, payload: bytes) -> None:
    session.receive(memoryview(encode_frame(DATA, sid, payload)), NOW)


# --- socket -> relay ---


def test_data_beyond_credit_is_held_back_until_a_grant() -> None:
    stream, session, link, socket = client_stream(send_window=1000)
    payload = bytes(range(256)) * 10  # 2560 bytes
    stream.send(payload[:2000])
    assert data_sent(link) == payload[:1000]
    assert socket.calls == ["pause_reading"]
    assert session.stats.flow_control_stalls == 1
    stream.send(payload[2000:])  # a read that was already in flight
    assert data_sent(link) == payload[:1000]
    session.receive(memoryview(encode_window_update(stream.sid, 1000)), NOW)
    assert data_sent(link) == payload[:2000]
    assert socket.calls == ["pause_reading"]  # still 560 bytes held back
    session.receive(memoryview(encode_window_update(stream.sid, 560)), NOW)
    assert data_sent(link) == payload
    assert socket.calls == ["pause_reading"]  # exactly the backlog: no credit to read more
    session.receive(memoryview(encode_window_update(stream.sid, 1)), NOW)
    assert socket.calls == ["pause_reading", "resume_reading"]
    assert stream.send_window.available == 1 and stream.bytes_out == len(payload)


def test_a_full_link_pauses_a_stream_after_its_read_and_resumes_it() -> None:
    stream, session, link, socket = client_stream(send_window=1 << 20)
    stream.send(b"a" * 100)
    assert socket.calls == [] and session.waiting == []  # a free link pauses nobody
    session.set_paused(True)
    stream.send(b"b" * 100)  # this read still goes out: it is within credit
    assert data_sent(link) == b"a" * 100 + b"b" * 100
    assert socket.calls == ["pause_reading"] and session.waiting == [stream]
    stream.send(b"c" * 100)  # a read that was in flight: sent, no second pause
    assert socket.calls == ["pause_reading"] and session.waiting == [stream]
    session.set_paused(False)
    assert socket.calls == ["pause_reading", "resume_reading"]
    assert data_sent(link).endswith(b"c" * 100)
    assert session.stats.backpressure_pauses == 1


class OrderedSocket(FakeSocket):
    """A FakeSocket that also records, in a log shared with others, when it resumes."""

    def __init__(self, name: str, log: list[str]) -> None:
        super().__init__()
        self.name, self.log = name, log

    def resume_reading(self) -> None:
        super().resume_reading()
        self.log.append(self.name)


def waiting_streams(sent: list[int]) -> tuple[Session, list[Stream], list[str]]:
    """Streams that sent `sent[i]` bytes each on a free link, then one more byte each (in
    order) after the link filled, so all of them wait for it; the log is empty."""
    session, _link, _events = make_session()
    log: list[str] = []
    streams = []
    for i, n in enumerate(sent):
        socket = OrderedSocket(f"s{i}", log)
        stream = session.open(OpenStream(FrameType.CONNECT, f"s{i}", "t.test", 443), socket, NOW)
        assert stream is not None
        answer(session, stream, 1 << 20)
        if n:
            stream.send(b"x" * n)
        streams.append(stream)
    session.set_paused(True)
    for stream in streams:
        stream.send(b"y")
    assert session.waiting == streams
    log.clear()
    return session, streams, log


def test_a_drained_link_resumes_the_least_served_streams_first() -> None:
    session, streams, log = waiting_streams([3000, 100, 2000, 100])
    session.set_paused(False)
    assert log == ["s1", "s3", "s2", "s0"]  # fewest bytes first; s1 and s3 tie: queue order
    assert session.waiting == [] and all(not s.paused for s in streams)


def test_a_full_read_goes_out_from_the_read_buffer_itself() -> None:
    stream, _session, link, _socket = client_stream(send_window=1 << 20)
    buf = bytearray(4 + 10 + 300)
    buf[14:] = b"r" * 300
    assert stream.send_in_place(buf, 4, 300)
    (ftype, payload), *_ = link.frames()
    assert ftype is DATA and payload == b"r" * 300 and stream.bytes_out == 300
    stream.send_window.available = 10  # not enough credit: the caller copies instead
    assert not stream.send_in_place(buf, 4, 300)


def test_a_read_that_takes_the_last_credit_is_flagged_and_pauses_until_a_grant() -> None:
    stream, session, link, socket = client_stream(send_window=500)
    buf = bytearray(4 + 10 + 500)
    buf[14:] = b"q" * 500
    assert stream.send_in_place(buf, 4, 200, alone=False)  # credit left: no flag, reading on
    assert stream.send_in_place(buf, 4, 300, alone=False)  # the last 300: flagged, paused
    assert [(len(m) - 10, m[1]) for m in link.sent] == [(200, 0), (300, FLAG_BLOCKED)]
    assert socket.calls == ["pause_reading"] and stream.paused & Paused.CREDIT
    assert session.stats.flow_control_stalls == 1 and stream.send_window.available == 0
    link.clear()
    session.receive(memoryview(encode_window_update(stream.sid, 100)), NOW)
    assert socket.calls == ["pause_reading", "resume_reading"] and not stream.paused
    assert link.sent == []  # nothing was held back: the bytes wait in the socket


def test_frames_stay_within_the_relays_announced_message_size() -> None:
    session, link, _events = make_session(window=4000, max_frame_size=1000)
    assert session.max_chunk == 1000 - 10
    socket = FakeSocket()
    stream = session.open(OpenStream(FrameType.CONNECT, "s", "t.test", 443), socket, NOW)
    assert stream is not None
    answer(session, stream, 1 << 20)
    link.clear()
    stream.send(b"z" * 2500)
    assert [len(p) for t, p in link.frames() if t is DATA] == [990, 990, 520]
    assert not stream.send_in_place(bytearray(MAX_CHUNK + 14), 4, MAX_CHUNK)


def test_eof_while_held_back_sends_fin_after_the_data() -> None:
    stream, session, link, socket = client_stream(send_window=1000)
    stream.send(b"x" * 2500)
    stream.eof()
    assert [t for t, _ in link.frames()] == [DATA]
    session.receive(memoryview(encode_window_update(stream.sid, 1000)), NOW)
    assert [t for t, _ in link.frames()] == [DATA, DATA]
    session.receive(memoryview(encode_window_update(stream.sid, 1000)), NOW)
    assert [t for t, _ in link.frames()] == [DATA, DATA, DATA, FIN]
    assert data_sent(link) == b"x" * 2500
    assert stream.state.state is State.HALF_CLOSED_UP
    assert "close" not in socket.calls and "abort" not in socket.calls


# --- relay -> socket ---


def test_no_credit_returned_while_the_socket_is_write_paused() -> None:
    stream, session, link, socket = client_stream(recv_window=4000)  # batches of 1000
    stream.socket_paused_writing()
    deliver(session, stream.sid, b"a" * 3000)
    assert bytes(socket.written) == b"a" * 3000  # written, but the socket is backed up
    assert window_updates(link) == []
    stream.socket_resumed_writing()
    assert window_updates(link) == [3000]
    # Below the threshold, credit is batched even after a resume.
    stream.socket_paused_writing()
    deliver(session, stream.sid, b"b" * 400)
    stream.socket_resumed_writing()
    assert window_updates(link) == [3000]
    deliver(session, stream.sid, b"c" * 599)
    assert window_updates(link) == [3000]
    deliver(session, stream.sid, b"d")
    assert window_updates(link) == [3000, 1000]
    assert stream.recv_window.outstanding == 4000


def test_a_stream_that_overruns_its_window_is_aborted_alone() -> None:
    stream, session, link, socket = client_stream(recv_window=4000)
    other_socket = FakeSocket()
    other = session.open(OpenStream(FrameType.CONNECT, "o", "t.test", 443), other_socket, NOW)
    assert other is not None
    answer(session, other, 1000)
    link.clear()
    stream.socket_paused_writing()  # nothing comes back while the socket is backed up
    message = encode_frame(DATA, stream.sid, b"a" * 4000) + encode_frame(DATA, stream.sid, b"!")
    session.receive(memoryview(message + encode_frame(DATA, other.sid, b"ok")), NOW)
    assert bytes(socket.written) == b"a" * 4000  # the excess never reached the socket
    assert socket.calls[-1] == "abort"
    frames = link.frames()
    assert [t for t, _ in frames] == [ERROR]
    assert "credit" in TunnelError.decode(frames[0][1]).error
    assert stream.end is End.ABORTED and stream.sid not in session.streams
    assert session.stats.protocol_errors["flow_control"] == 1
    assert bytes(other_socket.written) == b"ok" and other.state.state is State.TUNNELING


def test_data_before_the_open_succeeded_aborts_the_stream() -> None:
    stream, session, link, socket = client_stream(open_it=False)
    deliver(session, stream.sid, b"early")
    assert socket.written == b""
    assert [t for t, _ in link.frames()] == [ERROR]
    assert stream.end is End.ABORTED and "not allowed" in stream.error
    assert socket.calls == []  # never opened: the socket is the program's to answer


def test_data_after_the_remote_fin_aborts_the_stream() -> None:
    stream, session, _link, socket = client_stream()
    session.receive(memoryview(encode_frame(FIN, stream.sid)), NOW)
    deliver(session, stream.sid, b"late")
    assert socket.written == b"" and stream.end is End.ABORTED
    assert socket.calls == ["write_eof", "abort"]


def test_data_for_an_unknown_stream_is_dropped_and_counted() -> None:
    _stream, session, link, _socket = client_stream()
    deliver(session, BASE + 99, b"who")
    assert link.sent == [] and session.stats.dropped_unknown_stream == 1


# --- half-close and ends ---


def test_fin_both_ways_closes_the_socket_gracefully() -> None:
    stream, session, link, socket = client_stream()
    stream.eof()
    assert [t for t, _ in link.frames()] == [FIN]
    assert stream.state.state is State.HALF_CLOSED_UP
    deliver(session, stream.sid, b"reply")  # the other direction still flows
    session.receive(memoryview(encode_frame(FIN, stream.sid)), NOW)
    assert stream.end is End.FINISHED and stream.state.closed
    assert "close" in socket.calls and "abort" not in socket.calls
    assert bytes(socket.written) == b"reply"
    assert session.stats.ended_bytes_down == 5


def test_remote_fin_first_half_closes_then_closes() -> None:
    stream, session, link, socket, events = agent_stream()
    session.receive(memoryview(encode_frame(FIN, stream.sid)), NOW)
    assert socket.calls == ["write_eof"]
    assert stream.state.state is State.HALF_CLOSED_UP  # the agent received FIN_UP
    assert events.ended == []
    stream.send(b"more")  # the target may still answer
    stream.eof()
    assert [t for t, _ in link.frames()] == [DATA, FIN]
    assert socket.calls == ["write_eof", "close"]
    assert events.ended == [stream] and stream.end is End.FINISHED


def test_a_plain_http_exchange_ends_with_its_response() -> None:
    stream, session, link, socket = client_stream(connect=False)
    assert stream.one_exchange
    deliver(session, stream.sid, b"HTTP/1.1 200 OK\r\n\r\n")
    session.receive(memoryview(encode_frame(FIN, stream.sid)), NOW)
    assert [t for t, _ in link.frames()] == [FIN]  # our FIN follows the response's
    assert stream.end is End.FINISHED and socket.calls == ["write_eof", "close"]


def test_remote_tunnel_error_aborts_the_socket_without_an_echo() -> None:
    stream, session, link, socket = client_stream()
    stream.send(b"x" * 5000)  # with data held back
    session.receive(memoryview(TunnelError("sess", "target reset").encode(stream.sid)), NOW)
    assert socket.calls[-1] == "abort" and "close" not in socket.calls
    assert stream.end is End.REMOTE_ERROR and stream.error == "target reset"
    assert stream.backlog is None
    assert [t for t, _ in link.frames()] == [DATA]  # no echo back to the peer


def test_local_abort_tells_the_peer_once() -> None:
    stream, _session, link, socket = client_stream()
    stream.abort("browser went away")
    stream.abort("again")
    frames = link.frames()
    assert [t for t, _ in frames] == [ERROR]
    assert TunnelError.decode(frames[0][1]).error == "browser went away"
    assert socket.calls == ["abort"]


def test_a_lost_socket_aborts_the_stream() -> None:
    stream, _session, link, socket = client_stream()
    stream.socket_lost(ConnectionResetError("reset"))
    assert stream.end is End.ABORTED and "reset" in stream.error
    assert [t for t, _ in link.frames()] == [ERROR]
    assert socket.calls == []  # it is gone already


def test_a_lost_link_ends_every_stream_and_leaves_unopened_sockets_alone() -> None:
    stream, session, _link, socket = client_stream()
    waiting_socket = FakeSocket()
    waiting = session.open(OpenStream(FrameType.CONNECT, "w", "t.test", 443), waiting_socket, NOW)
    assert waiting is not None
    session.connection_lost()
    assert stream.end is End.LOST and waiting.end is End.LOST
    assert socket.calls == ["abort"]
    assert waiting_socket.calls == []  # the program retries it elsewhere
    assert not session.streams and not session.ready


# --- opens ---


def test_a_refused_open_leaves_the_socket_to_the_program() -> None:
    stream, session, _link, socket = client_stream(open_it=False)
    answer(session, stream, 0, status=503, error="no agent", reason="no_agent")
    assert stream.end is End.REFUSED and stream.response is not None
    assert (stream.response.status_code, stream.response.reason) == (503, "no_agent")
    assert stream.error == "no agent" and socket.calls == []


def test_an_open_without_an_answer_expires() -> None:
    session, link, events = make_session(open_timeout=5.0)
    sockets = [FakeSocket() for _ in range(3)]
    streams = []
    for i, socket in enumerate(sockets):
        stream = session.open(OpenStream(FrameType.CONNECT, f"s{i}", "t.test", 443), socket, i)
        assert stream is not None
        streams.append(stream)
    answer(session, streams[1], 1000)
    link.clear()
    session.tick(4.9)
    assert link.sent == [] and not events.ended
    session.tick(5.0)
    assert [s.end for s in streams] == [End.EXPIRED, None, None]
    (ftype, payload), *_ = link.frames()
    assert ftype is ERROR and TunnelError.decode(payload).error == "open timeout"
    session.tick(100.0)
    assert [s.end for s in streams] == [End.EXPIRED, None, End.EXPIRED]
    assert sockets[0].calls == [] and sockets[2].calls == []  # the program answers 504
    assert streams[1].state.state is State.TUNNELING  # the answered one is untouched


def test_the_agent_refuses_an_open_with_the_reason() -> None:
    session, link, events = make_session(side=AGENT_SIDE)
    events.accept = False
    request = OpenStream(FrameType.CONNECT, "sess", "t.test", 443)
    session.receive(memoryview(request.encode(9)), NOW)
    stream = session.streams[9]
    stream.refuse(502, "connection refused", "refused")
    (_ftype, payload), *_ = link.frames()
    response = ConnectResponse.decode(payload)
    assert (response.status_code, response.reason) == (502, "refused")
    assert stream.end is End.REFUSED and 9 not in session.streams


def test_the_agent_answers_an_id_in_use_and_its_stream_limit() -> None:
    session, link, _events = make_session(side=AGENT_SIDE, max_streams=1)
    request = OpenStream(FrameType.CONNECT, "a", "t.test", 443)
    session.receive(memoryview(request.encode(9)), NOW)
    link.clear()
    session.receive(memoryview(request.encode(9)), NOW)
    (ftype, payload), *_ = link.frames()
    assert ftype is ERROR and "in use" in TunnelError.decode(payload).error
    link.clear()
    session.receive(memoryview(OpenStream(FrameType.CONNECT, "b", "t", 1).encode(10)), NOW)
    (ftype, payload), *_ = link.frames()
    response = ConnectResponse.decode(payload)
    assert (response.status_code, response.reason) == (503, "stream_limit")
    assert "carries 1 streams" in (response.error or "")
    assert list(session.streams) == [9]


def test_client_a_ignores_opens_and_agents_refuse_answers() -> None:
    session, _link, _events = make_session()
    session.receive(memoryview(OpenStream(FrameType.CONNECT, "x", "t", 1).encode(3)), NOW)
    assert session.stats.protocol_errors["unexpected_open"] == 1 and not session.streams
    stream, agent, _link, _socket, _ = agent_stream()
    agent.receive(memoryview(ConnectResponse("sess", 200).encode(stream.sid)), NOW)
    assert stream.end is End.ABORTED and "agents do not accept" in stream.error


def test_a_second_answer_aborts_the_stream() -> None:
    stream, session, _link, _socket = client_stream()
    answer(session, stream, 1000)
    assert stream.end is End.ABORTED and session.stats.protocol_errors["illegal_transition"] == 1


def test_no_stream_opens_past_the_limit_or_before_hello() -> None:
    session, _link, _events = make_session(max_streams=1)
    assert session.open(OpenStream(FrameType.CONNECT, "a", "t", 1), FakeSocket(), NOW)
    assert session.full
    assert session.open(OpenStream(FrameType.CONNECT, "b", "t", 1), FakeSocket(), NOW) is None
    fresh = Session(
        Link(), Events(), SessionStats(), side=CLIENT_SIDE, window=1000, max_frame_size=1 << 20
    )
    assert fresh.open(OpenStream(FrameType.CONNECT, "c", "t", 1), FakeSocket(), NOW) is None


# --- the connection ---


def test_a_relay_with_a_larger_frame_size_is_refused_at_hello() -> None:
    link, events = Link(), Events()
    session = Session(
        link, events, SessionStats(), side=CLIENT_SIDE, window=1000, max_frame_size=1000
    )
    session.receive(memoryview(Hello("big", max_frame_size=5000).encode()), NOW)
    assert not session.ready and link.closed is not None
    assert link.closed[0] == CLOSE_POLICY_VIOLATION
    assert events.log[0][0] == "hello_refused" and "at least 5000" in events.log[0][1]
    assert session.stats.protocol_errors["config_mismatch"] == 1


def test_goaway_closes_an_idle_connection_and_drains_a_busy_one() -> None:
    session, link, events = make_session()
    session.receive(memoryview(GoAway("restart").encode()), NOW)
    assert events.log == [("goaway", "restart")] and link.closed == (CLOSE_GOING_AWAY, "drained")
    stream, session, link, _socket = client_stream()
    session.receive(memoryview(GoAway("restart").encode()), NOW)
    assert link.closed is None and not session.ready
    stream.eof()
    session.receive(memoryview(encode_frame(FIN, stream.sid)), NOW)
    assert link.closed == (CLOSE_GOING_AWAY, "drained")  # the last stream ended


def test_retire_sends_goaway_and_closes_once_idle() -> None:
    stream, session, link, _socket = client_stream()
    session.retire("duplicate")
    (ftype, payload), *_ = link.frames()
    assert ftype is FrameType.GOAWAY and GoAway.decode(payload).error == "duplicate"
    assert not session.ready and link.closed is None
    stream.abort("done")
    assert link.closed == (CLOSE_GOING_AWAY, "drained")


def test_members_reach_the_program() -> None:
    session, _link, events = make_session(side=AGENT_SIDE)
    session.receive(memoryview(Members(("r1", "r2")).encode()), NOW)
    assert events.log == [("members", ("r1", "r2"))]


def test_a_malformed_frame_raises_after_the_frames_before_it() -> None:
    stream, session, _link, socket = client_stream()
    message = encode_frame(DATA, stream.sid, b"ok") + b"\x04\x00\x00"
    with pytest.raises(FrameError):
        session.receive(memoryview(message), NOW)
    assert bytes(socket.written) == b"ok"


def test_a_bug_in_the_program_costs_one_stream() -> None:
    stream, session, _link, socket = client_stream()

    class Broken(FakeSocket):
        def write(self, data: bytes | memoryview) -> None:
            raise RuntimeError("bug")

    other_socket = Broken()
    other = session.open(OpenStream(FrameType.CONNECT, "o", "t", 1), other_socket, NOW)
    assert other is not None
    answer(session, other, 1000)
    message = encode_frame(DATA, other.sid, b"x") + encode_frame(DATA, stream.sid, b"fine")
    session.receive(memoryview(message), NOW)
    assert other.end is End.ABORTED and other.error == "internal error"
    assert session.stats.protocol_errors["internal_error"] == 1
    assert bytes(socket.written) == b"fine" and stream.end is None


def test_a_half_close_on_a_socket_already_gone_aborts_the_stream_quietly() -> None:
    stream, session, link, socket = client_stream()

    def gone() -> None:
        raise OSError(107, "Transport endpoint is not connected")

    socket.write_eof = gone  # type: ignore[method-assign]
    session.receive(memoryview(encode_frame(FIN, stream.sid)), NOW)
    assert stream.end is End.ABORTED and "not connected" in stream.error
    assert [t for t, _ in link.frames()] == [ERROR]
    assert session.stats.protocol_errors["internal_error"] == 0
    assert socket.calls == ["abort"]  # released: nothing else would ever close it


def test_the_last_fin_on_a_socket_already_gone_finishes_the_stream_and_closes_it() -> None:
    """The browser closes an idle tunnel: its FIN goes out first, then the
    target's answer and FIN come back to a socket the browser has reset. Both
    directions have ended, so the stream finishes (nothing is left to abort),
    its socket is closed, and the link and the other streams carry on."""
    stream, session, link, socket = client_stream()
    other_socket = FakeSocket()
    other = session.open(OpenStream(FrameType.CONNECT, "o", "t", 1), other_socket, NOW)
    assert other is not None
    answer(session, other, 1000)
    stream.eof()  # the browser's FIN
    link.clear()

    def gone() -> None:
        raise OSError(107, "Transport endpoint is not connected")

    socket.write_eof = gone  # type: ignore[method-assign]
    message = encode_frame(DATA, stream.sid, b"bye") + encode_frame(FIN, stream.sid)
    session.receive(memoryview(message + encode_frame(DATA, other.sid, b"still")), NOW)
    assert stream.end is End.FINISHED and stream.sid not in session.streams
    assert socket.calls[-1] == "close" and socket.closing
    assert link.frames() == []  # no TUNNEL_ERROR for a stream both sides had ended
    assert session.stats.protocol_errors["internal_error"] == 0
    assert other.end is None and bytes(other_socket.written) == b"still"


def test_an_abort_that_fails_costs_its_stream_not_the_link() -> None:
    """The last line of defence: a stream whose own abort raises (a state the
    table does not expect) still ends, closes its socket and is forgotten, and
    receive() returns normally, so the relay connection and its other
    tunnels live on."""
    stream, session, _link, socket = client_stream()
    other_socket = FakeSocket()
    other = session.open(OpenStream(FrameType.CONNECT, "o", "t", 1), other_socket, NOW)
    assert other is not None
    answer(session, other, 1000)

    # A state the table does not expect here: CLOSED allows no ABORT, so the abort
    # that answers the flow-control error below raises IllegalTransition.
    stream.state.state = State.CLOSED
    # data past the receive window: a flow-control error, whose answer is an abort
    too_much = encode_frame(DATA, stream.sid, b"x" * 5000)
    session.receive(memoryview(too_much + encode_frame(DATA, other.sid, b"ok")), NOW)
    assert stream.end is End.ABORTED and stream.sid not in session.streams
    assert socket.calls[-1] == "abort"
    assert session.stats.protocol_errors["internal_error"] == 1
    assert other.end is None and bytes(other_socket.written) == b"ok"


# --- windows that follow the path (FLAG_BLOCKED) ---


def test_the_frame_that_uses_the_last_credit_while_more_waits_is_flagged() -> None:
    stream, session, link, _socket = client_stream(send_window=1000)
    stream.send(b"a" * 100)
    stream.send(b"a" * 1400)  # 900 go, 500 wait
    stream.send(b"b" * 10)  # a read in flight joins the backlog: no frame
    assert [(len(m) - 10, m[1]) for m in link.sent] == [(100, 0), (900, FLAG_BLOCKED)]
    link.clear()
    session.receive(memoryview(encode_window_update(stream.sid, 200)), NOW)  # not enough
    assert [(len(m) - 10, m[1]) for m in link.sent] == [(200, FLAG_BLOCKED)]
    link.clear()
    session.receive(memoryview(encode_window_update(stream.sid, 310)), NOW)  # exactly enough
    assert [(len(m) - 10, m[1]) for m in link.sent] == [(310, FLAG_BLOCKED)]
    link.clear()
    stream.send(b"c" * 5)  # no credit at all: an empty frame says so
    assert [(len(m) - 10, m[1]) for m in link.sent] == [(0, FLAG_BLOCKED)]
    link.clear()
    session.receive(memoryview(encode_window_update(stream.sid, 1000)), NOW)
    assert [(len(m) - 10, m[1]) for m in link.sent] == [(5, 0)]  # room to spare: no flag


def test_a_blocked_sender_grows_the_window_of_a_receiver_that_keeps_up() -> None:
    stream, session, link, _socket = client_stream(recv_window=4000)
    session.credit.max_window = 64_000
    blocked = encode_frame(DATA, stream.sid, b"x" * 4000, flags=FLAG_BLOCKED)
    session.receive(memoryview(blocked), NOW)
    assert stream.recv_window.target == 8000
    assert window_updates(link) == [8000]  # the 4,000 owed at once, plus the growth
    assert stream.recv_window.window == 8000 and session.stats.window_growths == 1
    link.clear()
    session.receive(memoryview(encode_frame(DATA, stream.sid, b"y" * 8000, flags=1)), NOW)
    assert stream.recv_window.window == 16000 and window_updates(link) == [16000]


def test_a_bulk_message_times_the_path_and_a_small_one_does_not() -> None:
    """A window's first burst queues on a slow link before its sender is BLOCKED: a
    message of BULK_MESSAGE bytes or more starts a probe (at most once per
    PROBE_INTERVAL), so the queue is seen while it builds; smaller ones do not."""
    stream, session, link, _socket = client_stream(recv_window=1 << 20)
    path = session.path
    session.probe_answered(NOW + 0.001)  # the first probe, sent after HELLO
    assert not path.in_flight and link.probes == 1
    t = NOW + 1.0
    small = encode_frame(DATA, stream.sid, bytes(BULK_MESSAGE - HEADER_SIZE - 1))
    session.receive(memoryview(small), t)
    assert not path.in_flight and link.probes == 1
    bulk = encode_frame(DATA, stream.sid, bytes(BULK_MESSAGE - HEADER_SIZE))
    session.receive(memoryview(bulk), t + 0.001)
    assert path.in_flight and link.probes == 2
    session.probe_answered(t + 0.011)
    session.receive(memoryview(bulk), t + 0.012)
    assert not path.in_flight and link.probes == 2  # within PROBE_INTERVAL of the answer
    session.receive(memoryview(bulk), t + 0.011 + PROBE_INTERVAL)
    assert path.in_flight and link.probes == 3


def test_a_window_that_doubles_times_the_path_at_once() -> None:
    """A doubling does not wait PROBE_INTERVAL for the next probe: the queue it may
    build is seen within a round trip. A BLOCKED that cannot double (at max_window)
    waits as before."""
    stream, session, link, _socket = client_stream(recv_window=4000)
    session.credit.max_window = 8000
    path = session.path
    session.probe_answered(NOW + 0.001)
    assert link.probes == 1 and path.next_probe > NOW + 0.05
    session.receive(memoryview(encode_frame(DATA, stream.sid, bytes(4000), flags=1)), NOW + 0.002)
    assert stream.recv_window.target == 8000 and link.probes == 2  # doubled: timed at once
    session.probe_answered(NOW + 0.003)
    assert not session.credit.growing
    session.receive(memoryview(encode_frame(DATA, stream.sid, bytes(8000), flags=1)), NOW + 0.004)
    assert stream.recv_window.target == 8000 and link.probes == 2  # at max_window: no probe


def test_a_queue_on_the_path_stops_growth_cuts_the_window_once_per_probe_and_calm_lifts_it() -> (
    None
):
    """The session times the path with probes while its senders are blocked:
    a probe out for longer than the least round trip stops growth, one out
    past QUEUE_HIGH cuts the windows (once for that probe, however late its
    answer), and a calm answer lets them grow again."""
    stream, session, link, _socket = client_stream(recv_window=64_000)
    pool = session.credit
    pool.max_window = 1 << 20
    assert link.probes == 1  # sent right after HELLO, while the path is empty: the base
    session.probe_answered(NOW + 0.010)
    assert session.path.base == pytest.approx(0.010) and not session.path.in_flight

    def data(at: float, n: int, blocked: bool = False) -> None:
        frame = encode_frame(DATA, stream.sid, bytes(n), flags=FLAG_BLOCKED if blocked else 0)
        session.receive(memoryview(frame), at)

    t = NOW + 1.0
    data(t, 64_000, blocked=True)  # the sender ran out of credit: grow, and time the path
    assert stream.recv_window.target == 128_000 and link.probes == 2
    data(t + 0.004, 100)
    assert pool.calm  # not late yet
    data(t + 0.010 + QUEUE_LOW + 0.001, 100)
    assert not pool.calm  # out past the base: a queue is building
    before = stream.recv_window.target
    data(t + 0.017, 1000, blocked=True)
    assert stream.recv_window.target == before  # no growth into it
    assert session.stats.window_backoffs == 0
    largest = stream.recv_window.window
    data(t + 0.010 + QUEUE_HIGH + 0.010, 100)
    assert session.stats.window_backoffs == 1
    assert MIN_WINDOW <= pool.cap < largest
    for k in range(1, 6):  # later and later, and answered late: still one cut
        data(t + 0.1 * k, 100)
    session.probe_answered(t + 0.6)
    assert session.stats.window_backoffs == 1 and link.probes == 2
    link.clear()
    data(t + 0.7, 100)  # the sender was blocked meanwhile: the next probe
    assert link.probes == 3
    sent = 0
    for k in range(20):  # the releases withhold what is over the cap
        data(t + 0.7 + k * 0.0001, 16_000)
        sent += 16_000
    assert sum(window_updates(link)) < sent
    assert stream.recv_window.window <= pool.cap
    cap = pool.cap
    session.probe_answered(t + 0.7 + 0.011)  # 1 ms over the base: calm
    assert pool.calm and pool.cap in (0, 2 * cap)
    assert session.stats.window_backoffs == 1


def test_a_queue_on_the_path_caps_what_a_sender_has_unacknowledged_until_it_is_calm() -> None:
    """The sending side of the same rule: a stream that runs out of credit gets
    the path timed; a late probe caps every stream's unacknowledged bytes (the
    credit over it is held back, not lost), and a calm answer lets it all go."""
    stream, session, link, socket = client_stream(send_window=100_000)
    session.probe_answered(NOW + 0.010)  # the idle path: 10 ms
    t = NOW + 1.0
    stream.send(b"x" * 150_000)  # 100,000 go, 50,000 wait for credit
    assert len(data_sent(link)) == 100_000 and session.probing
    assert stream.send_window.unacked == 100_000
    link.clear()

    def tick(at: float) -> None:  # anything the relay sends lets the session look at the clock
        session.receive(memoryview(encode_frame(DATA, stream.sid, b"y")), at)

    tick(t)
    assert link.probes == 2
    tick(t + 0.010 + QUEUE_HIGH + 0.010)  # out 30 ms past the least: cut
    assert session.stats.send_backoffs == 1
    cap = session.credit.send_cap
    assert cap == 50_000  # half of the 100,000 in flight (5 / 40 would be less)
    session.receive(memoryview(encode_window_update(stream.sid, 60_000)), t + 0.05)
    # 40,000 unacknowledged now: 10,000 may go, the other 50,000 of credit is held.
    assert len(data_sent(link)) == 10_000
    assert (stream.send_window.available, stream.send_window.held) == (0, 50_000)
    assert socket.calls[-1] == "pause_reading"
    link.clear()
    session.probe_answered(t + 0.2)  # its answer: late, and cut for already
    assert session.stats.send_backoffs == 1 and session.credit.send_cap == cap
    tick(t + 0.3)  # still blocked: the next probe ...
    assert link.probes == 3
    session.probe_answered(t + 0.3 + 0.011)  # ... calm: no cap, the held credit goes out
    assert session.credit.send_cap == 0
    assert len(data_sent(link)) == 40_000  # the rest of the backlog
    assert stream.send_window.held == 0 and stream.send_window.available == 10_000
    assert socket.calls[-1] == "resume_reading"


def test_a_pong_to_no_probe_changes_nothing() -> None:
    _stream, session, link, _socket = client_stream()
    session.probe_answered(NOW + 0.010)
    session.probe_answered(NOW + 5.0)  # a relay that answers twice, or a stale pong
    assert session.path.base == pytest.approx(0.010) and session.path.last == session.path.base
    assert session.credit.cap == 0 and session.credit.calm and link.probes == 1


# --- PROBE frames: the relay's stamp splits the queue by direction ---

RELAY_CLOCK = 5_000.0  # the relay's clock is another: this far ahead of the endpoint's


def probe_tokens(link: Link) -> list[int]:
    return [int.from_bytes(p, "big") for t, p in link.frames() if t is FrameType.PROBE]


def stamp_answer(session: Session, sent: float, out: float, back: float) -> None:
    """The relay answers the probe in flight (sent at `sent`): it read it `out`
    seconds later, and its answer took `back` to arrive."""
    token = session.path.token  # the one in flight (what the link sent: probe_tokens)
    read_at = sent + out
    answer = encode_probe_answer(token.to_bytes(8, "big"), int((read_at + RELAY_CLOCK) * 1e6))
    session.receive(memoryview(answer), read_at + back)


def test_a_relay_that_stamps_probes_is_probed_with_frames_not_pings() -> None:
    session, link, _events = make_session(probe=True)
    assert probe_tokens(link) == [1] and link.probes == 0  # right after HELLO, as a frame
    stamp_answer(session, NOW, 0.005, 0.005)
    path = session.path
    assert not path.in_flight and path.base == pytest.approx(0.010, abs=1e-5)
    assert (path.queue_out, path.queue_in) == (0.0, 0.0)
    # Without `probe` in HELLO, a ping: an older relay closes on an unknown frame type.
    _session, old_link, _events = make_session()
    assert old_link.probes == 1 and probe_tokens(old_link) == []


def test_the_queue_on_the_way_out_caps_the_senders_and_leaves_the_windows_alone() -> None:
    """A stream that sends more than the path carries: its probes queue on the
    way out. The send cap is cut, the windows this end grants are not (what it
    receives comes the other way), and growth goes on."""
    stream, session, link, _socket = client_stream(send_window=100_000, probe=True)
    session.credit.max_window = 1 << 20
    stamp_answer(session, NOW, 0.005, 0.005)  # the idle path: 10 ms
    t = NOW + 1.0
    stream.send(b"x" * 150_000)  # out of credit: time the path
    session.receive(memoryview(encode_frame(DATA, stream.sid, b"y")), t)
    assert probe_tokens(link) == [2] and link.probes == 0
    stamp_answer(session, t, 0.005 + 0.040, 0.005)  # 40 ms queued on the way out
    assert session.path.queue_out == pytest.approx(0.040, abs=1e-5)
    assert session.path.queue_in == pytest.approx(0.0, abs=1e-5)
    assert session.stats.send_backoffs == 1 and session.credit.send_cap == 50_000
    assert session.stats.window_backoffs == 0 and session.credit.cap == 0
    assert session.credit.calm  # the windows may still grow
    before = stream.recv_window.target
    room = stream.recv_window.outstanding
    blocked = encode_frame(DATA, stream.sid, bytes(room), flags=FLAG_BLOCKED)
    session.receive(memoryview(blocked), t + 0.06)
    assert stream.recv_window.target == 2 * before

    # A probe still out past QUEUE_HIGH cannot say which way it queued: it cuts
    # both, and its answer lifts the way it finds calm.
    t2 = t + 0.2
    session.receive(memoryview(encode_frame(DATA, stream.sid, b"y")), t2)
    assert probe_tokens(link)[-1] == 3
    late = t2 + 0.010 + QUEUE_HIGH + 0.01
    session.receive(memoryview(encode_frame(DATA, stream.sid, b"y")), late)
    assert session.stats.send_backoffs == 2 and session.stats.window_backoffs == 1
    cut = session.credit.cap
    assert cut and not session.credit.calm
    stamp_answer(session, t2, 0.005 + 0.040, 0.005)  # out again, and back calm
    assert session.stats.send_backoffs == 2  # not cut twice for one probe
    assert session.credit.calm and session.credit.cap in (0, 2 * cut)


def test_the_queue_on_the_way_in_cuts_the_windows_and_lifts_the_send_cap() -> None:
    stream, session, link, _socket = client_stream(
        send_window=100_000, recv_window=64_000, probe=True
    )
    stamp_answer(session, NOW, 0.005, 0.005)
    t = NOW + 1.0
    stream.send(b"x" * 150_000)
    session.receive(memoryview(encode_frame(DATA, stream.sid, b"y")), t)
    stamp_answer(session, t, 0.045, 0.005)  # the way out first: send cap cut
    cap = session.credit.send_cap
    assert cap and session.credit.cap == 0
    t2 = t + 0.2
    room = stream.recv_window.outstanding
    blocked = encode_frame(DATA, stream.sid, bytes(room), flags=FLAG_BLOCKED)
    session.receive(memoryview(blocked), t2)  # a sender blocked on our windows: probe
    assert probe_tokens(link)[-1] == 3
    stamp_answer(session, t2, 0.005, 0.005 + 0.040)  # now 40 ms on the way back
    assert session.path.queue_in == pytest.approx(0.040, abs=1e-5)
    assert session.stats.window_backoffs == 1 and session.credit.cap >= MIN_WINDOW
    assert not session.credit.calm
    assert session.credit.send_cap in (0, 2 * cap)  # the way out is calm: the cap doubles back


def test_a_split_that_does_not_explain_the_round_trip_counts_for_both_ways() -> None:
    """The least one-way times came from a probe that queued (its answer was the
    first): the round trip has risen over the least one (keep-alive pings keep
    it), the split says nothing did. Both ways get the whole rise."""
    _stream, session, _link, _socket = client_stream(recv_window=64_000, probe=True)
    session.path.observe(0.010, NOW)  # a keep-alive ping on the idle path
    stamp_answer(session, NOW, 0.030, 0.030)  # 50 ms of queue, one way or the other
    path = session.path
    assert path.queue_out == path.queue_in == pytest.approx(0.050, abs=1e-5)
    assert session.stats.window_backoffs == 1 and session.stats.send_backoffs == 0  # no unacked


def test_a_probe_answer_that_echoes_another_token_is_ignored() -> None:
    session, _link, _events = make_session(probe=True)
    answer = encode_probe_answer((99).to_bytes(8, "big"), 123)
    session.receive(memoryview(answer), NOW + 0.010)
    assert session.path.in_flight and session.path.base == float("inf")
    stamp_answer(session, NOW, 0.005, 0.005)
    assert not session.path.in_flight


def test_a_probe_from_the_relay_without_a_stamp_is_a_protocol_error() -> None:
    session, _link, _events = make_session(probe=True)
    with pytest.raises(FrameError, match="PROBE from the relay must carry 16 bytes, got 8"):
        session.receive(memoryview(encode_probe(1)), NOW)


def test_a_slow_reader_does_not_grow_its_window() -> None:
    stream, session, link, _socket = client_stream(recv_window=4000)
    session.credit.max_window = 64_000
    stream.socket_paused_writing()
    session.receive(memoryview(encode_frame(DATA, stream.sid, b"x" * 4000, flags=1)), NOW)
    assert stream.recv_window.target == 4000 and window_updates(link) == []
    assert session.stats.window_growths == 0


def test_growth_stops_at_max_window_and_within_the_budget() -> None:
    session, _link, _events = make_session(window=4000, buffer_budget=40_000, max_streams=2)
    session.credit.max_window = 1 << 20
    socket = FakeSocket()
    stream = session.open(OpenStream(FrameType.CONNECT, "s", "t.test", 443), socket, NOW)
    assert stream is not None
    answer(session, stream, 1000)
    for _ in range(12):
        window = stream.recv_window.outstanding
        session.receive(memoryview(encode_frame(DATA, stream.sid, bytes(window), flags=1)), NOW)
    pool = session.credit
    assert pool.granted + pool.floor * (pool.max_streams - pool.streams) <= pool.budget
    assert stream.recv_window.window == pool.budget - pool.floor  # room left for one more
