"""LoopStreamSocket: the stream's writes of memoryviews are safe on the loop's own transport.

The stream writes views of picows' read buffer, which the next read overwrites. uvloop's
transport keeps a reference to a view it could not send at once (no copy), so without
LoopStreamSocket's own send-then-copy-the-tail the bytes the peer finally reads would be
whatever the buffer held later.
"""

from __future__ import annotations

import asyncio
import socket

import pytest
import uvloop

from fastrelay.io.tunnel import LoopStreamSocket, abort_socket


class _Stream:
    def __init__(self) -> None:
        self.lost: list[BaseException | None] = []
        self.paused = 0

    def socket_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)

    def socket_paused_writing(self) -> None:
        self.paused += 1

    def socket_resumed_writing(self) -> None:
        pass


CHUNK = 64 * 1024
WRITES = 16  # far beyond what the (small) socket buffers take without a reader


async def _write_through_a_full_socket() -> tuple[bytes, bytes, int]:
    loop = asyncio.get_running_loop()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the peer's, inherited
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    port = listener.getsockname()[1]
    stream = _Stream()
    accept = loop.create_task(loop.sock_accept(listener))
    _, sock = await loop.create_connection(lambda: LoopStreamSocket(stream), "127.0.0.1", port)
    peer, _ = await accept
    peer.setblocking(False)
    assert sock.transport is not None
    sock.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    sent = bytearray()
    for i in range(WRITES):
        buf[:] = bytes([i]) * CHUNK  # the "next read" overwrites the buffer
        sock.write(view)
        sent += buf
    queued = sock.transport.get_write_buffer_size()
    sock.transport.write_eof()
    received = bytearray()
    while True:
        data = await loop.sock_recv(peer, 1 << 20)
        if not data:
            break
        received += data
    sock.close()
    peer.close()
    listener.close()
    return bytes(sent), bytes(received), queued


@pytest.mark.parametrize("loop_name", ["uvloop", "asyncio"])
def test_views_written_to_a_full_socket_arrive_as_they_were_when_written(
    loop_name: str,
) -> None:
    run = uvloop.run if loop_name == "uvloop" else asyncio.run
    sent, received, queued = run(_write_through_a_full_socket())
    assert queued > 0  # the transport did buffer: the case that matters was reached
    assert len(received) == len(sent)
    assert received == sent


def test_a_view_goes_out_without_the_transport_when_the_socket_takes_it() -> None:
    """Nothing queued and room in the socket: the write needs no copy at all."""

    class Recording:
        def __init__(self) -> None:
            self.writes: list[object] = []

        def get_write_buffer_size(self) -> int:
            return 0

        def is_closing(self) -> bool:
            return False

        def write(self, data: object) -> None:
            self.writes.append(data)

    a, b = socket.socketpair()
    with a, b:
        sock = LoopStreamSocket(_Stream())  # type: ignore[arg-type]
        transport = Recording()
        sock.transport, sock.fd = transport, a.fileno()  # type: ignore[assignment]
        sock.write(memoryview(b"hello"))
        assert b.recv(10) == b"hello"
        assert transport.writes == []
        sock.write(b"bytes go to the transport as they are")
        assert transport.writes == [b"bytes go to the transport as they are"]


def test_abort_resets_the_connection() -> None:
    async def main() -> bytes | BaseException:
        loop = asyncio.get_running_loop()
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        accept = loop.create_task(loop.sock_accept(listener))
        port = listener.getsockname()[1]
        _, sock = await loop.create_connection(
            lambda: LoopStreamSocket(_Stream()), "127.0.0.1", port
        )
        peer, _ = await accept
        peer.setblocking(False)
        abort_socket(sock)
        try:
            result: bytes | BaseException = await loop.sock_recv(peer, 10)
        except ConnectionResetError as exc:
            result = exc
        peer.close()
        listener.close()
        return result

    assert isinstance(uvloop.run(main()), ConnectionResetError)
