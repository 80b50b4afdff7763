"""Scenario 12: the seed dialect beside the binary protocol, through one relay and agent.

One tunnel, `bulk_bytes` down then up (as scenario 1), alternately through client_a (the
binary protocol) and through the seed Client A (tests/support/seed_client.py: JSON header
message + binary message per chunk, on /v1/seed), `seed_repeats` times each, on the same
relay, agent and target, so drift on the shared machine lands on both. Besides MB/s it
reads every process's CPU seconds per run from /proc: the relay's CPU per GB is the figure
the dialect changes most directly, and other jobs on the machine disturb it much less than
the rates.
"""

from __future__ import annotations

import asyncio
import statistics
import time

from bench.load import open_tunnel
from bench.scenarios.common import Context, progress
from bench.topology import Process, Topology, seed

MB = 1_000_000
SETTLE_S = 0.3  # let the previous tunnel's teardown finish


async def _one(topo: Topology, port: int, n: int, mode: bytes) -> float:
    tunnel = await open_tunnel(topo, port)
    start = time.perf_counter()
    tunnel.request(mode, n)
    if mode == b"D":
        await tunnel.until_received(n, timeout=300)
    else:
        await tunnel.send(n)
        await tunnel.until_received(1, timeout=300)  # the target's "K"
    seconds = time.perf_counter() - start
    tunnel.close()
    return n / seconds / MB


def _cpu(procs: dict[str, Process]) -> dict[str, float]:
    return {name: proc.cpu_seconds() for name, proc in procs.items()}


async def seed_dialect(ctx: Context, topo: Topology) -> dict:
    n = ctx.sizes["bulk_bytes"]
    seed_topo = seed(ctx.log_dir, topo)
    procs = {p.name: p for p in topo.processes}
    fronts = {"binary": procs["client_a"], "seed": seed_topo.processes[0]}
    runs: dict[str, list[dict]] = {"binary": [], "seed": []}
    try:
        for rep in range(ctx.sizes["seed_repeats"]):
            for dialect, chain in (("binary", topo), ("seed", seed_topo)):
                watched = {"relay": procs["relay"], "agent": procs["agent"]}
                watched["front"] = fronts[dialect]
                await asyncio.sleep(SETTLE_S)
                before = _cpu(watched)
                down = await _one(chain, ctx.target_port, n, b"D")
                up = await _one(chain, ctx.target_port, n, b"U")
                after = _cpu(watched)
                gb = 2 * n / 1e9
                run = {"down_MBps": down, "up_MBps": up}
                for name in watched:
                    run[f"{name}_cpu_s_per_GB"] = (after[name] - before[name]) / gb
                runs[dialect].append(run)
                progress(
                    f"    seed_dialect {rep + 1}: {dialect} down {down:.0f} up {up:.0f} MB/s, "
                    f"relay {run['relay_cpu_s_per_GB']:.2f} CPU s/GB"
                )
    finally:
        seed_topo.stop()
    out: dict = {"bytes": n, "repeats": len(runs["seed"])}
    for dialect, dialect_runs in runs.items():
        for key in dialect_runs[0]:
            out[f"{dialect}_{key}"] = statistics.median(r[key] for r in dialect_runs)
    for key in ("down_MBps", "up_MBps"):
        out[f"{key}_seed_over_binary"] = out[f"seed_{key}"] / out[f"binary_{key}"]
    for name in ("relay", "agent", "front"):
        key = f"{name}_cpu_s_per_GB"
        out[f"{key}_seed_over_binary"] = out[f"seed_{key}"] / max(1e-9, out[f"binary_{key}"])
    out["runs"] = runs
    return out
