"""Client A of the noisy-neighbour scenario: a client_a stand-in in a process of its own.

It speaks the mux protocol to the relay directly (bench/muxclient.py's MuxClient, with
TUNNEL_DATA handling added), on a WebSocket whose SO_RCVBUF is set small *before* the
connect, so the kernel cannot hide a stopped reader behind loopback's large autotuned
receive buffer (tcp_rmem goes up to 32 MB here). client_a cannot be told to do that, which
is why A is not a real client_a. It opens `--streams` tunnels to the bench target, asks
each for an endless download, and grants the normal per-stream window (client_a's
default, or `--window`), returning credit for every byte it reads, as client_a does once a
browser has taken the bytes.

- `--rate 0`: A reads as fast as it can. The stalled case is this program SIGSTOPped by
  the scenario: the process neither reads nor answers pings, as a laptop that went to
  sleep (the kernel still ACKs with a zero window, which a sleeping laptop would not).
- `--rate R`: A reads its socket at `streams * R` bytes per second in all (a slow link:
  the streams share it, ~R each), pausing the socket's reading between bursts.

Run as `FASTRELAY_BENCH_TOKEN=... python -m bench.noisy_peer --relay ws://HOST:PORT
--target HOST:PORT`. It prints a JSON ready line once every stream has data flowing,
and on SIGTERM one JSON line with the bytes it read, then exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
import time

import orjson
from picows import WSFrame, WSMsgType, WSTransport

from bench.load import REQUEST
from bench.muxclient import MuxClient
from fastrelay import eventloop
from fastrelay.config import ENDPOINT_WINDOW
from fastrelay.protocol.frames import (
    FrameType,
    decode_window_increment,
    encode_frame,
    encode_window_update,
    iter_frames,
)
from fastrelay.protocol.messages import Hello, OpenStream

TOKEN_ENV = "FASTRELAY_BENCH_TOKEN"
ENDLESS = 1 << 50


class PacedMuxClient(MuxClient):
    """MuxClient that also reads TUNNEL_DATA: counts it, returns the credit, and (with a
    rate) paces the socket's reading."""

    def __init__(self, window: int, rate: float) -> None:
        super().__init__()
        self.window = window
        self.rate = rate  # bytes/s over all streams; 0: as fast as possible
        self.received: dict[int, int] = {}
        self.unreturned: dict[int, int] = {}
        self.total = 0
        self.started = 0.0
        self.flowing = asyncio.Event()
        self.resume_handle: asyncio.TimerHandle | None = None
        self.sids: tuple[int, ...] = ()  # the streams that must carry data before "ready"

    @classmethod
    async def connect_small(cls, url: str, token: str, rcvbuf: int, window: int, rate: float):
        def small_socket(_parsed) -> socket.socket:  # type: ignore[no-untyped-def]
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            # Before connect(): the window scale is fixed by the SYN, and a buffer set
            # later could not shrink what autotuning offers.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            return sock

        client = await cls.connect(
            url,
            token,
            factory=lambda: cls(window, rate),
            socket_factory=small_socket if rcvbuf else None,
        )
        assert isinstance(client, cls)
        return client

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type != WSMsgType.BINARY:
            return
        data = frame.get_payload_as_memoryview()
        updates = []
        for ftype, _flags, sid, off, length in iter_frames(data):
            payload = data[off : off + length]
            if ftype == FrameType.TUNNEL_DATA:
                self.total += length
                self.received[sid] = self.received.get(sid, 0) + length
                owed = self.unreturned.get(sid, 0) + length
                if owed >= self.window // 4:  # batched as client_a does
                    updates.append(encode_window_update(sid, owed))
                    owed = 0
                self.unreturned[sid] = owed
                if not self.flowing.is_set() and all(self.received.get(s) for s in self.sids):
                    self.flowing.set()
            elif ftype == FrameType.HELLO:
                self.hello_future.set_result(Hello.decode(payload))
            elif ftype == FrameType.CONNECT_RESPONSE and sid in self.responses:
                self.responses.pop(sid).set_result(orjson.loads(payload))
            elif ftype == FrameType.WINDOW_UPDATE:
                self.credit += decode_window_increment(payload)
                self.credit_changed.set()
        if updates:
            self.send(b"".join(updates))
        self._pace(transport)

    def _pace(self, transport: WSTransport) -> None:
        """Token bucket on the socket: ahead of `rate`, stop reading until it catches up."""
        if not self.rate or not self.started or self.resume_handle is not None:
            return
        ahead = self.total / self.rate - (time.monotonic() - self.started)
        if ahead > 0.002:
            transport.underlying_transport.pause_reading()
            self.resume_handle = asyncio.get_running_loop().call_later(ahead, self._resume)

    def _resume(self) -> None:
        self.resume_handle = None
        if self.transport is not None:
            with contextlib.suppress(Exception):  # the relay may have closed us meanwhile
                self.transport.underlying_transport.resume_reading()


