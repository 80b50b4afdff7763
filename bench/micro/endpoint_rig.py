"""One stream open at a socket-free endpoint, for bench/micro/test_endpoint_bench.py.

The endpoint is the real carrier and stream code; only the picows transport
(a recorder) and the stream's TCP socket (a recorder) are fakes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from picows import WSTransport

from fastrelay.io.carrier import Carrier, CarrierStats, RelayLink
from fastrelay.io.tunnel import READ_SIZE, attach, filled, read_buffer
from fastrelay.protocol.frames import FrameType
from fastrelay.protocol.messages import Hello, OpenStream

MAX_CREDIT = 2**31 - 1


class _NoSocket:
    """The socket under the fake transport: picows asks for its fileno, the carrier
    sets TCP_NOTSENT_LOWAT on it."""

    @staticmethod
    def fileno() -> int:
        return -1

    @staticmethod
    def setsockopt(level: int, option: int, value: int) -> None:
        pass


class FakeUnderlying:
    """The socket transport under the WebSocket: what picows and the carrier ask of it."""

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return _NoSocket() if name == "socket" else default

    def write(self, data: Any) -> None:  # pragma: no cover - every send is the recorder's own
        raise AssertionError("RecordingWS.send writes nothing below it")


class RecordingWS(WSTransport):
    """The picows transport: counts what the endpoint sends. A subclass of picows' own,
    because the compiled writer (fastrelay/io/mux.pxd) holds a WSTransport and calls its
    `send` in C."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(False, FakeUnderlying(), logging.getLogger("bench.micro"), loop)
        self.closed = False
        self.sends = self.nbytes = self.external = self.pings = 0

    def send(self, msg_type: Any, data: Any, *flags: bool) -> None:  # type: ignore[override]
        self.sends += 1
        self.nbytes += len(data)

    def send_reuse_external_bytearray(  # type: ignore[override]
        self, msg_type: Any, buf: bytearray, offset: int, *flags: bool
    ) -> None:
        self.sends += 1
        self.external += 1
        self.nbytes += len(buf) - offset

    def send_close(self, code: Any = None, msg: bytes | None = None) -> None:  # type: ignore[override]
        self.closed = True

    def send_ping(self, message: Any = None) -> None:  # type: ignore[override]
        self.pings += 1  # the session's path probes (the first goes right after HELLO)

    def disconnect(self, graceful: bool = True) -> None:
        self.closed = True


class RecordingSocket:
    """The stream's TCP transport: counts writes, keeps the last one (not a copy)."""

    def __init__(self) -> None:
        self.writes = self.nbytes = 0
        self.last: Any = None

    def write(self, data: Any) -> None:
        self.writes += 1
        self.nbytes += len(data)
        self.last = data

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


class _Quiet:
    def __getattr__(self, name: str) -> Any:
        return lambda *args: None


class _Agent(_Quiet):
    """Leaves every open waiting: the rig accepts it itself."""


class EndpointRig:
    """An agent-side stream, open, on a carrier connected to a recorder."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        link = RelayLink("ws://bench/v1/agent", "agent", "t", None, 10.0, 1 << 20, 1.0, MAX_CREDIT)

        async def build() -> Carrier:  # Carrier() needs a running loop
            return Carrier(link, _Agent(), _Quiet(), CarrierStats())  # type: ignore[arg-type]

        self.carrier = carrier = loop.run_until_complete(build())
        self.ws = RecordingWS(loop)
        carrier.connected(self.ws)  # type: ignore[arg-type]
        carrier.receive(memoryview(Hello("bench-relay").encode()))
        self.sid = 7
        open_frame = OpenStream(FrameType.CONNECT, "bench", "t.test", 443, window=MAX_CREDIT)
        carrier.receive(memoryview(open_frame.encode(self.sid)))
        self.stream = stream = carrier.streams[self.sid]
        self.socket = RecordingSocket()
        attach(stream, self.socket)  # type: ignore[arg-type]
        stream.accept(MAX_CREDIT, 0.0)
        self.receive = carrier.receive  # what CarrierListener.on_ws_frame does
        self.flush_all = carrier.scheduler.flush_all
        self.flush()
        self.ws.sends = self.ws.nbytes = self.ws.external = 0  # the answer to the open

    def read(self, n: int) -> None:
        """One TCP read of `n` bytes (n <= READ_SIZE) into the shared buffer."""
        stream = self.stream
        view = read_buffer(stream)
        assert len(view) == READ_SIZE
        filled(stream, n)

    def refill(self) -> None:
        """Credit both ways back to the maximum (untimed setup)."""
        self.stream.send_window.available = MAX_CREDIT // 2
        window = self.stream.recv_window
        window.outstanding = window.window
        self.flush()

    def flush(self) -> None:
        self.loop.run_until_complete(asyncio.sleep(0))

    def bytes_sent(self) -> int:
        return self.stream.bytes_out

    def stream_alive(self) -> bool:
        return self.carrier.streams.get(self.sid) is self.stream and not self.stream.ended
