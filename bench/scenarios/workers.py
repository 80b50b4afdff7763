"""Scenario 9: the relay as one process (`--workers 1`) against two (`--workers 2`).

Each repeat starts a fresh chain (relay, agent, client_a with `workers_carriers`
WebSockets, so the kernel's SO_REUSEPORT hash lands client streams on every worker) and
waits until the agent holds every worker (its fastrelay_relay_connected gauge equals the
worker count) and client_a holds every carrier. On that chain it measures:

- throughput: `workers_tunnels` tunnels download at once for `workers_seconds` after a
  short warm-up (scenario 4's mechanics): aggregate MB/s;
- setup: scenario 3 as it is (`setup_count` tunnels, 50 at a time): tunnels/s, p50, p99.

The configurations alternate, 1, 2, 1, 2, ..., so slow drift on the shared machine lands
on both. During each measurement the CPU time of every process is read from /proc (each
relay worker, the supervisor, client_a, the agent, the target, the load client, which is
this runner) together with the machine's time from /proc/stat: task time not charged to
these processes ("other": other jobs), interrupt and softirq time (loopback TCP) and steal.
On a 2-core box the chain, the target and the load client
already use most of both cores with one worker, so a second worker mostly competes with
them; the CPU table shows that directly. Each worker's own admin port tells how many
streams and bytes it carried, which shows that both were used.
"""

from __future__ import annotations

import asyncio
import os
import resource
import statistics
import time

from bench.scenarios import basic
from bench.scenarios.common import Context, progress
from bench.scenarios.heavy import open_many
from bench.topology import Topology, chain, cpu_seconds, scrape, wait_gauge

MB = 1_000_000
CONFIGS = (1, 2)
WARMUP_S = 0.3  # past the start-up burst before counting bytes
SETTLE_S = 1.0  # let the closes of the last phase finish before the next one
RELAY_CONNECTED = "fastrelay_relay_connected"
STREAMS = "fastrelay_streams_total"
STREAM_BYTES = "fastrelay_stream_bytes_total"
CONNECTIONS = "fastrelay_connections"
# Per-run figures whose medians are reported for each configuration, and the ratios.
PER_RUN = (
    "MBps",
    "tunnels_per_s",
    "setup_p50_ms",
    "setup_p99_ms",
    "relay_cpu_s_per_GB",
    "chain_cpu_s_per_GB",
    "relay_cpu_ms_per_tunnel",
    "chain_cpu_ms_per_tunnel",
    "other_cores_bulk",
    "other_cores_setup",
)
RATIOS = {
    "MBps": "MBps_ratio",
    "tunnels_per_s": "setup_rate_ratio",
    "setup_p99_ms": "setup_p99_ratio",
}


class CpuMeter:
    """CPU seconds of each named process, of this process (the load client) and of the whole
    machine, between `start()` and `stop()`."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.before: dict[str, float] = {}

    def _read(self) -> dict[str, float]:
        out = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        usage = resource.getrusage(resource.RUSAGE_SELF)
        out["load"] = usage.ru_utime + usage.ru_stime
        out |= _machine_seconds()
        out["wall"] = time.perf_counter()
        return out

    def start(self) -> None:
        self.before = self._read()

    def stop(self) -> dict[str, float]:
        after = self._read()
        used = {name: after[name] - self.before[name] for name in after}
        ours = sum(used[name] for name in [*self.pids, "load"])
        # Task time of everything else: other jobs on the machine (and our own short-lived
        # helpers). Interrupt and softirq time (loopback TCP is mostly softirq) and steal
        # are not charged to any process, so they have rows of their own.
        used["other"] = max(0.0, used["machine_tasks"] - ours)
        used["machine"] = used["machine_tasks"] + used["irq"] + used["steal"]
        return used


def _machine_seconds() -> dict[str, float]:
    """CPU time of all cores since boot, from the first line of /proc/stat: task time (user,
    nice, system), interrupt and softirq time, and steal (the hypervisor ran someone else).
    Guest time is inside user."""
    with open("/proc/stat") as fh:
        f = [int(v) for v in fh.readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    return {
        "machine_tasks": (f[0] + f[1] + f[2]) / tick,
        "irq": (f[5] + f[6]) / tick,
        "steal": f[7] / tick,
    }


def _per_worker(admins: list[str]) -> list[dict[str, float]]:
    """Streams opened, downstream payload bytes and client_a carriers of each worker."""
    out = []
    for admin in admins:
        samples = scrape(admin)
        out.append(
            {
                "streams": sum(v for (n, _), v in samples.items() if n == STREAMS),
                "down_bytes": samples.get((STREAM_BYTES, (("direction", "downstream"),)), 0.0),
                "client_carriers": samples.get((CONNECTIONS, (("role", "client"),)), 0.0),
                "agent_carriers": samples.get((CONNECTIONS, (("role", "agent"),)), 0.0),
            }
        )
    return out


async def _duplicates_gone(admins: list[str], timeout: float = 5.0) -> None:
    """Until each worker counts exactly one agent connection. The agent dials the one port
    until it holds every worker and closes the dials that land on a worker it already
    holds; a worker keeps counting such a connection for up to ~0.8 s after the agent's
    gauge says it is done, and the measurement should not start among those closes."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if all(w["agent_carriers"] == 1 for w in _per_worker(admins)):
            return
        await asyncio.sleep(0.05)
    progress("    workers: a worker still counts more than one agent connection; measuring anyway")


