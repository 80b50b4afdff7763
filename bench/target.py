"""The benchmark target: one uvloop TCP server that every scenario talks to.

A client opens with a 9-byte request, `mode (1 byte) + n (u64, big-endian)`:
  b"D" n: the server sends n bytes, then keeps the socket open until the client closes;
  b"B" n: the same with this connection's send buffer fixed at BOUNDED_SNDBUF (256 KiB) rather
          than autotuned, so that 1,000 downloads do not queue gigabytes in this host's kernel
          (a real target's send queue is on its own host; scenario 4);
  b"U" n: the server reads n bytes, then answers b"K" (the upload is complete);
  b"E" 0: the server echoes everything until the client closes.
Run as `python -m bench.target --bind 127.0.0.2`; prints a JSON ready line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import struct
import sys

from fastrelay import eventloop

REQUEST = struct.Struct("!cQ")
BLOCK = bytes(range(256)) * 1024  # 256 KiB
OK = b"K"


SNDBUF = 0  # SO_SNDBUF of every connection (--sndbuf); 0: the kernel's autotuning
BOUNDED_SNDBUF = 256 * 1024  # SO_SNDBUF of a b"B" download (the kernel doubles it)


class TargetProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.head = b""
        self.mode = b""
        self.remaining = 0
        self.paused = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
        self.transport = transport
        transport.set_write_buffer_limits(high=1 << 20, low=1 << 18)  # uvloop's low is 16 B
        if SNDBUF:
            sock = transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)

    def data_received(self, data: bytes) -> None:
        if not self.mode:
            self.head += data
            if len(self.head) < REQUEST.size:
                return
            mode, n = REQUEST.unpack_from(self.head)
            data = self.head[REQUEST.size :]
            if mode == b"B":
                sock = self.transport.get_extra_info("socket")  # type: ignore[union-attr]
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BOUNDED_SNDBUF)
                mode = b"D"
            self.mode, self.remaining = mode, n
            if mode == b"D":
                self.pump()
                return
        if self.mode == b"U":
            self.remaining -= len(data)
            if self.remaining <= 0:
                self.transport.write(OK)  # type: ignore[union-attr]
        elif self.mode == b"E":
            self.transport.write(data)  # type: ignore[union-attr]

    def pump(self) -> None:
        transport = self.transport
        # is_closing(): uvloop drops writes to a dead socket without raising, so
        # an endless download to a vanished client must stop here, not spin.
        while (
            self.remaining > 0
            and not self.paused
            and transport is not None
            and not transport.is_closing()
        ):
            chunk = BLOCK if self.remaining >= len(BLOCK) else BLOCK[: self.remaining]
            self.remaining -= len(chunk)
            transport.write(chunk)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.mode == b"D":
            self.pump()

    def eof_received(self) -> bool:
        return False


async def serve(binds: list[str]) -> None:
    loop = asyncio.get_running_loop()
    ports = {}
    for host in binds:
        server = await loop.create_server(TargetProtocol, host, 0, backlog=4096)
        ports[host] = server.sockets[0].getsockname()[1]
    sys.stdout.write(json.dumps({"event": "ready", "ports": ports}) + "\n")
    sys.stdout.flush()
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False)
    parser.add_argument("--bind", action="append", default=[])
    parser.add_argument(
        "--sndbuf",
        type=int,
        default=0,
        help="SO_SNDBUF per connection, bytes (0: kernel autotuning). A remote server's send "
        "queues are not this host's memory; on one host they are (bench/README.md, scenario 4)",
    )
    args = parser.parse_args()
    global SNDBUF
    SNDBUF = args.sndbuf
    eventloop.run_default(serve(args.bind or ["127.0.0.2"]))


if __name__ == "__main__":
    main()
