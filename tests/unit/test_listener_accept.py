"""fastrelay.io.listener: the guard's own accept loop serves every connection and
leaves each transport tracked by its Server, as aiofastnet's accept loop does."""

from __future__ import annotations

import asyncio
import socket

import pytest
import uvloop

from fastrelay.io import listener

CLIENTS = 40


class Echo(asyncio.Protocol):
    made = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        Echo.made += 1
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]


async def _serve_and_close() -> tuple[bool, list[bytes], int, list[bytes]]:
    loop = asyncio.get_running_loop()
    Echo.made = 0
    server: object = await listener.create_server(loop, Echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    guard_direct = listener._Guard(loop, server, server._sockets[0]).direct  # type: ignore[attr-defined]
    conns = await asyncio.gather(
        *(asyncio.open_connection("127.0.0.1", port) for _ in range(CLIENTS))
    )
    answers = []
    for i, (reader, writer) in enumerate(conns):
        writer.write(b"ping %d" % i)
        answers.append(await reader.readexactly(len(b"ping %d" % i)))
    tracked = len(server._clients)  # type: ignore[attr-defined]
    server.close()  # type: ignore[attr-defined]
    server.close_clients()  # type: ignore[attr-defined]
    await asyncio.wait_for(server.wait_closed(), 5)  # type: ignore[attr-defined]
    ends = await asyncio.wait_for(asyncio.gather(*(reader.read() for reader, _ in conns)), 5)
    for _, writer in conns:
        writer.close()
    return guard_direct, answers, tracked, ends


@pytest.mark.parametrize("loop_name", ["uvloop", "asyncio"])
def test_every_connection_is_served_and_tracked(loop_name: str) -> None:
    run = uvloop.run if loop_name == "uvloop" else asyncio.run
    _, answers, tracked, ends = run(_serve_and_close())
    assert answers == [b"ping %d" % i for i in range(CLIENTS)]
    assert Echo.made == CLIENTS
    assert tracked == CLIENTS  # close_clients() and wait_closed() know every one
    assert ends == [b""] * CLIENTS  # close_clients() ended them all


def test_the_guard_accepts_itself_without_tls() -> None:
    async def main() -> bool:
        loop = asyncio.get_running_loop()
        server: object = await listener.create_server(loop, Echo, "127.0.0.1", 0)
        sock = server._sockets[0]  # type: ignore[attr-defined]
        direct = listener._Guard(loop, server, sock).direct
        server.close()  # type: ignore[attr-defined]
        return direct

    assert uvloop.run(main())


@pytest.mark.parametrize("family, host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_the_guard_accepts_a_socket_like_socket_accept_would(family: int, host: str) -> None:
    """The guard makes each connection's socket from the listener's family, type and
    protocol kept as ints: a `socket.socket` with the same attributes as `accept()`'s
    (as ints), connected to the peer, which aiofastnet and picows
    (get_extra_info("socket")) need."""
    with socket.socket(family, socket.SOCK_STREAM) as server:
        server.bind((host, 0))
        server.listen()
        guard = listener._Guard(None, object(), server)  # type: ignore[arg-type]
        with socket.create_connection(server.getsockname()[:2]) as peer:
            conn, addr = guard.accept()
            with conn:
                assert isinstance(conn, socket.socket)
                assert type(conn.family) is int  # read as the C socket's int: no enum
                assert (conn.family, conn.type, conn.proto) == (
                    server.family,
                    server.type,
                    server.proto,
                )
                assert addr == peer.getsockname()
                assert conn.getpeername() == peer.getsockname()
                peer.sendall(b"ping")
                assert conn.recv(4) == b"ping"


def test_a_listener_without_the_c_accept_goes_through_its_own_accept() -> None:
    """A listening socket that is not a socket.socket (a wrapper): its accept() as it is."""

    class Wrapper:
        def __init__(self, sock: socket.socket) -> None:
            self.sock = sock
            self.family, self.type, self.proto = sock.family, sock.type, sock.proto

        def getsockname(self) -> tuple[str, int]:
            return self.sock.getsockname()  # type: ignore[no-any-return]

        def accept(self) -> tuple[socket.socket, object]:
            return self.sock.accept()

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        guard = listener._Guard(None, object(), Wrapper(server))  # type: ignore[arg-type]
        assert guard.kind is None
        with socket.create_connection(server.getsockname()) as peer:
            conn, _ = guard.accept()
            with conn:
                assert conn.getpeername() == peer.getsockname()
