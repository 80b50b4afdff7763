"""The load client: raw sockets (uvloop when installed) through a topology's entry.

`Tunnel` is one connection that has done its CONNECT handshake (when the
topology needs one) and then counts bytes with a BufferedProtocol, so the
client spends as little CPU per byte as possible and stays out of the way of
the systems it measures.
"""

from __future__ import annotations

import asyncio
import struct
import time

from bench.topology import TARGET_HOST, Topology

REQUEST = struct.Struct("!cQ")
CHUNK = 256 * 1024
PAYLOAD = bytes(CHUNK)


class Tunnel(asyncio.BufferedProtocol):
    def __init__(self, handshake: bool) -> None:
        self.buffer = bytearray(CHUNK)
        self.view = memoryview(self.buffer)
        self.head = b"" if handshake else None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.received = 0
        self.waiter: tuple[int, asyncio.Future[None]] | None = None
        self.can_write = asyncio.Event()
        self.can_write.set()
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()
        if not handshake:
            self.opened.set_result(None)

    # --- protocol ---
    def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        if self.head is not None:
            self.head += bytes(self.view[:nbytes])
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            status = self.head.split(b" ", 2)[1] if b" " in self.head else b"?"
            extra = len(self.head) - end - 4
            self.head = None
            opened = self.opened
            if status != b"200":
                if not opened.done():  # the opener may have given up (a timeout cancels it)
                    opened.set_exception(ConnectionError(f"CONNECT answered {status!r}"))
                return
            if not opened.done():
                opened.set_result(None)
            nbytes = extra
        self.received += nbytes
        waiter = self.waiter
        if waiter is not None and self.received >= waiter[0] and not waiter[1].done():
            waiter[1].set_result(None)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        err = exc or ConnectionError("connection closed")
        for fut in (self.opened, self.waiter[1] if self.waiter else None):
            if fut is not None and not fut.done():
                fut.set_exception(err)
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    # --- client API ---
    async def until_received(self, total: int, timeout: float = 600) -> None:
        if self.received >= total:
            return
        fut = asyncio.get_running_loop().create_future()
        self.waiter = (total, fut)
        await asyncio.wait_for(fut, timeout)

    async def send(self, n: int) -> None:
        assert self.transport is not None
        while n > 0:
            await self.can_write.wait()
            chunk = PAYLOAD if n >= CHUNK else PAYLOAD[:n]
            self.transport.write(chunk)
            n -= len(chunk)

    def request(self, mode: bytes, n: int = 0) -> None:
        assert self.transport is not None
        self.transport.write(REQUEST.pack(mode, n))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def open_tunnel(topo: Topology, target_port: int, timeout: float = 30) -> Tunnel:
    loop = asyncio.get_running_loop()
    _, tunnel = await asyncio.wait_for(
        loop.create_connection(lambda: Tunnel(topo.uses_connect), *topo.entry), timeout
    )
    if topo.uses_connect:
        assert tunnel.transport is not None
        tunnel.transport.write(
            f"CONNECT {TARGET_HOST}:{target_port} HTTP/1.1\r\nHost: {TARGET_HOST}:{target_port}"
            "\r\n\r\n".encode()
        )
    await asyncio.wait_for(tunnel.opened, timeout)
    return tunnel


async def timed_open(topo: Topology, target_port: int) -> tuple[Tunnel, float]:
    start = time.perf_counter()
    tunnel = await open_tunnel(topo, target_port)
    return tunnel, time.perf_counter() - start
