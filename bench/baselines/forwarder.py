"""One-hop TCP forwarder on uvloop: client -> forwarder -> a fixed target.

The physical limit of one Python hop on this machine. Pause/resume both ways;
EOF is passed on as a half-close; each socket is closed once both directions ended.
Run as `python -m bench.baselines.forwarder --target HOST:PORT`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from fastrelay import eventloop


class Pipe(asyncio.Protocol):
    def __init__(self, peer: Pipe | None = None) -> None:
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self.eof = False
        self.early = bytearray()  # bytes that arrived before the other side existed

    def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
        self.transport = transport
        # uvloop's default low-water mark is 16 bytes, which resumes a paused
        # reader only after a full drain; give the baseline a fair pipeline.
        transport.set_write_buffer_limits(high=1 << 20, low=1 << 18)

    def data_received(self, data: bytes) -> None:
        if self.peer is None:
            # uvloop may deliver a read despite pause_reading() in connection_made.
            self.early += data
            self.transport.pause_reading()  # type: ignore[union-attr]
            return
        self.peer.transport.write(data)  # type: ignore[union-attr]

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.transport.is_closing():
            peer.transport.write_eof()
            if peer.eof:
                peer.transport.close()
                self.transport.close()  # type: ignore[union-attr]
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.transport.is_closing():
            peer.transport.close()

    def pause_writing(self) -> None:
        self.peer.transport.pause_reading()  # type: ignore[union-attr]

    def resume_writing(self) -> None:
        self.peer.transport.resume_reading()  # type: ignore[union-attr]


class Inbound(Pipe):
    def __init__(self, target: tuple[str, int]) -> None:
        super().__init__()
        self.target = target

    def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
        super().connection_made(transport)
        transport.pause_reading()
        asyncio.get_running_loop().create_task(self.dial())

    async def dial(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, outbound = await loop.create_connection(lambda: Pipe(self), *self.target)
        except OSError:
            self.transport.close()  # type: ignore[union-attr]
            return
        self.peer = outbound
        if self.early:
            outbound.transport.write(bytes(self.early))  # type: ignore[union-attr]
            self.early = bytearray()
        self.transport.resume_reading()  # type: ignore[union-attr]


async def serve(target: tuple[str, int]) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Inbound(target), "127.0.0.1", 0, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    sys.stdout.write(json.dumps({"event": "ready", "listen": f"127.0.0.1:{port}"}) + "\n")
    sys.stdout.flush()
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False)
    parser.add_argument("--target", required=True)
    host, port = parser.parse_args().target.rsplit(":", 1)
    eventloop.run_default(serve((host, int(port))))


if __name__ == "__main__":
    main()
