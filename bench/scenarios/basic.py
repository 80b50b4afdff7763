"""Scenarios 1-3: bulk throughput, round trips on an open tunnel, tunnel setup."""

from __future__ import annotations

import asyncio
import time

from bench.load import open_tunnel, timed_open
from bench.scenarios.common import Context, percentiles
from bench.topology import Topology

MB = 1_000_000


async def bulk(ctx: Context, topo: Topology) -> dict:
    """1. One tunnel, one direction at a time: download, then upload, of `bulk_bytes`."""
    n = ctx.sizes["bulk_bytes"]
    down = await open_tunnel(topo, ctx.target_port)
    start = time.perf_counter()
    down.request(b"D", n)
    await down.until_received(n)
    down_s = time.perf_counter() - start
    down.close()
    up = await open_tunnel(topo, ctx.target_port)
    start = time.perf_counter()
    up.request(b"U", n)
    await up.send(n)
    await up.until_received(1)  # the target's "K": every byte arrived
    up_s = time.perf_counter() - start
    up.close()
    # Each program's peak resident memory so far: a buffer that grows with a burst and never
    # shrinks (picows' read buffer per WebSocket does) shows here.
    peaks = {f"{p.name}_peak_MiB": p.peak_rss_kib() / 1024 for p in topo.processes}
    return {"bytes": n, "down_MBps": n / down_s / MB, "up_MBps": n / up_s / MB, **peaks}


async def round_trip(ctx: Context, topo: Topology) -> dict:
    """2. 1 KiB request and response on an open tunnel, one at a time."""
    count, size = ctx.sizes["rtt_count"], 1024
    tunnel = await open_tunnel(topo, ctx.target_port)
    tunnel.request(b"E")
    samples = []
    expected = 0
    for _ in range(count):
        start = time.perf_counter()
        await tunnel.send(size)
        expected += size
        await tunnel.until_received(expected, timeout=30)
        samples.append(time.perf_counter() - start)
    tunnel.close()
    us = [s * 1e6 for s in samples]
    return {"count": count, **{f"{k}_us": v for k, v in percentiles(us).items()}, "samples_us": us}


async def setup(ctx: Context, topo: Topology) -> dict:
    """3. CONNECT -> 200 -> one small round trip -> close, `setup_concurrency` at a time."""
    total, concurrency = ctx.sizes["setup_count"], 50
    latencies: list[float] = []
    failures = 0
    queue = iter(range(total))

    async def worker() -> None:
        nonlocal failures
        for _ in queue:
            try:
                tunnel, opened_s = await timed_open(topo, ctx.target_port)
                tunnel.request(b"E")
                await tunnel.send(64)
                await tunnel.until_received(64, timeout=30)
                tunnel.close()
                latencies.append(opened_s)
            except (TimeoutError, OSError, ConnectionError):
                failures += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    ms = [s * 1000 for s in latencies]
    return {
        "tunnels": total,
        "failures": failures,
        "tunnels_per_s": len(latencies) / elapsed,
        **{f"setup_{k}_ms": v for k, v in percentiles(ms).items()},
        "samples_ms": ms,
    }
