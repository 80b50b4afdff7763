"""fastrelay.io.listener: the guard's own accept loop serves every connection and
leaves each transport tracked by its Server, as aiofastnet's accept loop does."""

from __future__ import annotations

import asyncio

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
