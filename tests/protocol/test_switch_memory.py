"""What an idle stream costs the relay's switch (bench scenario 5; issue 12's "no worse").

An open, idle stream at the relay is its `Stream` (with the credit left each
way in it), its session id, its stream id and its entry in client_a's
`streams`: ~0.23 KB on CPython 3.11, less than the ~0.33 KB the relay held
before the switch added per-stream credit (bench/README.md, "Known gaps"),
~0.45 KB before it was made smaller. These tests fail a
program that adds per-stream objects or containers, per-stream copies of
shared strings or fields that push the stream up a size class; they measure
allocations with tracemalloc, never time.
"""

from __future__ import annotations

import gc
import random
import tracemalloc
import uuid
from collections import deque
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastrelay import hotpath
from fastrelay.protocol.frames import FrameType, encode_frame
from fastrelay.protocol.messages import ConnectResponse, OpenStream, new_session_id
from fastrelay.protocol.pair import Discard
from fastrelay.protocol.switch import Conn, Limits, Stream, Switch

NOW = 1.0
TARGET_PORT = 40_000
WINDOW = 4 * 1024 * 1024  # client_a's and the agent's default window
# Bytes per idle stream that tracemalloc counts, at most, by hot path. Compiled,
# CPython 3.11 measures ~231: the 11-field Stream 120 (its credit is C integers;
# what a retry needs left with the answer), the session id as a 128-bit int 44,
# the stream id 28 and its entry in client_a's `streams` ~38 (500 streams per
# connection here; an agent keeps no dict of its own). Pure Python ~295: the
# same Stream, whose credits are ints of their own. The switch before (two
# 64-byte `Half` objects per stream for the credit, the session id as its
# 36-character string, a second entry in the agent's dict, three more fields)
# measured ~450 compiled; the string alone is 41 bytes more, one empty list
# more per stream 56, an empty dict 64.
MAX_BYTES_PER_IDLE_STREAM = {"compiled": 250, "python": 320, "mixed": 320}


def _idle_switch(streams: int, clients: int) -> tuple[Switch, list[tuple[Conn, list[bytes]]]]:
    """A switch with `clients` client_a connections and one agent, and for each
    client the messages that open `streams / clients` streams, answer them and
    send one byte each way (as scenario 5 does), built before anything is measured."""
    switch = Switch(Limits(), "relay-test")
    agent = Conn("agent", Discard(), Discard())
    switch.attach(agent, NOW)
    plan = []
    rng = random.Random(streams)
    for _ in range(clients):
        conn = Conn("client", Discard(), Discard())
        switch.attach(conn, NOW)
        messages = []
        for i in range(streams // clients):
            sid = conn.id_base + 1 + i
            session = str(uuid.UUID(int=rng.getrandbits(128), version=4))  # as client_a's
            request = OpenStream(FrameType.CONNECT, session, "127.0.0.1", TARGET_PORT)
            messages += [
                request.encode(sid, WINDOW),
                ConnectResponse(session, 200, window=WINDOW).encode(sid),
                encode_frame(FrameType.TUNNEL_DATA, sid, b"x"),
                encode_frame(FrameType.TUNNEL_DATA, sid, b"y"),
            ]
        plan.append((conn, messages))
    return switch, plan


def _run(switch: Switch, plan: list[tuple[Conn, list[bytes]]]) -> None:
    agent = switch.agents[0]
    for conn, messages in plan:
        for i in range(0, len(messages), 4):
            switch.receive(conn, memoryview(messages[i]), NOW)
            switch.receive(agent, memoryview(messages[i + 1]), NOW)
            switch.receive(conn, memoryview(messages[i + 2]), NOW)
            switch.receive(agent, memoryview(messages[i + 3]), NOW)


def _streams(switch: Switch) -> list[Stream]:
    return [stream for conn in switch.clients for stream in conn.streams.values()]


def test_an_idle_stream_holds_no_container_and_shares_its_target() -> None:
    switch, plan = _idle_switch(4, 2)
    _run(switch, plan)
    streams = _streams(switch)
    assert len(streams) == 4
    containers = (dict, list, set, deque, bytearray, memoryview, tuple)
    for stream in streams:
        assert stream.up_room == stream.down_room == WINDOW - 1  # credit is tracked
        assert not hasattr(stream, "__dict__")
        for name in Stream.__slots__:
            value = getattr(stream, name)
            assert not isinstance(value, containers), (name, value)
            # No object of the switch's own per stream: only ints, strings, the state
            # and the two connections.
            assert type(value).__module__ != Stream.__module__ or isinstance(value, Conn), name
    # Streams to one destination share one "host:port" string.
    assert len({id(s.target) for s in streams}) == 1
    assert streams[0].target == f"127.0.0.1:{TARGET_PORT}"
    # 128 bytes with the object's headers: one field more is 16 bytes more per stream.
    assert len(Stream.__slots__) <= 12
    assert not switch.opening  # what a retry needs is dropped once answered


def test_idle_streams_cost_at_most_the_bound_each() -> None:
    count = 1000
    switch, plan = _idle_switch(count, 2)
    gc.collect()
    tracing = tracemalloc.is_tracing()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        _run(switch, plan)
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        if not tracing:
            tracemalloc.stop()
    assert switch.active_streams == count
    # Everything but the tracer's own: the compiled switch has no Python frames, so
    # what it allocates is counted against the caller's line in this file.
    grown = sum(
        stat.size_diff
        for stat in after.compare_to(before, "filename")
        if not stat.traceback[0].filename.endswith("tracemalloc.py")
    )
    per_stream = grown / count
    assert per_stream <= MAX_BYTES_PER_IDLE_STREAM[hotpath.mode()], (
        f"{per_stream:.0f} bytes per idle stream"
    )


# --- the session id, kept compact ---

_UUID_TEXT = st.uuids().map(str)
_UUID_LIKE = st.builds(
    lambda u, i, c: str(u)[:i] + c + str(u)[i + 1 :],
    st.uuids(),
    st.integers(0, 35),
    st.sampled_from("ABCDEF+_ -0x\u0660g"),
)


def _stream(session_id: str) -> Stream:
    conn = Conn("client", Discard(), Discard())
    request = OpenStream(FrameType.CONNECT, session_id, "127.0.0.1", TARGET_PORT)
    return Stream(1, request, conn, conn, NOW, "127.0.0.1:1")


@given(st.one_of(_UUID_TEXT, _UUID_LIKE, st.text(max_size=40)))
@settings(max_examples=500)
def test_the_session_id_comes_back_exactly_as_sent(session_id: str) -> None:
    assert _stream(session_id).session_id == session_id


@pytest.mark.parametrize("make", [new_session_id, lambda: str(uuid.uuid4())])
def test_client_as_session_ids_are_kept_as_a_128_bit_value(make: Callable[[], str]) -> None:
    """client_a's ids (and any lowercase UUID text) take 48 bytes, not the string's 96."""
    for _ in range(200):
        stream = _stream(make())
        assert isinstance(stream.session, int) and stream.session < 1 << 128
    upper = str(uuid.uuid4()).upper()
    assert _stream(upper).session == upper  # not canonical: kept as sent