def _delta(after: list[dict[str, float]], before: list[dict[str, float]], key: str) -> list:
    return [a[key] - b[key] for a, b in zip(after, before, strict=True)]


async def _throughput(ctx: Context, topo: Topology, meter: CpuMeter) -> dict:
    tunnels = await open_many(topo, ctx.target_port, ctx.sizes["workers_tunnels"])
    for t in tunnels:
        t.request(b"D", 1 << 50)  # more than any repeat moves
    await asyncio.sleep(WARMUP_S)
    start_bytes = [t.received for t in tunnels]
    meter.start()
    await asyncio.sleep(ctx.sizes["workers_seconds"])
    cpu = meter.stop()
    moved = sum(t.received - b for t, b in zip(tunnels, start_bytes, strict=True))
    for t in tunnels:
        t.close()
    await asyncio.sleep(SETTLE_S)
    return {"MBps": moved / cpu["wall"] / MB, "cpu": cpu}


async def _setup(ctx: Context, topo: Topology, meter: CpuMeter) -> dict:
    meter.start()
    result = await basic.setup(ctx, topo)
    cpu = meter.stop()
    return {
        "tunnels_per_s": result["tunnels_per_s"],
        "setup_p50_ms": result["setup_p50_ms"],
        "setup_p99_ms": result["setup_p99_ms"],
        "setup_failures": result["failures"],
        "cpu": cpu,
    }


async def one_chain(ctx: Context, n: int, label: str) -> dict:
    """A fresh chain with `--workers n`, its throughput, then its setup rate."""
    carriers = ctx.sizes["workers_carriers"]
    topo = chain(
        ctx.log_dir,
        ctx.chain_args,
        relay_args=("--workers", str(n)),
        client_args=("--carriers", str(carriers)),
        log_prefix=f"workers{n}-",
    )
    try:
        relay, agent, client = (
            next(p for p in topo.processes if p.name == k) for k in ("relay", "agent", "client_a")
        )
        # --workers 1 is the plain relay; with more, `relay` is the supervisor.
        admins = relay.ready.get("worker_admins") or [relay.ready["admin"]]
        pids = relay.ready.get("worker_pids") or [relay.pid]
        if len(admins) != n or len(pids) != n:
            raise RuntimeError(f"relay --workers {n} announced {len(admins)} worker admins")
        waited = time.perf_counter()
        wait_gauge(agent.ready["admin"], RELAY_CONNECTED, n)
        wait_gauge(client.ready["admin"], RELAY_CONNECTED, carriers)
        await _duplicates_gone(admins)
        mesh_s = time.perf_counter() - waited  # readiness to a settled mesh
        named = {f"relay_w{i}": pid for i, pid in enumerate(pids)}
        if n > 1:
            named["supervisor"] = relay.pid
        named |= {"client_a": client.pid, "agent": agent.pid}
        if ctx.target_pid:
            named["target"] = ctx.target_pid
        meter = CpuMeter(named)

        start = _per_worker(admins)
        bulk = await _throughput(ctx, topo, meter)
        mid = _per_worker(admins)
        setup = await _setup(ctx, topo, meter)
        end = _per_worker(admins)
        merged_ok = None
        if n > 1:  # the supervisor's /metrics merges the workers': it must add up
            merged = sum(v for (m, _), v in scrape(relay.ready["admin"]).items() if m == STREAMS)
            merged_ok = merged == sum(w["streams"] for w in end)
        run = {
            "workers": n,
            "label": label,
            "MBps": bulk["MBps"],
            "tunnels_per_s": setup["tunnels_per_s"],
            "setup_p50_ms": setup["setup_p50_ms"],
            "setup_p99_ms": setup["setup_p99_ms"],
            "setup_failures": setup["setup_failures"],
            "mesh_wait_s": mesh_s,
            "client_carriers_per_worker": [w["client_carriers"] for w in start],
            "agent_carriers_per_worker": [w["agent_carriers"] for w in start],
            "bulk_streams_per_worker": _delta(mid, start, "streams"),
            "bulk_MB_per_worker": [b / MB for b in _delta(mid, start, "down_bytes")],
            "setup_streams_per_worker": _delta(end, mid, "streams"),
            "supervisor_merge_ok": merged_ok,
            **_efficiency(bulk, setup, ctx.sizes["setup_count"]),
            "cpu_bulk": bulk["cpu"],
            "cpu_setup": setup["cpu"],
            "pids": named,
        }
    finally:
        topo.stop()
    return run