async def main(args: argparse.Namespace) -> int:
    token = os.environ.get(TOKEN_ENV, "")
    host, _, port = args.target.rpartition(":")
    client = await PacedMuxClient.connect_small(
        args.relay + "/v1/client", token, args.rcvbuf, args.window, args.rate * args.streams
    )
    assert client.transport is not None
    sock = client.transport.underlying_transport.get_extra_info("socket")
    rcvbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) if sock is not None else 0
    sids = tuple(client.hello.stream_id_base + 1 + i for i in range(args.streams))
    client.sids = sids
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    opened = {}
    for sid in sids:  # all at once, as a browser opening 8 downloads would
        opened[sid] = client.responses[sid] = loop.create_future()
        request = OpenStream(FrameType.CONNECT, f"noisy-{sid}", host, int(port), window=args.window)
        client.send(request.encode(sid))
    for sid, fut in opened.items():
        response = await asyncio.wait_for(fut, 10)
        if response.get("statusCode") != 200:
            raise ConnectionError(f"open of stream {sid} failed: {response}")
    client.started = time.monotonic()
    for sid in sids:  # the endless download, within the agent's upstream credit
        client.send(encode_frame(FrameType.TUNNEL_DATA, sid, REQUEST.pack(b"D", ENDLESS)))
    await asyncio.wait_for(client.flowing.wait(), 10)
    ready = {"event": "ready", "pid": os.getpid(), "rcvbuf": rcvbuf, "streams": len(sids)}
    sys.stdout.write(orjson.dumps(ready).decode() + "\n")
    sys.stdout.flush()
    ready_at, ready_bytes = time.monotonic(), client.total
    with contextlib.suppress(TimeoutError):  # a safety net: never outlive a lost runner
        await asyncio.wait_for(stop.wait(), args.max_seconds)
    elapsed = time.monotonic() - ready_at
    report = {
        "event": "report",
        "seconds": elapsed,
        "bytes_since_ready": client.total - ready_bytes,
        "per_stream_Bps_since_ready": (client.total - ready_bytes) / elapsed / len(sids),
        "bytes_per_stream": [client.received.get(s, 0) for s in sids],
    }
    sys.stdout.write(orjson.dumps(report).decode() + "\n")
    sys.stdout.flush()
    client.close()
    return 0


def cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.noisy_peer", allow_abbrev=False)
    parser.add_argument("--relay", required=True, help="ws://HOST:PORT of the relay")
    parser.add_argument("--target", required=True, help="HOST:PORT of the bench target")
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--window", type=int, default=ENDPOINT_WINDOW, help="per-stream grant")
    parser.add_argument("--rcvbuf", type=int, default=4096, help="SO_RCVBUF (0: the default)")
    parser.add_argument("--rate", type=float, default=0.0, help="bytes/s per stream (0: max)")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="exit after this")
    sys.exit(eventloop.run_default(main(parser.parse_args())))


if __name__ == "__main__":
    cli()
