"""The relay's per-message forward path, `Switch.receive`, with in-memory picows transports.

A real `Relay` with a client_a peer and an agent peer (see conftest.py); one stream is
opened through `Switch.receive` with CONNECT / CONNECT_RESPONSE 200, then TUNNEL_DATA
messages are routed upstream (client_a -> agent) and downstream (agent -> client_a).
`Peer.on_ws_frame` adds one `time.monotonic()` per message (~40 ns) to what is timed here.

* one 64 KiB frame per message, 100 messages per round: each forwarded alone, as a view of
  the source message (no copy); the untimed setup refills the stream's credit;
* 100 frames of 100 B per message: coalesced by MuxWriter into ONE send per message; the
  timed call includes the FlushScheduler flush that the event loop would run;
* one 100 B frame per message, and one WINDOW_UPDATE per message: the per-message floor,
  timed 100 messages per round (see `extra_info["per_message_us"]`).

Run: .venv/bin/pytest bench/micro/test_forward_bench.py --benchmark-only -q
Results are asserted for correctness only; timing is reported, never asserted.
`extra_info["per_frame_us"]` is the median divided by the frames per round.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from picows import WSMsgType

from fastrelay.protocol.frames import FrameType, encode_window_update
from fastrelay.protocol.state import State

Benchmark = Callable[..., Any]

pytestmark = [
    pytest.mark.benchmark(min_time=0.0002, warmup=True),
    pytest.mark.parametrize("direction", ["upstream", "downstream"]),
]

TUNNEL_DATA = int(FrameType.TUNNEL_DATA)
ROUNDS = 1000  # for the pedantic runs below; 64 KiB frames use the auto-calibrated runner


def _check_stream_untouched(tunnel: Any) -> None:
    stats = tunnel.relay.switch.stats
    assert stats.dropped_unknown_stream == 0
    assert not stats.protocol_errors
    assert tunnel.client.conn.streams[tunnel.sid].state is State.TUNNELING


def test_forward_one_64k_frame(benchmark: Benchmark, tunnel: Any, direction: str) -> None:
    src, dest_t = tunnel.ends(direction)
    payload = 64 * 1024
    buf = tunnel.rig.data_message(tunnel.sid, 1, payload)
    message = memoryview(buf)
    before = src.conn.data_bytes

    _bench_flushed(benchmark, tunnel, src, message, messages=100, frames=1)

    calls = (src.conn.data_bytes - before) // payload
    assert calls >= 100 and src.conn.data_bytes - before == calls * payload
    assert dest_t.sends == calls, "each 64 KiB frame must leave in its own send"
    assert dest_t.nbytes == calls * len(buf)
    assert dest_t.last_type is WSMsgType.BINARY
    sent = dest_t.last
    assert isinstance(sent, memoryview), f"expected a view, got {type(sent).__name__}"
    assert sent.obj is buf, "the frame was copied instead of forwarded as a view"
    assert sent == message
    assert not tunnel.relay.scheduler.dirty, "a large frame must not wait for the flush"
    _check_stream_untouched(tunnel)


def _bench_flushed(
    benchmark: Any, tunnel: Any, src: Any, message: memoryview, messages: int, frames: int
) -> None:
    """Time `messages` x (receive one message + flush), as one event-loop iteration would.

    Each flush re-arms FlushScheduler's `call_soon`; the loop runs those (no-op) handles
    between rounds, outside the timing, so they never pile up on the idle loop (a pile of a
    million handles costs ~200 MB and makes every `call_soon` several times slower).
    """
    receive, flush_all = tunnel.relay.switch.receive, tunnel.relay.scheduler.flush_all
    conn = src.conn

    def forward() -> None:
        for _ in range(messages):
            receive(conn, message, 0.0)
            flush_all()  # what the loop runs after the iteration that read the message

    def setup() -> None:
        tunnel.rig.flush()
        tunnel.refill()

    benchmark.pedantic(forward, setup=setup, rounds=ROUNDS, warmup_rounds=ROUNDS // 10)
    if benchmark.stats is not None:  # None under --benchmark-disable
        median = benchmark.stats.stats.median
        benchmark.extra_info["messages_per_round"] = messages
        benchmark.extra_info["per_message_us"] = round(median / messages * 1e6, 4)
        benchmark.extra_info["per_frame_us"] = round(median / (messages * frames) * 1e6, 4)
        benchmark.extra_info["frames_per_s"] = round(messages * frames / median)


def _bench_coalesced(
    benchmark: Benchmark, tunnel: Any, direction: str, frames: int, payload: int, messages: int
) -> None:
    src, dest_t = tunnel.ends(direction)
    buf = tunnel.rig.data_message(tunnel.sid, frames, payload)
    before = src.conn.data_bytes

    _bench_flushed(benchmark, tunnel, src, memoryview(buf), messages, frames)

    calls = (src.conn.data_bytes - before) // (frames * payload)
    assert calls >= messages and src.conn.data_bytes - before == calls * frames * payload
    assert dest_t.sends == calls, f"{dest_t.sends} sends for {calls} messages: not coalesced"
    assert dest_t.nbytes == calls * len(buf)
    assert dest_t.last_type is WSMsgType.BINARY
    assert bytes(dest_t.last) == buf, "the coalesced message must carry every frame, in order"
    sent = tunnel.rig.frames_of(bytes(dest_t.last))
    assert len(sent) == frames
    assert all(t == TUNNEL_DATA and sid == tunnel.sid for t, sid, _ in sent)
    assert [p[:1] for _, _, p in sent] == [bytes([0x41 + i % 26]) for i in range(frames)]
    _check_stream_untouched(tunnel)


def test_forward_100_frames_of_100b(benchmark: Benchmark, tunnel: Any, direction: str) -> None:
    """One message of 100 x 100 B frames per round: ONE send out per message."""
    _bench_coalesced(benchmark, tunnel, direction, frames=100, payload=100, messages=1)


def test_forward_100_messages_of_one_100b_frame(
    benchmark: Benchmark, tunnel: Any, direction: str
) -> None:
    """100 messages of a single 100 B frame per round, each flushed: the per-message floor."""
    _bench_coalesced(benchmark, tunnel, direction, frames=1, payload=100, messages=100)


def test_forward_100_window_updates(benchmark: Benchmark, tunnel: Any, direction: str) -> None:
    """100 messages of one WINDOW_UPDATE per round: the control path (read_frame,
    next_state, the credit grant), each flushed."""
    src, dest_t = tunnel.ends(direction)
    buf = encode_window_update(tunnel.sid, 64 * 1024)

    _bench_flushed(benchmark, tunnel, src, memoryview(buf), messages=100, frames=1)

    assert dest_t.sends >= 100 and dest_t.sends % 100 == 0
    assert dest_t.nbytes == dest_t.sends * len(buf), "one WINDOW_UPDATE per send"
    assert bytes(dest_t.last) == buf
    _check_stream_untouched(tunnel)
