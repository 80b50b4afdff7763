"""Cost of the mux frame codec (fastrelay.protocol.frames) and the control messages.

Run: .venv/bin/pytest bench/micro/test_codec_bench.py --benchmark-only -q
Results are asserted for correctness only; timing is reported, never asserted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from fastrelay.protocol.frames import HEADER, HEADER_SIZE, FrameType, encode_frame, iter_frames
from fastrelay.protocol.messages import ConnectResponse, OpenStream

Benchmark = Callable[..., Any]

# Most of these calls take well under a microsecond: batch iterations per round so the
# figures reflect the codec, not the clock.
pytestmark = pytest.mark.benchmark(min_time=0.0002, warmup=True)

SID = (7 << 20) + 42  # an id from the 7th client range
TUNNEL_DATA = int(FrameType.TUNNEL_DATA)


def _set_per_frame(benchmark: Any, frames: int) -> None:
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["per_frame_us"] = round(benchmark.stats.stats.median / frames * 1e6, 4)


@pytest.mark.parametrize("size", [100, 64 * 1024], ids=["100B", "64KiB"])
def test_encode_tunnel_data(benchmark: Benchmark, size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    frame = benchmark(encode_frame, TUNNEL_DATA, SID, payload)
    assert len(frame) == HEADER_SIZE + size
    assert HEADER.unpack_from(frame) == (TUNNEL_DATA, 0, SID, size)
    assert frame[HEADER_SIZE:] == payload


def test_decode_one_64k_frame(benchmark: Benchmark) -> None:
    payload = b"\xab" * (64 * 1024)
    message = memoryview(encode_frame(TUNNEL_DATA, SID, payload))

    frames = benchmark(lambda: list(iter_frames(message)))
    assert frames == [(TUNNEL_DATA, 0, SID, HEADER_SIZE, len(payload))]
    _set_per_frame(benchmark, 1)


def test_decode_100_frames_of_100b(benchmark: Benchmark) -> None:
    payloads = [bytes([i]) * 100 for i in range(100)]
    message = memoryview(
        b"".join(encode_frame(TUNNEL_DATA, SID + i, p) for i, p in enumerate(payloads))
    )

    frames = benchmark(lambda: list(iter_frames(message)))
    assert len(frames) == 100
    for i, (frame_type, flags, sid, start, length) in enumerate(frames):
        assert (frame_type, flags, sid, length) == (TUNNEL_DATA, 0, SID + i, 100)
        assert start == i * (HEADER_SIZE + 100) + HEADER_SIZE
        assert message[start : start + length] == payloads[i]
    _set_per_frame(benchmark, 100)


def _connect() -> OpenStream:
    return OpenStream(
        FrameType.CONNECT,
        "5f0c8a4e-3d52-4b8e-9a57-0f1f0e1d2c3b",
        "www.example.com",
        443,
        url="https://www.example.com:443",
        headers={"User-Agent": "Mozilla/5.0 (X11; Linux x86_64)", "Proxy-Connection": "keep-alive"},
    )


def _payload(frame: bytes, frame_type: int) -> memoryview:
    ((decoded_type, _flags, sid, start, length),) = iter_frames(memoryview(frame))
    assert (decoded_type, sid) == (frame_type, SID)
    return memoryview(frame)[start : start + length]


def test_encode_connect(benchmark: Benchmark) -> None:
    request = _connect()
    frame = benchmark(request.encode, SID)
    assert OpenStream.decode(FrameType.CONNECT, _payload(frame, FrameType.CONNECT)) == request


def test_decode_connect(benchmark: Benchmark) -> None:
    request = _connect()
    payload = _payload(request.encode(SID), FrameType.CONNECT)
    decoded = benchmark(OpenStream.decode, FrameType.CONNECT, payload)
    assert decoded == request
    assert (decoded.host, decoded.port) == ("www.example.com", 443)


def test_encode_connect_response(benchmark: Benchmark) -> None:
    response = ConnectResponse("5f0c8a4e-3d52-4b8e-9a57-0f1f0e1d2c3b", 200, window=256 * 1024)
    frame = benchmark(response.encode, SID)
    assert ConnectResponse.decode(_payload(frame, FrameType.CONNECT_RESPONSE)) == response


def test_decode_connect_response(benchmark: Benchmark) -> None:
    response = ConnectResponse("5f0c8a4e-3d52-4b8e-9a57-0f1f0e1d2c3b", 200, window=256 * 1024)
    payload = _payload(response.encode(SID), FrameType.CONNECT_RESPONSE)
    decoded = benchmark(ConnectResponse.decode, payload)
    assert decoded == response
    assert decoded.ok and decoded.window == 256 * 1024
