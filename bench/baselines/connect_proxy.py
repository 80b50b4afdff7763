"""One-hop HTTP CONNECT proxy on uvloop that dials the target directly.

The baseline for tunnel setup: the least a CONNECT proxy can do.
Run as `python -m bench.baselines.connect_proxy`.
"""

from __future__ import annotations

import asyncio
import json
import sys

from bench.baselines.forwarder import Pipe
from fastrelay import eventloop

ESTABLISHED = b"HTTP/1.1 200 Connection Established\r\n\r\n"


class ConnectInbound(Pipe):
    def __init__(self) -> None:
        super().__init__()
        self.head = b""
        self.dialing = False

    def data_received(self, data: bytes) -> None:
        if self.peer is not None:
            super().data_received(data)
            return
        self.head += data
        if self.dialing:
            return
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            return
        line = self.head.split(b"\r\n", 1)[0].split()
        early, self.head = self.head[end + 4 :], b""
        self.dialing = True
        self.transport.pause_reading()  # type: ignore[union-attr]
        host, _, port = line[1].decode().rpartition(":")
        asyncio.get_running_loop().create_task(self.dial(host.strip("[]"), int(port), early))

    async def dial(self, host: str, port: int, early: bytes) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, outbound = await loop.create_connection(lambda: Pipe(self), host, port)
        except OSError:
            self.transport.write(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")  # type: ignore[union-attr]
            self.transport.close()  # type: ignore[union-attr]
            return
        self.peer = outbound
        self.transport.write(ESTABLISHED)  # type: ignore[union-attr]
        early += self.head  # bytes that raced the pause
        self.head = b""
        if early:
            outbound.transport.write(early)  # type: ignore[union-attr]
        self.transport.resume_reading()  # type: ignore[union-attr]


async def serve() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(ConnectInbound, "127.0.0.1", 0, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    sys.stdout.write(json.dumps({"event": "ready", "listen": f"127.0.0.1:{port}"}) + "\n")
    sys.stdout.flush()
    await asyncio.Event().wait()


if __name__ == "__main__":
    eventloop.run_default(serve())
