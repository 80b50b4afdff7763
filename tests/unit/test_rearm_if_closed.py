"""rearm_if_closed: an aiofastnet transport sees a reset that came with the last bytes.

On uvloop aiofastnet watches its socket with add_reader (a libuv poll handle), and libuv
drops the fd from the poll for good once the kernel reports an error. The reader gets that
event once, and aiofastnet's read loop stops at a short read, so a reset queued behind the
last bytes was never reported: no connection_lost, ever. A protocol that calls
`rearm_if_closed` after each read gets every byte and then the reset, on uvloop and on the
stdlib loop alike. The peer's bytes and its RST are queued before reading starts (the
transport is paused meanwhile), so both are pending at the first read.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable

import aiofastnet
import pytest
import uvloop

from fastrelay.io.reset import rearm_if_closed, state_socket

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "uvloop": uvloop.new_event_loop,
    "asyncio": asyncio.SelectorEventLoop,
}
WAIT = 10.0  # a bound for a broken transport, never a measurement


class Reader(asyncio.BufferedProtocol):
    def __init__(self, buffer_size: int) -> None:
        self.buffer = memoryview(bytearray(buffer_size))
        self.got = bytearray()
        self.transport: asyncio.Transport | None = None
        self.sock: socket.socket | None = None
        self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.sock = state_socket(transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.got += self.buffer[:nbytes]
        assert self.transport is not None
        rearm_if_closed(self.transport, self.sock)

    def eof_received(self) -> bool:
        return True

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


async def _bytes_then_reset(payload: bytes, buffer_size: int) -> tuple[bytes, object]:
    loop = asyncio.get_running_loop()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    accept = loop.create_task(loop.sock_accept(listener))
    transport, reader = await aiofastnet.create_connection(
        loop, lambda: Reader(buffer_size), "127.0.0.1", listener.getsockname()[1]
    )
    peer, _ = await accept
    listener.close()
    try:
        transport.pause_reading()  # nothing is read until the bytes and the RST are both queued
        peer.settimeout(1.0)  # a payload past what the buffers take stops there
        with contextlib.suppress(TimeoutError):
            peer.sendall(payload)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()  # the RST, behind the bytes
        await asyncio.sleep(0.05)
        transport.resume_reading()
        try:
            exc: object = await asyncio.wait_for(asyncio.shield(reader.lost), WAIT)
        except TimeoutError:
            exc = "no connection_lost"
        return bytes(reader.got), exc
    finally:
        peer.close()
        transport.abort()


@pytest.mark.parametrize("loop_name", LOOPS)
@pytest.mark.parametrize(
    ("size", "buffer_size"),
    [
        pytest.param(1000, 65536, id="one-short-read"),
        pytest.param(100_000, 16384, id="full-reads-then-short"),
        pytest.param(60 * 16384, 16384, id="past-the-read-loop-limit"),
    ],
)
def test_bytes_then_reset_arrive_as_bytes_then_reset(
    loop_name: str, size: int, buffer_size: int
) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    loop = LOOPS[loop_name]()
    try:
        got, exc = loop.run_until_complete(_bytes_then_reset(payload, buffer_size))
    finally:
        loop.close()
    assert isinstance(exc, ConnectionResetError), exc
    # Everything that reached the client's socket before the reset is read first
    # (of a large payload the peer's kernel may still have held a tail, which
    # its RST discards).
    assert got == payload[: len(got)]
    assert len(got) >= min(size, 64 * 1024)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_state_socket_is_the_transports_own_socket(loop_name: str) -> None:
    """Not asyncio's TransportSocket wrapper (a Python call per read), but the socket
    object under it: the same descriptor, and its TCP state readable."""

    async def check() -> tuple[object, int, int, bytes]:
        loop = asyncio.get_running_loop()
        listener = socket.create_server(("127.0.0.1", 0))
        listener.setblocking(False)
        accept = loop.create_task(loop.sock_accept(listener))
        transport, _ = await aiofastnet.create_connection(
            loop, lambda: Reader(1024), "127.0.0.1", listener.getsockname()[1]
        )
        peer, _ = await accept
        listener.close()
        try:
            sock = state_socket(transport)
            wrapped = transport.get_extra_info("socket")
            assert sock is not None
            state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)
            return type(sock), sock.fileno(), wrapped.fileno(), state
        finally:
            peer.close()
            transport.abort()

    loop = LOOPS[loop_name]()
    try:
        kind, fd, wrapped_fd, state = loop.run_until_complete(check())
    finally:
        loop.close()
    assert kind is socket.socket
    assert fd == wrapped_fd
    assert state[0] == 1  # TCP_ESTABLISHED
