"""Hypothesis: arbitrary frame sequences from the relay into an endpoint session.

Whatever the relay sends, on either side (client_a or agent):

* only ProtocolError escapes `Session.receive` (the adapter closes the link);
* a stream that no frame named is untouched: same state, its data intact;
* everything the session writes back is well-formed frames, and it never
  sends data beyond the credit it was given;
* a stream that ended has left the table, once, and its socket was settled
  (closed after FIN both ways, aborted otherwise, left alone if never opened).
"""

from __future__ import annotations

import contextlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastrelay.protocol.errors import ProtocolError
from fastrelay.protocol.frames import FrameType, encode_frame, iter_frames
from fastrelay.protocol.messages import ConnectResponse, GoAway, Hello, OpenStream, TunnelError
from fastrelay.protocol.session import AGENT_SIDE, CLIENT_SIDE, End, Session, SessionStats
from fastrelay.protocol.state import State
from tests.protocol.test_session import BASE, NOW, Events, FakeSocket, Link, waiting_streams

SIDS = [BASE, BASE + 1, BASE + 2, 7, 0]
BYSTANDER = BASE + 40  # no generated frame names it

sids = st.sampled_from(SIDS)
T = FrameType
# Well-formed frames of every kind, with payloads that parse (so they reach the
# stream logic), and frames of any type with arbitrary payloads.
meaningful = st.one_of(
    st.tuples(st.just(T.TUNNEL_DATA), sids, st.binary(max_size=64)),
    st.tuples(st.just(T.FIN), sids, st.just(b"")),
    st.tuples(
        st.just(T.WINDOW_UPDATE),
        sids,
        st.integers(0, 2**32 - 1).map(lambda n: n.to_bytes(4, "big")),
    ),
    st.tuples(st.just(T.TUNNEL_ERROR), sids, st.just(TunnelError("s", "reset").encode(0)[10:])),
    st.tuples(
        st.just(T.CONNECT_RESPONSE),
        sids,
        st.sampled_from(
            [
                ConnectResponse("s", 200, window=1000).encode(0)[10:],
                ConnectResponse("s", 503, "busy", reason="no_agent").encode(0)[10:],
            ]
        ),
    ),
    st.tuples(
        st.sampled_from([T.CONNECT, T.REQUEST]),
        sids,
        st.just(OpenStream(T.CONNECT, "s", "t.test", 443).encode(0)[10:]),
    ),
    st.tuples(st.just(T.GOAWAY), st.just(0), st.just(GoAway("bye").encode()[10:])),
    st.tuples(st.just(T.HELLO), st.just(0), st.just(Hello("again").encode()[10:])),
)
anything = st.tuples(
    st.sampled_from([int(t) for t in FrameType] + [0, 0x7F]), sids, st.binary(max_size=64)
)
frames = st.one_of(meaningful, meaningful, meaningful, anything)
messages = st.one_of(
    st.lists(frames, min_size=1, max_size=5).map(
        lambda fs: b"".join(encode_frame(t, s, p) for t, s, p in fs)
    ),
    st.binary(min_size=1, max_size=40),  # not even frames
)
actions = st.one_of(
    st.tuples(st.just("receive"), messages),
    st.tuples(st.just("send"), st.sampled_from(SIDS), st.integers(0, 3000)),
    st.tuples(st.just("eof"), st.sampled_from(SIDS)),
    st.tuples(st.just("tick"), st.floats(0, 20)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.booleans(), st.lists(actions, max_size=30))
def test_arbitrary_relay_input_costs_only_the_streams_it_names(
    client_side: bool, script: list[tuple]
) -> None:
    link, events = Link(), Events()
    session = Session(
        link,
        events,
        SessionStats(),
        side=CLIENT_SIDE if client_side else AGENT_SIDE,
        window=2000,
        max_frame_size=1 << 20,
        open_timeout=5.0,
    )
    session.receive(memoryview(Hello("r", stream_id_base=BASE, stream_id_count=64).encode()), NOW)
    sockets: dict[int, FakeSocket] = {}
    if client_side:  # three opens waiting for their answer, and an open bystander
        for i in range(3):
            socket = FakeSocket()
            stream = session.open(OpenStream(FrameType.CONNECT, f"s{i}", "t", 1), socket, NOW)
            assert stream is not None
            sockets[stream.sid] = socket
        session.sid_cursor = BYSTANDER - BASE
        bystander_socket = FakeSocket()
        bystander = session.open(OpenStream(FrameType.CONNECT, "by", "t", 1), bystander_socket, NOW)
        assert bystander is not None and bystander.sid == BYSTANDER
        response = ConnectResponse("by", 200, window=10_000).encode(BYSTANDER)
        session.receive(memoryview(response), NOW)
    else:  # an open bystander answered by the agent
        session.receive(
            memoryview(OpenStream(FrameType.CONNECT, "by", "t", 1).encode(BYSTANDER)), NOW
        )
        bystander = session.streams[BYSTANDER]
        bystander_socket = events.sockets[BYSTANDER]
    session.receive(memoryview(encode_frame(FrameType.TUNNEL_DATA, BYSTANDER, b"before")), NOW)
    assert bystander.state.state is State.TUNNELING
    state_before = bystander.state.state
    now = NOW

    for act in script:
        if act[0] == "receive":
            # The adapter closes the link on a ProtocolError; nothing else may escape.
            with contextlib.suppress(ProtocolError):
                session.receive(memoryview(act[1]), now)
        elif act[0] == "send":
            stream = session.streams.get(act[1])
            if stream is not None:
                stream.send(bytes(act[2]))
        elif act[0] == "eof":
            stream = session.streams.get(act[1])
            if stream is not None and not stream.read_eof:
                stream.eof()
        else:
            now += act[1]
            session.tick(now)

    # The bystander is untouched: no frame named it.
    assert bystander.end is None and BYSTANDER in session.streams
    assert bystander.state.state is state_before
    assert bytes(bystander_socket.written) == b"before"
    # What went back out is well-formed frames (iter_frames raises otherwise), and
    # every data byte sent is one a stream counted (within credit: SendWindow raises).
    sent_data: dict[int, int] = {}
    for message in link.sent:
        for ftype, _flags, sid, _off, length in iter_frames(memoryview(message)):
            if ftype == FrameType.TUNNEL_DATA:
                sent_data[sid] = sent_data.get(sid, 0) + length
    counted: dict[int, int] = {}
    for stream in [*session.streams.values(), *events.ended]:
        counted[stream.sid] = counted.get(stream.sid, 0) + stream.bytes_out
    assert {k: v for k, v in counted.items() if v} == sent_data
    # Ended streams left the table once, and their sockets were settled.
    assert all(stream.end is None for stream in session.streams.values())
    assert len({id(s) for s in events.ended}) == len(events.ended)
    for stream in events.ended:
        assert stream.end is not None and stream.state.state is State.CLOSED
        assert session.streams.get(stream.sid) is not stream
        # client_a's sockets by id (ids are not reused there); the agent's on the stream,
        # since a relay may open a new stream on an id once the old one ended.
        socket = sockets.get(stream.sid) if client_side else stream.owner
        assert socket is None or isinstance(socket, FakeSocket)
        if socket is None:
            continue
        if not stream.opened:
            assert "close" not in socket.calls and "abort" not in socket.calls
        elif stream.end is End.FINISHED:
            assert "abort" not in socket.calls
        elif stream.error.startswith("connection"):
            pass  # the socket itself was lost
        else:
            assert socket.closing


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=5000), min_size=1, max_size=12))
def test_a_drained_link_resumes_every_waiting_stream_once_least_served_first(
    sent: list[int],
) -> None:
    """Whatever each stream sent before the link filled, a drain resumes each waiting stream
    exactly once, in the order of the bytes they sent, ties in the order they queued."""
    session, streams, log = waiting_streams(sent)
    session.set_paused(False)
    expected = sorted(range(len(sent)), key=lambda i: sent[i])
    assert log == [f"s{i}" for i in expected]
    assert session.waiting == [] and not any(stream.paused for stream in streams)
