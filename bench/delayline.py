"""A delay line: a userland TCP forwarder that holds every chunk for RTT/2 each way.

netem is not available in this kernel, so bench puts this process where a real path has
its long hop. It listens on a loopback address, dials `--to` for every connection it
accepts, and for each direction:

- timestamps each chunk as it arrives and releases it, in order, `--rtt-ms / 2` later
  (one loop timer per direction, at the head chunk's due time; libuv timers have 1 ms
  resolution);
- keeps reading while it holds chunks, so the line itself does not limit throughput: it
  holds up to `--cap` bytes per direction (the held chunks plus what the outgoing socket
  has not taken yet), enough for a bandwidth-delay product of several hundred MB/s at
  tens of ms, and pauses reading from the sender only past that cap (resuming at half).

With `--rate BYTES_PER_S` each direction is also a link of that rate: a chunk leaves no
sooner than the previous one has been sent at that rate, so the line queues what arrives
faster (up to `--cap`, then it pushes back on the sender). That is the slow link to a
remote agent behind which one tenant's upload can queue ahead of another's open.
`--rate-back` sets the rate from `--to` back to the connecting side apart (an asymmetric
link: an agent whose own uplink is the slow way).

What it does not emulate: it splits each TCP connection in two, so the kernels on either
side see a loopback round trip, and TCP's own window and congestion control do not feel
the delay. What crosses it feels the latency: requests, responses, and any credit or
window that an application sends back and waits for (fastrelay's per-stream windows).
A direct TCP connection across the line is therefore the ideal path at that RTT, the
baseline an application-level window should approach.

Run as `python -m bench.delayline --listen 127.0.0.5:0 --to HOST:PORT --rtt-ms 50`;
prints a JSON ready line with the listening address; SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections import deque
from typing import cast

from fastrelay import eventloop

MiB = 1 << 20
DEFAULT_CAP = 64 * MiB
WRITE_HIGH = 4 * MiB  # the outgoing transport's buffer before it pushes back
_EOF = b""  # a queued marker: pass the sender's half-close on when its time comes
_CLOSE = None  # a queued marker: the sender's socket is gone, close the other one then


class Lane:
    """One direction: chunks from `src` held until due, then written to `dst`."""

    def __init__(self, delay: float, cap: int, rate: float = 0.0) -> None:
        self.loop = asyncio.get_running_loop()
        self.delay, self.cap = delay, cap
        self.rate = rate  # bytes per second (0: no limit)
        self.link_free = 0.0  # when the link has sent everything queued so far
        self.queue: deque[tuple[float, bytes | None]] = deque()
        self.held = 0
        self.peak = 0
        self.src: asyncio.Transport | None = None
        self.dst: asyncio.Transport | None = None
        self.blocked = False  # dst asked us to stop writing
        self.paused = False  # we stopped reading src
        self.timer: asyncio.TimerHandle | None = None

    def backlog(self) -> int:
        return self.held + (self.dst.get_write_buffer_size() if self.dst else 0)

    def push(self, data: bytes) -> None:
        due = self.loop.time() + self.delay
        if self.rate:
            due = max(due, self.link_free)
            self.link_free = due + len(data) / self.rate
        self.queue.append((due, data))
        self.held += len(data)
        self.peak = max(self.peak, self.held)
        if self.delay <= 0 and not self.rate:
            self.release()
        elif self.timer is None:
            self.arm()
        if not self.paused and self.src is not None and self.backlog() > self.cap:
            self.paused = True
            self.src.pause_reading()

    def arm(self) -> None:
        if self.queue and not self.blocked and self.dst is not None and self.timer is None:
            self.timer = self.loop.call_at(self.queue[0][0], self.release)

    def release(self) -> None:
        self.timer = None
        dst = self.dst
        if dst is None or dst.is_closing():
            return
        now = self.loop.time()
        queue = self.queue
        while queue and not self.blocked and queue[0][0] <= now:
            _, data = queue.popleft()
            if data is _CLOSE:
                dst.close()  # after what it still buffers
                self.stop()
                return
            if data is _EOF:
                if dst.can_write_eof():
                    dst.write_eof()
                continue
            self.held -= len(data)
            dst.write(data)  # may call pause_writing, which sets self.blocked
        self.arm()
        if self.paused and self.src is not None and self.backlog() <= self.cap // 2:
            self.paused = False
            self.src.resume_reading()

    def mark(self, marker: bytes | None) -> None:
        self.queue.append((max(self.loop.time() + self.delay, self.link_free), marker))
        if self.timer is None:
            self.arm() if self.delay > 0 or self.rate else self.release()

    def block(self) -> None:
        self.blocked = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def unblock(self) -> None:
        self.blocked = False
        self.release()

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.queue.clear()
        self.held = 0


class Side(asyncio.Protocol):
    """One socket. `inbox` carries what it reads; `outbox` what is written to it."""

    def __init__(self, inbox: Lane, outbox: Lane) -> None:
        self.inbox, self.outbox = inbox, outbox
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport = transport
        # At most half the cap, so that a lane holding nothing and an outgoing buffer below
        # its high-water mark is always below the resume point (no missed wake-up).
        high = min(WRITE_HIGH, self.outbox.cap // 4)
        transport.set_write_buffer_limits(high=high, low=high // 4)
        self.inbox.src = transport
        self.outbox.dst = transport
        self.outbox.arm()

    def data_received(self, data: bytes) -> None:
        self.inbox.push(data)

    def eof_received(self) -> bool:
        self.inbox.mark(_EOF)
        return True  # keep the other direction open: a half-close

    def pause_writing(self) -> None:
        self.outbox.block()

    def resume_writing(self) -> None:
        self.outbox.unblock()

    def connection_lost(self, exc: Exception | None) -> None:
        self.outbox.stop()  # nothing more can reach this socket
        if self.inbox.dst is None:  # the other side never connected
            self.inbox.stop()
        else:  # deliver what this side sent, then close the other side, RTT/2 later
            self.inbox.src = None
            self.inbox.mark(_CLOSE)


class Inbound(Side):
    def __init__(
        self, target: tuple[str, int], delay: float, cap: int, rate: float, rate_back: float
    ) -> None:
        super().__init__(Lane(delay, cap, rate), Lane(delay, cap, rate_back))
        self.target = target

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        asyncio.get_running_loop().create_task(self.dial())

    async def dial(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            # What the inbound side reads goes out on the outbound socket, and back.
            _, out = await asyncio.wait_for(
                loop.create_connection(lambda: Side(self.outbox, self.inbox), *self.target), 10
            )
        except (OSError, TimeoutError):
            if self.transport is not None:
                self.transport.close()
            return
        if self.transport is None or self.transport.is_closing():
            out.transport.close()  # type: ignore[union-attr]
            return
        self.inbox.release()


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def _size(text: str) -> int:
    units = {"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30}
    low = text.strip().lower()
    for suffix, factor in units.items():
        if low.endswith(suffix):
            return int(float(low[: -len(suffix)]) * factor)
    return int(low)


async def serve(
    listen: tuple[str, int],
    to: tuple[str, int],
    rtt_ms: float,
    cap: int,
    rate: float = 0.0,
    rate_back: float | None = None,
) -> None:
    loop = asyncio.get_running_loop()
    delay = rtt_ms / 2000.0
    back = rate if rate_back is None else rate_back
    server = await loop.create_server(
        lambda: Inbound(to, delay, cap, rate, back), *listen, backlog=1024
    )
    host, port = server.sockets[0].getsockname()[:2]
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sys.stdout.write(
        json.dumps(
            {"event": "ready", "listen": f"{host}:{port}", "rtt_ms": rtt_ms, "cap": cap}
            | {"rate": rate, "rate_back": back}
        )
        + "\n"
    )
    sys.stdout.flush()
    await stop.wait()
    server.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.delayline", allow_abbrev=False)
    parser.add_argument("--listen", default="127.0.0.5:0", help="HOST:PORT (port 0: any)")
    parser.add_argument("--to", required=True, help="HOST:PORT to forward every connection to")
    parser.add_argument("--rtt-ms", type=float, default=0.0, help="round trip added (ms)")
    parser.add_argument(
        "--cap", type=_size, default=DEFAULT_CAP, help="bytes held per direction (64MiB)"
    )
    parser.add_argument(
        "--rate", type=_size, default=0, help="bytes per second each way (0: no limit)"
    )
    parser.add_argument(
        "--rate-back",
        type=_size,
        default=None,
        help="bytes per second from --to back to the connecting side (default: --rate)",
    )
    args = parser.parse_args(argv)
    if args.cap < 256 * 1024:
        parser.error("--cap must be at least 256KiB")
    eventloop.run_default(
        serve(
            _addr(args.listen),
            _addr(args.to),
            args.rtt_ms,
            args.cap,
            float(args.rate),
            None if args.rate_back is None else float(args.rate_back),
        )
    )


if __name__ == "__main__":
    main()
