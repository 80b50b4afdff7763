"""Streams held for room on a full link resume in turn, and none is left behind.

While the relay connection is over its high-water mark, a stream that could
read again (a grant came, its read ended) queues in `Session.waiting` with its
socket paused; when the link drains, `resume_waiting(room)` resumes the oldest
as far as the room goes, a stream whose read takes its last credit hands its
turn to the next, and the carrier's timer resumes more while the link has room.
Hypothesis drives many streams through random pauses, rooms, reads and grants:

* a socket is being read exactly when its stream has no reason to pause;
* a stream paused for the link is in the queue;
* no stream sends beyond its credit (SendWindow raises);
* once the link drains, the carrier keeps its side (a timer step while streams
  wait and the link has room) and the peer returns the credit, every byte
  waiting at every socket goes out: nobody is stalled.
"""

from __future__ import annotations

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fastrelay.protocol.frames import FrameType, encode_window_update
from fastrelay.protocol.messages import OpenStream
from fastrelay.protocol.session import PAUSED_LINK, Stream
from tests.protocol.test_session import NOW, FakeSocket, answer, data_sent, make_session

PAUSED_READ = 16 * 1024  # what fastrelay.io.tunnel reads while the link is full


class Socket(FakeSocket):
    """Bytes waiting to be read, and whether reading is on."""

    def __init__(self, pending: int) -> None:
        super().__init__()
        self.pending = pending
        self.reading = False

    def pause_reading(self) -> None:
        super().pause_reading()
        self.reading = False

    def resume_reading(self) -> None:
        super().resume_reading()
        self.reading = True


def read(stream: Stream, socket: Socket) -> None:
    """One read as fastrelay.io.tunnel does it: at most the credit, 16 KiB
    while the link is full (so possibly past the credit: a backlog)."""
    credit = stream.send_window.available
    size = PAUSED_READ if stream.session.paused or credit == 0 else credit
    n = min(size, socket.pending)
    if n == 0:
        return
    socket.pending -= n
    buf = bytearray(14 + n)
    if not stream.send_in_place(buf, 4, n, alone=False):
        stream.send(bytes(n))


def check(streams: list[tuple[Stream, Socket]]) -> None:
    session = streams[0][0].session
    for stream, socket in streams:
        assert socket.reading == (stream.paused == 0), (stream.paused, socket.calls[-3:])
        if stream.paused & PAUSED_LINK:
            assert stream in session.waiting


actions = st.one_of(
    st.tuples(st.just("read"), st.integers(0, 7)),
    st.tuples(st.just("pause"), st.just(0)),
    st.tuples(st.just("drain"), st.integers(0, 40_000)),  # the link's room
    st.tuples(st.just("timer"), st.integers(0, 40_000)),
    st.tuples(st.just("grant"), st.integers(0, 7)),
    st.tuples(st.just("grant_part"), st.integers(0, 7)),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.integers(500, 30_000), st.integers(0, 60_000)), min_size=1, max_size=8),
    st.lists(actions, max_size=60),
)
@example([(1000, 5000)], [("read", 0), ("pause", 0), ("grant", 0)])  # a grant while full
@example(
    [(1000, 5000), (1000, 5000), (1000, 5000)],
    [
        *[("read", 0), ("read", 1), ("pause", 0), ("read", 2), ("grant", 0), ("grant", 1)],
        *[("drain", 0), ("read", 2), ("read", 0), ("timer", 1)],
    ],
)
def test_held_streams_resume_in_turn_and_none_is_left_behind(
    setup: list[tuple[int, int]], script: list[tuple[str, int]]
) -> None:
    session, link, _events = make_session(window=4000)
    streams: list[tuple[Stream, Socket]] = []
    returned: dict[int, int] = {}  # credit the peer has given back, per stream
    for i, (window, pending) in enumerate(setup):
        socket = Socket(pending)
        stream = session.open(OpenStream(FrameType.CONNECT, f"s{i}", "t.test", 443), socket, NOW)
        assert stream is not None
        answer(session, stream, window)
        streams.append((stream, socket))
        returned[stream.sid] = window

    def grant(stream: Stream, part: bool) -> None:
        """The peer returns what it was sent and has not returned yet (half of it)."""
        owed = stream.bytes_out - (returned[stream.sid] - windows[stream.sid])
        if part:
            owed = (owed + 1) // 2
        if owed > 0:
            returned[stream.sid] += owed
            session.receive(memoryview(encode_window_update(stream.sid, owed)), NOW)

    windows = {stream.sid: returned[stream.sid] for stream, _socket in streams}
    check(streams)
    for action, arg in script:
        if action == "read":
            stream, socket = streams[arg % len(streams)]
            if socket.reading:
                read(stream, socket)
        elif action == "pause":
            session.set_paused(True)
        elif action == "drain":
            if session.paused:
                session.set_paused(False, arg)
        elif action == "timer":
            if session.waiting and not session.paused:
                session.resume_waiting(arg)
        else:
            grant(streams[arg % len(streams)][0], action == "grant_part")
        check(streams)

    # The link drains for good and the peer keeps returning credit: every byte goes out.
    if session.paused:
        session.set_paused(False, 0)
    for _round in range(1_000):
        if session.waiting:
            session.resume_waiting(0)  # the carrier's timer, with no room to spare
        for stream, socket in streams:
            if socket.reading:
                read(stream, socket)
            grant(stream, part=False)
        check(streams)
        if all(socket.pending == 0 and stream.backlog is None for stream, socket in streams):
            break
    for stream, socket in streams:
        assert socket.pending == 0 and stream.backlog is None
    expected = sum(pending for _window, pending in setup)
    assert len(data_sent(link)) == expected