def _efficiency(bulk: dict, setup: dict, tunnels: int) -> dict[str, float]:
    """CPU per unit of work, which the other jobs on the machine disturb far less than
    rates: seconds per GB moved, ms per tunnel set up; for the relay (all its workers) and
    for the chain (relay, client_a, agent); and the cores the other jobs took meanwhile."""
    out: dict[str, float] = {}
    for phase, cpu, work, unit in (
        ("GB", bulk["cpu"], bulk["MBps"] * bulk["cpu"]["wall"] / 1000, 1.0),
        ("tunnel", setup["cpu"], tunnels - setup["setup_failures"], 1000.0),
    ):
        relay = sum(v for k, v in cpu.items() if k.startswith("relay_w"))
        chain_cpu = relay + cpu["client_a"] + cpu["agent"] + cpu.get("supervisor", 0.0)
        suffix = "s_per_GB" if phase == "GB" else "ms_per_tunnel"
        out[f"relay_cpu_{suffix}"] = relay * unit / work if work else float("nan")
        out[f"chain_cpu_{suffix}"] = chain_cpu * unit / work if work else float("nan")
    out["other_cores_bulk"] = bulk["cpu"]["other"] / bulk["cpu"]["wall"]
    out["other_cores_setup"] = setup["cpu"]["other"] / setup["cpu"]["wall"]
    return out


def _spread(values: list[float]) -> float:
    """(max - min) / median: the run-to-run noise of one configuration's repeats."""
    return (max(values) - min(values)) / statistics.median(values)


def _cpu_median(runs: list[dict], key: str) -> dict[str, float]:
    names = list(runs[0][key])
    return {name: statistics.median(r[key][name] for r in runs) for name in names}


async def workers(ctx: Context, topo: Topology) -> dict:
    """9. Throughput of many tunnels and tunnel setup rate, relay --workers 1 against 2."""
    del topo  # its own chains, one per configuration and repeat
    repeats = ctx.sizes["workers_repeats"]
    runs: dict[int, list[dict]] = {n: [] for n in CONFIGS}
    for rep in range(repeats):
        for n in CONFIGS:
            label = f"--workers {n}, repeat {rep + 1}/{repeats}"
            run = await one_chain(ctx, n, label)
            runs[n].append(run)
            per_worker = "+".join(
                "/".join(f"{x:.0f}" for x in run[k])
                for k in ("bulk_streams_per_worker", "setup_streams_per_worker")
            )
            progress(
                f"    workers {label}: {run['MBps']:.0f} MB/s, {run['tunnels_per_s']:.0f}"
                f" tunnels/s, p99 {run['setup_p99_ms']:.1f} ms, streams per worker {per_worker}"
            )
    med = {n: {k: statistics.median(r[k] for r in runs[n]) for k in PER_RUN} for n in CONFIGS}
    out: dict = {}
    for key in PER_RUN:
        one, two = med[1][key], med[2][key]
        out[f"workers_1_{key}"] = one
        out[f"workers_2_{key}"] = two
        if key in RATIOS:
            out[RATIOS[key]] = two / one if one else float("nan")
    for key, name in (("MBps", "MBps"), ("tunnels_per_s", "setup_rate")):
        # Like scenario 8: a ratio within the spread of the one-worker repeats is noise.
        noise = _spread([r[key] for r in runs[1]])
        out[f"{name}_noise_spread"] = noise
        if repeats < 2:
            out[f"{name}_verdict"] = "no verdict (one repeat)"
        elif abs(1 - out[RATIOS[key]]) <= noise:
            out[f"{name}_verdict"] = "within noise"
        else:
            out[f"{name}_verdict"] = "outside noise"
    return {
        **out,
        "setup_failures": sum(r["setup_failures"] for n in CONFIGS for r in runs[n]),
        "repeats": repeats,
        "tunnels": ctx.sizes["workers_tunnels"],
        "seconds": ctx.sizes["workers_seconds"],
        "carriers": ctx.sizes["workers_carriers"],
        "setup_count": ctx.sizes["setup_count"],
        "cpu_bulk": {str(n): _cpu_median(runs[n], "cpu_bulk") for n in CONFIGS},
        "cpu_setup": {str(n): _cpu_median(runs[n], "cpu_setup") for n in CONFIGS},
        "runs": [r for rep in range(repeats) for r in (runs[1][rep], runs[2][rep])],
    }
