"""BoundedReads (fastrelay/io/mux.py): a WebSocket's reads are capped, so picows'
read buffer, which only ever grows, stays bounded whatever the peer sends."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import socket
import struct
import threading
import time

from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_create_server
from support.loops import Runner
from support.nosocket import NoSocket

from fastrelay.io.mux import WS_READ_SIZE, BoundedReads, bound_reads

FRAME = 64 * 1024  # each frame's payload
FRAMES = 1024  # 64 MiB in all
STALLS = 40  # times the server's loop stops for STALL_S while the client sends
STALL_S = 0.03


class Inner:
    """Records what BoundedReads passes on; offers a read buffer of `size` bytes."""

    def __init__(self, size: int) -> None:
        self.buffer = bytearray(size)
        self.calls: list[tuple[str, object]] = []

    def get_buffer(self, sizehint: int) -> memoryview:
        self.calls.append(("get_buffer", sizehint))
        return memoryview(self.buffer)

    def buffer_updated(self, nbytes: int) -> None:
        self.calls.append(("buffer_updated", nbytes))

    def eof_received(self) -> bool:
        self.calls.append(("eof_received", None))
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.calls.append(("connection_lost", exc))

    def pause_writing(self) -> None:
        self.calls.append(("pause_writing", None))

    def resume_writing(self) -> None:
        self.calls.append(("resume_writing", None))


def test_a_large_buffer_is_offered_only_up_to_ws_read_size() -> None:
    inner = Inner(16 * 1024 * 1024)
    view = BoundedReads(inner).get_buffer(-1)
    assert len(view) == WS_READ_SIZE
    view[0:3] = b"abc"  # the same memory as picows' buffer, not a copy
    view[-1:] = b"z"
    assert bytes(inner.buffer[:3]) == b"abc"
    assert inner.buffer[WS_READ_SIZE - 1] == ord("z")
    assert inner.buffer[WS_READ_SIZE] == 0


def test_a_buffer_within_the_cap_is_offered_whole() -> None:
    inner = Inner(16 * 1024)
    assert len(BoundedReads(inner).get_buffer(-1)) == 16 * 1024


def test_every_other_event_reaches_the_websocket_unchanged() -> None:
    inner = Inner(1024)
    reads = BoundedReads(inner)
    error = ConnectionResetError("gone")
    reads.buffer_updated(700)
    reads.pause_writing()
    reads.resume_writing()
    assert reads.eof_received() is True
    reads.connection_lost(error)
    assert inner.calls == [
        ("buffer_updated", 700),
        ("pause_writing", None),
        ("resume_writing", None),
        ("eof_received", None),
        ("connection_lost", error),
    ]
    assert reads.is_buffered_protocol() is True


class Counting(WSListener):  # type: ignore[misc]
    def __init__(self, bounded: bool) -> None:
        super().__init__()
        self.bounded = bounded
        self.transport: WSTransport | None = None
        self.frames = 0
        self.bytes = 0
        self.bad: list[int] = []  # frames whose payload was not what was sent
        self.done = asyncio.get_running_loop().create_future()

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        if self.bounded:
            bound_reads(transport)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type != WSMsgType.BINARY:
            return
        payload = frame.get_payload_as_memoryview()
        fill = self.frames % 251
        if len(payload) != FRAME or payload[0] != fill or payload[-1] != fill:
            self.bad.append(self.frames)
        self.frames += 1
        self.bytes += len(payload)
        if self.frames == FRAMES and not self.done.done():
            self.done.set_result(None)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"closed after {self.frames} frames"))


def upgraded(port: int) -> socket.socket:
    """A blocking connection to the server that has sent its upgrade request."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    return sock


def send_frames(port: int, failures: list[BaseException]) -> None:
    """A blocking WebSocket client: the upgrade, then FRAMES binary frames as fast
    as the socket takes them (masked with the all-zero key, so no XOR here)."""
    try:
        with upgraded(port) as sock:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(4096)
                if not chunk:
                    raise ConnectionError("closed during the upgrade")
                head += chunk
            assert head.startswith(b"HTTP/1.1 101"), head
            header = bytes([0x82, 0x80 | 127]) + struct.pack("!Q", FRAME) + b"\0\0\0\0"
            for n in range(FRAMES):
                sock.sendall(header + bytes([n % 251]) * FRAME)
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(30)
            while sock.recv(65536):  # until the server closes
                pass
    except BaseException as exc:  # reported by the test
        failures.append(exc)


