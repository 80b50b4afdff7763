"""One tenant's upload and everyone else's opens, on an agent behind a slow link.

An agent in another network reaches the relay over a link far slower than loopback. Every
tenant's traffic to that agent shares its one WebSocket, and the relay writes to it in
order. Whatever one tenant's upload has queued toward the agent (at most the credit the
agent granted its streams) is ahead of another tenant's next open and next request.

This puts bench/delayline.py between the relay and the agent (`--rtt-ms`, `--rate` bytes
per second each way, `--line-buffer` held in the line: the bottleneck's buffer, 1 MiB by
default) and measures, through client_a:

- ``idle``: opens (CONNECT to 200) and 64-byte echo round trips, one at a time;
- ``upload``: the same while another tunnel uploads as fast as its credit allows, with the
  relay's queue toward the agent and the upload's rate (``--direction down``: a download,
  and the agent's queue toward the relay; ``both``: a download and an upload at once, each
  one's rate).

    .venv/bin/python -m bench.hol_probe [--rate 20MB] [--rate-to-agent RATE] [--rtt-ms 10]
        [--probes 15] [--direction up|down|both]
        [-- AGENT_AND_CLIENT_OPTIONS...]    (say: -- --window 512KiB --max-window 512KiB)

Options after ``--`` go to both client_a and the agent. ``make bench-quick`` runs it small
(``--probes 3 --settle 1``). Figures and what they mean: bench/README.md, "One tenant's
upload on a slow agent link".
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.load import CHUNK, PAYLOAD, Tunnel, open_tunnel, timed_open
from bench.topology import Process, Topology, chain, delay_line, scrape, start_target
from fastrelay import eventloop

MB = 1_000_000
QUEUE = "fastrelay_ws_write_buffer_bytes"


async def probe(topo: Topology, port: int, count: int) -> tuple[list[float], list[float]]:
    """`count` opens, each followed by one 64-byte echo round trip: seconds of each."""
    opens: list[float] = []
    trips: list[float] = []
    for _ in range(count):
        tunnel, opened = await timed_open(topo, port)
        try:
            tunnel.request(b"E", 0)
            start = time.perf_counter()
            await tunnel.send(64)
            await tunnel.until_received(64, timeout=60)
            trips.append(time.perf_counter() - start)
            opens.append(opened)
        finally:
            tunnel.close()
        await asyncio.sleep(0.05)
    return opens, trips


class Upload:
    """One tunnel sending to the target's sink as fast as it may, counting what it sent."""

    def __init__(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel
        self.sent = 0

    @property
    def moved(self) -> int:
        return self.sent

    async def run(self) -> None:
        tunnel = self.tunnel
        assert tunnel.transport is not None
        tunnel.request(b"U", 1 << 50)
        while True:
            await tunnel.can_write.wait()
            tunnel.transport.write(PAYLOAD)
            self.sent += CHUNK


class Download:
    """One tunnel the target sends to without end, as fast as the chain takes it."""

    def __init__(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel

    @property
    def moved(self) -> int:
        return self.tunnel.received

    async def run(self) -> None:
        self.tunnel.request(b"D", 1 << 50)
        await asyncio.Event().wait()  # until cancelled


def queued(admin: str) -> float:
    """Bytes the relay holds for its agent connection, or the agent for its relay, now."""
    return scrape(admin).get((QUEUE, (("role", "agent"),)), 0.0)


def line(name: str, opens: list[float], trips: list[float]) -> str:
    def ms(xs: list[float]) -> str:
        return f"p50 {statistics.median(xs) * 1000:7.1f} ms, max {max(xs) * 1000:7.1f} ms"

    return f"{name:7s} open {ms(opens)} | round trip {ms(trips)}"


async def measure(topo: Topology, port: int, args: argparse.Namespace) -> dict[str, float]:
    ways = ("up", "down") if args.direction == "both" else (args.direction,)
    # Where a bulk tunnel's bytes queue ahead of the others: uploads at the relay (its
    # connection to the agent), downloads at the agent (its connection to the relay).
    holders = [
        next(p for p in topo.processes if p.name == ("relay" if way == "up" else "agent"))
        for way in ways
    ]

    def held() -> float:  # both label their agent connections role="agent"
        return max(queued(holder.ready["admin"]) for holder in holders)

    idle = await probe(topo, port, args.probes)
    print(line("idle", *idle), flush=True)
    bulks: list[Upload | Download] = []
    tasks: list[asyncio.Task[None]] = []
    name = "upload" if ways == ("up",) else "download" if ways == ("down",) else "both"
    try:
        for way in ways:
            tunnel = await open_tunnel(topo, port)
            bulk: Upload | Download = Upload(tunnel) if way == "up" else Download(tunnel)
            bulks.append(bulk)
            tasks.append(asyncio.create_task(bulk.run()))
        await asyncio.sleep(args.settle)  # the queue builds up to what credit allows
        moved, start = [b.moved for b in bulks], time.perf_counter()
        peak = held()
        busy = await probe(topo, port, args.probes)
        peak = max(peak, held())
        took = time.perf_counter() - start
        rates = [(b.moved - m) / took for b, m in zip(bulks, moved, strict=True)]
    finally:
        for task in tasks:
            task.cancel()
        for bulk in bulks:
            bulk.tunnel.close()
    print(line(name, *busy), flush=True)
    links = {"up": args.rate_to_agent, "down": args.rate}
    for way, rate in zip(ways, rates, strict=True):
        print(
            f"{'upload' if way == 'up' else 'download'} {rate / MB:.1f} MB/s over the "
            f"{links[way] / MB:g} MB/s link",
            flush=True,
        )
    print(
        f"the {' and '.join(h.name for h in holders)} held up to {peak / 2**20:.1f} MiB for "
        "the other side in user space (more in the kernel)",
        flush=True,
    )
    open_ratio = statistics.median(busy[0]) / statistics.median(idle[0])
    trip_ratio = statistics.median(busy[1]) / statistics.median(idle[1])
    print(f"during the {name}: opens {open_ratio:.1f}x, round trips {trip_ratio:.1f}x idle")
    result = {"open_ratio": open_ratio, "trip_ratio": trip_ratio}
    for way, rate in zip(ways, rates, strict=True):
        result[f"{way}_rate"] = rate
    return result


def _rate(text: str) -> int:
    low = text.strip().lower()
    factor = MB if low.endswith("mb") else 1
    return int(float(low.removesuffix("mb")) * factor)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(prog="python -m bench.hol_probe", allow_abbrev=False)
    parser.add_argument(
        "--rate", type=_rate, default=20 * MB, help="link bytes/s, the agent's way out (20MB)"
    )
    parser.add_argument(
        "--rate-to-agent", type=_rate, default=None, help="link bytes/s to the agent (--rate)"
    )
    parser.add_argument("--rtt-ms", type=float, default=10.0, help="link round trip (10)")
    parser.add_argument("--probes", type=int, default=15, help="opens per phase (15)")
    parser.add_argument("--settle", type=float, default=4.0, help="seconds of bulk first (4)")
    parser.add_argument(
        "--line-buffer",
        default="1MiB",
        help="what the link holds before it pushes back: the bottleneck's buffer (1MiB)",
    )
    parser.add_argument(
        "--direction",
        choices=("up", "down", "both"),
        default="up",
        help="the bulk tunnel's, or a tunnel each way (up)",
    )
    args = parser.parse_args(argv)
    if args.rate_to_agent is None:
        args.rate_to_agent = args.rate
    log = Path(tempfile.mkdtemp(prefix="fastrelay-hol-"))
    target, port = start_target(log)

    def slow_link(relay_listen: str) -> tuple[str, Process]:
        proc = delay_line(
            relay_listen,
            args.rtt_ms,
            log,
            cap=args.line_buffer,
            rate=args.rate,
            rate_back=args.rate_to_agent,
        )
        return proc.ready["listen"], proc

    try:
        print(
            f"agent behind a {args.rate / MB:g} MB/s ({args.rate_to_agent / MB:g} MB/s to it), "
            f"{args.rtt_ms:g} ms link; "
            f"client_a and agent options: {' '.join(extra) or '(defaults)'}",
            flush=True,
        )
        topo = chain(log, tuple(extra), agent_path=slow_link)
        try:
            eventloop.run_default(measure(topo, port, args))
        finally:
            topo.stop()
    finally:
        target.stop()


if __name__ == "__main__":
    main()
