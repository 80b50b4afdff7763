"""Scenario 8: one tunnel's download throughput with and without scraping /metrics every
second on all three programs' admin ports.

The repeats alternate, off, on, off, on, ..., on one chain in one run, so slow drift on the
shared machine lands on both sides. The noise figure is the run-to-run spread of the "off"
repeats, (max - min) / median; the scraper's effect is "within noise" when |1 - on/off| is
no larger than that. The scraper is its own process (bench/scraper.py), as Prometheus would
be, so it never shares the load client's GIL or event loop.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time

from bench.load import open_tunnel
from bench.scenarios.common import Context
from bench.topology import Topology

MB = 1_000_000
WARMUP_S = 0.3  # past the tunnel's start-up burst before counting bytes
SETTLE_S = 0.5  # let the previous tunnel's teardown finish before the next repeat
IDLE_INTERVAL_S = 0.2


async def start_scraper(
    admins: dict[str, str], interval: float, rounds: int | None = None
) -> asyncio.subprocess.Process:
    argv = [sys.executable, "-m", "bench.scraper", "--interval", str(interval)]
    if rounds:
        argv += ["--rounds", str(rounds)]
    argv += [f"{name}={address}" for name, address in admins.items()]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 20)
    if not line or json.loads(line).get("event") != "ready":
        proc.kill()
        await proc.wait()
        raise RuntimeError(f"the scraper did not start: {line!r}")
    return proc


async def stop_scraper(proc: asyncio.subprocess.Process) -> dict:
    """Close its stdin and read its report; the first (start-up) round is dropped."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.close()
    out = await asyncio.wait_for(proc.stdout.read(), 20)
    await proc.wait()
    report = json.loads(out.splitlines()[-1])
    report["rounds"] = report["rounds"][1:]
    return report


async def download_rate(topo: Topology, port: int, seconds: float) -> float:
    """MB/s one tunnel downloads over `seconds`, after a short warm-up."""
    tunnel = await open_tunnel(topo, port)
    tunnel.request(b"D", 1 << 50)  # more than any run moves
    await asyncio.sleep(WARMUP_S)
    start_bytes, start = tunnel.received, time.perf_counter()
    await asyncio.sleep(seconds)
    moved, elapsed = tunnel.received - start_bytes, time.perf_counter() - start
    tunnel.close()
    await asyncio.sleep(SETTLE_S)
    return moved / elapsed / MB


async def idle_scrapes(topo: Topology, admins: dict[str, str], rounds: int) -> dict:
    """Scrape the idle chain `rounds` times: wall ms per scrape, and each program's CPU ms
    per scrape (its CPU time over the rounds, which at idle is nearly all scraping)."""
    procs = {p.name: p for p in topo.processes if p.name in admins}
    cpu_before = {name: p.cpu_seconds() for name, p in procs.items()}
    scraper = await start_scraper(admins, IDLE_INTERVAL_S, rounds + 1)
    assert scraper.stdin is not None and scraper.stdout is not None
    out = await asyncio.wait_for(scraper.stdout.read(), 60)
    scraper.stdin.close()
    await scraper.wait()
    report = json.loads(out.splitlines()[-1])
    figures: dict = {}
    for name, p in procs.items():
        # The start-up round counts for CPU (it is a scrape too), not for wall time.
        cpu_ms = (p.cpu_seconds() - cpu_before[name]) * 1000 / (rounds + 1)
        walls = [r[name] for r in report["rounds"][1:] if name in r]
        figures[f"idle_scrape_ms_{name}"] = statistics.median(walls) if walls else float("nan")
        figures[f"scrape_cpu_ms_{name}"] = cpu_ms
        figures[f"metrics_bytes_{name}"] = report["bytes"].get(name, 0)
    return figures


async def scrape(ctx: Context, topo: Topology) -> dict:
    """8. Interleaved repeats of a one-tunnel download, without and with a 1 s scraper."""
    seconds, pairs = ctx.sizes["scrape_seconds"], ctx.sizes["scrape_pairs"]
    admins = {p.name: p.ready["admin"] for p in topo.processes if "admin" in p.ready}
    figures = await idle_scrapes(topo, admins, ctx.sizes["scrape_idle_rounds"])
    off: list[float] = []
    on: list[float] = []
    under_load: dict[str, list[float]] = {name: [] for name in admins}
    errors = 0
    for _ in range(pairs):
        off.append(await download_rate(topo, ctx.target_port, seconds))
        scraper = await start_scraper(admins, 1.0)
        try:
            on.append(await download_rate(topo, ctx.target_port, seconds))
        finally:
            report = await stop_scraper(scraper)
        for rnd in report["rounds"]:
            for name, ms in rnd.items():
                under_load[name].append(ms)
        errors += sum(report["errors"].values())
    off_median, on_median = statistics.median(off), statistics.median(on)
    ratio = on_median / off_median
    noise = (max(off) - min(off)) / off_median
    within = abs(1 - ratio) <= noise
    for name, samples in under_load.items():
        figures[f"scrape_ms_{name}"] = statistics.median(samples) if samples else float("nan")
        figures[f"scrapes_{name}"] = len(samples)
    return {
        "seconds_per_repeat": seconds,
        "off_MBps": off_median,
        "on_MBps": on_median,
        "on_off_ratio": ratio,
        "noise_spread": noise,
        "within_noise": within,
        "verdict": "within noise" if within else "outside noise",
        "scrape_errors": errors,
        **figures,
        "off_runs_MBps": off,
        "on_runs_MBps": on,
    }
