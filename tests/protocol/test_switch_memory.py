"""What an idle stream costs the relay's switch (bench scenario 5; issue 12's "no worse").

An open, idle stream at the relay is its `Stream`, two `Half`s, its session id,
its stream id, the credit left each way and one entry in each connection's
`sends`: ~0.5 KB on CPython 3.11, where the relay before the switch held
~0.33 KB (bench/README.md, "Known gaps"). These tests fail a program that
adds per-stream containers, per-stream copies of shared strings or fields
that push the objects up a size class; they measure allocations with
tracemalloc, never time.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections import deque

from fastrelay.protocol.frames import FrameType, encode_frame
from fastrelay.protocol.messages import ConnectResponse, OpenStream
from fastrelay.protocol.switch import Conn, Half, Limits, Stream, Switch

NOW = 1.0
TARGET_PORT = 40_000
WINDOW = 4 * 1024 * 1024  # client_a's and the agent's default window
# Bytes per idle stream that tracemalloc counts, at most. CPython 3.11 measures
# ~508 (12-slot Stream 128, two 4-slot Halves 2 x 64, a 36-character session id
# 85, the stream id 28, two credits 2 x 28, the `sends` entries ~80); 3.12 and
# later allocate less for strings. The switch as it was before (a Half with a
# 5th field, a Stream with a 13th, a "host:port" string per stream) measured
# ~595; one empty list more per stream adds 56, an empty dict 64.
MAX_BYTES_PER_IDLE_STREAM = 550


class _Sink:
    """Output and Link of one connection: frames are dropped."""

    def write(self, frames: bytes | bytearray | memoryview) -> None:
        pass

    def close(self, code: int, reason: str) -> None:
        raise AssertionError(f"closed {code} {reason}")

    def ping(self) -> None:
        pass


def _idle_switch(streams: int, clients: int) -> tuple[Switch, list[tuple[Conn, list[bytes]]]]:
    """A switch with `clients` client_a connections and one agent, and for each
    client the messages that open `streams / clients` streams, answer them and
    send one byte each way (as scenario 5 does), built before anything is measured."""
    switch = Switch(Limits(), "relay-test")
    agent = Conn("agent", _Sink(), _Sink())
    switch.attach(agent, NOW)
    plan = []
    for c in range(clients):
        conn = Conn("client", _Sink(), _Sink())
        switch.attach(conn, NOW)
        messages = []
        for i in range(streams // clients):
            sid = conn.id_base + 1 + i
            session = f"{c:08x}-0000-4000-8000-{i:012x}"  # a uuid4's length
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
    return [half.stream for conn in switch.clients for half in conn.sends.values()]


def test_an_idle_stream_holds_no_container_and_shares_its_target() -> None:
    switch, plan = _idle_switch(4, 2)
    _run(switch, plan)
    streams = _streams(switch)
    assert len(streams) == 4
    containers = (dict, list, set, deque, bytearray, memoryview, tuple)
    for stream in streams:
        assert stream.up.room == stream.down.room == WINDOW - 1  # credit is tracked
        assert stream.open_frame == b""  # dropped once answered
        for obj in (stream, stream.up, stream.down):
            assert not hasattr(obj, "__dict__"), type(obj)
            for name in getattr(type(obj), "__slots__", ()):
                value = getattr(obj, name)
                assert not isinstance(value, containers), (type(obj).__name__, name, value)
    # Streams to one destination share one "host:port" string.
    assert len({id(s.target) for s in streams}) == 1
    assert streams[0].target == f"127.0.0.1:{TARGET_PORT}"
    # Each object is one size class: a field more is 16 bytes more per stream.
    assert len(Half.__slots__) <= 4
    assert len(Stream.__slots__) <= 12


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
    # Only what the switch's code allocated: not the test's own frames or the tracer's.
    grown = sum(
        stat.size_diff
        for stat in after.compare_to(before, "filename")
        if "/fastrelay/" in stat.traceback[0].filename
    )
    per_stream = grown / count
    assert per_stream <= MAX_BYTES_PER_IDLE_STREAM, f"{per_stream:.0f} bytes per idle stream"
