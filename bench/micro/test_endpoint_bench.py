"""The endpoint's data path (client_a and the agent), socket-free.

Both directions of one open stream at an endpoint:

* relay -> TCP: one WebSocket message of mux frames handed to the endpoint, as
  picows delivers it; each frame's payload is written to the stream's socket
  (a recorder here), credit goes back as WINDOW_UPDATE, and the writer is
  flushed as the loop would after the read;
* TCP -> relay: one socket read of a full 256 KiB (the zero-copy path: the mux
  header is written in front of the read, and the frame goes out from the
  shared read buffer) or of 1 KiB (one copy, coalesced with the next frames).

Every benchmark asserts what reached the socket or the WebSocket, so a broken
path fails; none asserts on timing. Run with the other micro-benchmarks:

    .venv/bin/pytest bench/micro -k endpoint --benchmark-only -q
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bench.micro.endpoint_rig import EndpointRig
from fastrelay.protocol.frames import HEADER_SIZE, FrameType, encode_frame

Benchmark = Callable[..., Any]

pytestmark = pytest.mark.benchmark(min_time=0.0002, warmup=True)
ROUNDS = 1000


@pytest.fixture
def endpoint(loop: Any) -> Iterator[EndpointRig]:
    rig = EndpointRig(loop)
    yield rig
    rig.flush()


def _data_message(sid: int, frames: int, size: int) -> memoryview:
    return memoryview(
        b"".join(
            encode_frame(FrameType.TUNNEL_DATA, sid, bytes([0x41 + i % 26]) * size)
            for i in range(frames)
        )
    )


def _bench_receive(benchmark: Any, rig: EndpointRig, frames: int, size: int, messages: int) -> None:
    message = _data_message(rig.sid, frames, size)
    socket = rig.socket
    receive, flush_all = rig.receive, rig.flush_all

    def run() -> None:
        for _ in range(messages):
            receive(message)
            flush_all()

    before = socket.nbytes
    benchmark.pedantic(run, setup=rig.refill, rounds=ROUNDS, warmup_rounds=ROUNDS // 10)
    moved = socket.nbytes - before
    assert moved and moved % (frames * size * messages) == 0
    assert socket.writes == moved // size, "one socket write per frame"
    assert bytes(socket.last) == bytes([0x41 + (frames - 1) % 26]) * size
    assert rig.stream_alive()


def test_endpoint_receive_100_frames_of_100b(benchmark: Benchmark, endpoint: EndpointRig) -> None:
    _bench_receive(benchmark, endpoint, frames=100, size=100, messages=1)


def test_endpoint_receive_one_64k_frame(benchmark: Benchmark, endpoint: EndpointRig) -> None:
    _bench_receive(benchmark, endpoint, frames=1, size=64 * 1024, messages=10)


def _bench_read(benchmark: Any, rig: EndpointRig, size: int, reads: int) -> None:
    ws = rig.ws
    read, flush_all = rig.read, rig.flush_all

    def run() -> None:
        for _ in range(reads):
            read(size)
        flush_all()

    before = ws.nbytes
    benchmark.pedantic(run, setup=rig.refill, rounds=ROUNDS, warmup_rounds=ROUNDS // 10)
    moved = ws.nbytes - before
    per_read = size + HEADER_SIZE  # the mux header travels with each payload
    assert moved and moved % (per_read * reads) == 0
    assert rig.bytes_sent() >= moved // per_read * size
    assert rig.stream_alive()


def test_endpoint_read_256k_zero_copy(benchmark: Benchmark, endpoint: EndpointRig) -> None:
    _bench_read(benchmark, endpoint, size=256 * 1024, reads=10)
    assert endpoint.ws.external == endpoint.ws.sends, "full reads must go out from the buffer"


def test_endpoint_read_100_of_1k(benchmark: Benchmark, endpoint: EndpointRig) -> None:
    _bench_read(benchmark, endpoint, size=1024, reads=100)
    assert endpoint.ws.external == 0