def read_buffer_size(transport: WSTransport) -> int:
    """What picows' read buffer offers now: its size less what it holds."""
    protocol = transport.underlying_transport.get_protocol()
    ws = protocol.ws if isinstance(protocol, BoundedReads) else protocol
    return len(ws.get_buffer(-1))


async def burst(bounded: bool) -> tuple[Counting, int]:
    listeners: list[Counting] = []

    def factory(request: object) -> Counting:
        listeners.append(Counting(bounded))
        return listeners[-1]

    server = await ws_create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    failures: list[BaseException] = []
    client = threading.Thread(target=send_frames, args=(port, failures), daemon=True)
    loop = asyncio.get_running_loop()
    stalls = [STALLS]

    def stall() -> None:  # the loop is busy: the socket's queue grows meanwhile
        time.sleep(STALL_S)
        stalls[0] -= 1
        if stalls[0] > 0:
            loop.call_later(0.005, stall)

    try:
        client.start()
        loop.call_later(0.05, stall)
        deadline = loop.time() + 60
        while not listeners and loop.time() < deadline:
            await asyncio.sleep(0.01)
        assert listeners, "the client never upgraded"
        await asyncio.wait_for(listeners[0].done, timeout=60)
        listener = listeners[0]
        assert listener.transport is not None
        size = read_buffer_size(listener.transport)
        listener.transport.disconnect()
    finally:
        server.close()
        await server.wait_closed()
        await asyncio.to_thread(client.join, 30)
    assert not failures, failures
    return listener, size


def test_a_burst_behind_a_busy_loop_leaves_the_read_buffer_bounded(run: Runner) -> None:
    listener, size = run(lambda: burst(bounded=True))
    assert listener.bad == []
    assert (listener.frames, listener.bytes) == (FRAMES, FRAMES * FRAME)
    # A partial frame plus one read, doubled (BoundedReads' docstring).
    assert size <= 2.25 * (FRAME + 14 + WS_READ_SIZE)


class _Foreign:
    """A transport that is not aiofastnet's: bound_reads must leave it alone."""

    def __init__(self) -> None:
        self.protocol = object()
        self.set_to: list[object] = []

    def get_protocol(self) -> object:
        return self.protocol

    def set_protocol(self, protocol: object) -> None:
        self.set_to.append(protocol)

    def get_extra_info(self, name: str, default: object = None) -> object:
        return NoSocket() if name == "socket" else default

    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, data: bytes) -> None:
        raise AssertionError("nothing is written here")


def test_a_transport_not_aiofastnets_is_left_as_it_is(run: Runner) -> None:
    async def main() -> None:
        foreign = _Foreign()
        loop = asyncio.get_running_loop()
        transport = WSTransport(False, foreign, logging.getLogger("test.bounded"), loop)
        bound_reads(transport)
        assert foreign.set_to == []

    run(main)


def test_bounding_twice_puts_one_wrapper_in_front(run: Runner) -> None:
    async def main() -> None:
        seen: list[object] = []

        class Twice(WSListener):  # type: ignore[misc]
            def on_ws_connected(self, transport: WSTransport) -> None:
                bound_reads(transport)
                bound_reads(transport)
                reads = transport.underlying_transport.get_protocol()
                seen.append(reads)
                seen.append(reads.ws)
                transport.disconnect()

        server = await ws_create_server(lambda request: Twice(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            await asyncio.wait_for(asyncio.to_thread(send_upgrade_only, port), timeout=30)
        finally:
            server.close()
            await server.wait_closed()
        assert isinstance(seen[0], BoundedReads)
        assert not isinstance(seen[1], BoundedReads)

    run(main)


def send_upgrade_only(port: int) -> None:
    with upgraded(port) as sock:
        while sock.recv(65536):  # the 101, then the server closes
            pass
