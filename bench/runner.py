"""The end-to-end benchmark runner: `python -m bench [--quick] [--only NAME ...]`.

It starts the target, the baselines and the fastrelay chain as processes on
loopback, runs every scenario against the topologies it applies to (medians
over repeats), and writes bench/results/<timestamp>/ with results.json,
summary.md and PNG charts. Every figure that has a target is reported as a
ratio against a baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench import report
from bench.scenarios import basic, heavy, longpath, noisy, scrape, seeddialect, workers
from bench.scenarios.common import FULL_SIZES, QUICK_SIZES, Context, progress
from bench.topology import (
    Topology,
    chain,
    connect_proxy,
    direct,
    forwarder,
    pproxy,
    pproxy_missing,
    raise_fd_limit,
    seed,
    start_target,
    wait_gauge,
)
from fastrelay import eventloop
from fastrelay.config import size_bytes
from fastrelay.eventloop import ENV

Scenario = Callable[[Context, Topology], Awaitable[dict]]

# name -> (function, topologies it runs against)
PLAN: dict[str, tuple[Scenario, tuple[str, ...]]] = {
    "bulk": (basic.bulk, ("direct", "forwarder", "connect_proxy", "pproxy", "fastrelay")),
    "round_trip": (basic.round_trip, ("direct", "forwarder", "pproxy", "fastrelay", "seed")),
    "setup": (basic.setup, ("connect_proxy", "pproxy", "fastrelay")),
    "many_active": (heavy.many_active, ("forwarder", "fastrelay")),
    "many_idle": (heavy.many_idle, ("fastrelay",)),
    "head_of_line": (heavy.head_of_line, ("fastrelay",)),
    "small_frames": (heavy.small_frames, ("fastrelay",)),
    "scrape": (scrape.scrape, ("fastrelay",)),
    "workers": (workers.workers, ("fastrelay",)),
    "noisy_neighbour": (noisy.noisy_neighbour, ("fastrelay",)),
    "long_path": (longpath.long_path, ("fastrelay",)),
    "seed_dialect": (seeddialect.seed_dialect, ("fastrelay",)),
}


# Memory growth per tunnel shows only in processes that have not grown (and
# kept) their heaps before: a fresh chain for every repeat.
FRESH_CHAIN = {"many_idle"}
# Streams one client_a WebSocket carries (the relay's --max-streams-per-connection default):
# a fresh chain for N idle tunnels gets enough carriers for them.
STREAMS_PER_CARRIER = 1024


def idle_carriers(tunnels: int) -> int:
    """client_a's --carriers for `tunnels` idle tunnels: each carrier at most 3/4 full.
    (--max-connections, 4,096 by default, is raised past `tunnels` too.)"""
    return max(2, -(-tunnels * 4 // (STREAMS_PER_CARRIER * 3)))


# Scenarios that interleave their own repeats (scrape: off, on, off, on, ...): run once.
OWN_REPEATS = {"scrape", "workers", "noisy_neighbour", "long_path", "seed_dialect"}
# Scenarios that start their own chains (workers: relay --workers 1 and 2, a fresh chain
# per repeat; noisy_neighbour: one it may leave stalled): the runner starts none for them and
# hands them a topology with no process; long_path: one per RTT, the agent behind a delay line).
OWN_CHAINS = {"workers", "noisy_neighbour", "long_path"}
# Peers: programs a user could install instead, measured beside fastrelay and the baselines
# but never a target's denominator. One that is not installed, or does not start, is skipped
# with the reason in summary.md; a baseline that does not start fails the run.
PEERS = {"pproxy"}


async def run(
    names: list[str],
    quick: bool,
    out: Path,
    endpoint_args: list[str],
    extra: dict | None = None,
) -> dict:
    sizes = QUICK_SIZES if quick else FULL_SIZES
    log_dir = out / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    target, port = start_target(log_dir, int((extra or {}).get("target_sndbuf", 0)))
    factories: dict[str, Callable[[], Topology]] = {
        "direct": lambda: direct(port),
        "forwarder": lambda: forwarder(port, log_dir),
        "connect_proxy": lambda: connect_proxy(log_dir),
        "pproxy": lambda: pproxy(log_dir),
        "fastrelay": lambda: chain(log_dir, tuple(endpoint_args)),
        # The seed dialect through the same relay and agent (started after "fastrelay").
        "seed": lambda: seed(log_dir, topologies["fastrelay"]),
    }
    topologies: dict[str, Topology] = {}
    results: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    try:
        # Start, before any measurement, only what the chosen scenarios run against.
        for name in names:
            if name not in OWN_CHAINS:
                for topo_name in PLAN[name][1]:
                    if topo_name in topologies or topo_name in skipped:
                        continue
                    if topo_name in PEERS:
                        why = _start_peer(topo_name, factories[topo_name], topologies)
                        if why:
                            skipped[topo_name] = why
                            progress(f"skipping peer {topo_name}: {why}")
                        continue
                    topologies[topo_name] = factories[topo_name]()
        ctx = Context(
            port,
            sizes,
            log_dir,
            extra=dict(extra or {}),
            target_pid=target.pid,
            chain_args=tuple(endpoint_args),
        )
        for index, name in enumerate(names, 1):
            scenario, applies_to = PLAN[name]
            results[name] = {}
            for topo_name in applies_to:
                if topo_name in skipped:
                    continue
                if name in OWN_CHAINS:
                    topo = Topology(topo_name, ("127.0.0.1", 0), uses_connect=True)
                else:
                    topo = topologies[topo_name]
                runs = []
                for rep in range(1 if name in OWN_REPEATS else sizes["repeats"]):
                    if name in FRESH_CHAIN and topo_name == "fastrelay":
                        topo.stop()
                        idle = sizes["idle_tunnels"]
                        carriers = idle_carriers(idle)
                        client_args = ("--carriers", str(carriers))
                        client_args += ("--max-connections", str(max(4096, idle + 1024)))
                        topo = topologies["fastrelay"] = chain(
                            log_dir, tuple(endpoint_args), client_args=client_args
                        )
                        client = next(p for p in topo.processes if p.name == "client_a")
                        wait_gauge(client.ready["admin"], "fastrelay_relay_connected", carriers)
                    progress(f"{index}/{len(names)} {name}: {topo_name} run {rep + 1}")
                    runs.append(await scenario(ctx, topo))
                results[name][topo_name] = {"runs": runs, "median": _median(runs)}
                progress(f"    {topo_name}: {_headline(results[name][topo_name]['median'])}")
    finally:
        for topo in topologies.values():
            topo.stop()
        target.stop()
    fastrelay = topologies.get("fastrelay")
    return {
        "results": results,
        "processes": {n: t.describe() for n, t in topologies.items()} | {"target": target.pid},
        # compiled or python, per program (bench/topology.py refuses a mixed one)
        "hot_path": {
            p.name: p.ready["hotpath"] for p in fastrelay.processes if "hotpath" in p.ready
        }
        if fastrelay is not None
        else {},
        "skipped": skipped,
    }


def _start_peer(name: str, factory: Callable[[], Topology], topologies: dict[str, Topology]) -> str:
    """Start a peer into `topologies`; return why it was skipped, or "" if it started."""
    missing = {"pproxy": pproxy_missing}[name]()
    if missing:
        return missing
    try:
        topologies[name] = factory()
    except (RuntimeError, OSError, KeyError, ValueError) as exc:
        return f"did not start ({exc}; see logs/{name}.log)"
    return ""


def _median(runs: list[dict]) -> dict:
    merged: dict = {}
    for key, value in runs[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            merged[key] = statistics.median(r[key] for r in runs)
        else:
            merged[key] = value  # samples and tables: those of the first run
    return merged


def _headline(median: dict) -> str:
    shown = [f"{k}={v:.4g}" for k, v in median.items() if isinstance(v, float)]
    return ", ".join(shown[:6])


def environment(argv: list[str]) -> dict:
    with open("/proc/loadavg") as fh:
        load = fh.read().split()[:3]
    return {
        "command": "python -m bench " + shlex.join(argv),
        "cpus": os.cpu_count(),
        "loadavg_at_start": load,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "note": "load client, target, baselines and the three fastrelay programs share the cores",
        "chain_loop": os.environ.get(ENV) or "default (uvloop when installed)",
    }


def _rtts(text: str) -> list[float]:
    """'20,50' -> [20.0, 50.0]: milliseconds, each 0 to 1000."""
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ms such as 20,50, got {text!r}") from None
    if not values or any(not 0 <= v <= 1000 for v in values):
        raise argparse.ArgumentTypeError(f"expected ms from 0 to 1000, such as 20,50: {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench", allow_abbrev=False)
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat (CI)")
    parser.add_argument("--only", nargs="+", choices=list(PLAN), help="scenarios to run")
    parser.add_argument("--out", type=Path, help="results folder (default bench/results/<ts>)")
    parser.add_argument("--window", help="per-stream window for client_a and the agent")
    parser.add_argument(
        "--max-window", help="largest a stream's window grows to, client_a and the agent"
    )
    parser.add_argument(
        "--rtts",
        type=_rtts,
        help="long_path: round-trip times in ms to measure across (default 20,50)",
    )
    parser.add_argument(
        "--target-sndbuf",
        type=size_bytes,
        default=0,
        help="SO_SNDBUF of the target's connections, e.g. 256KiB (default: kernel autotuning); "
        "models remote servers, whose send queues are not this host's TCP memory",
    )
    parser.add_argument(
        "--loop",
        choices=["uvloop", "asyncio"],
        help="the event loop of the fastrelay chain (FASTRELAY_LOOP; default uvloop when "
        "installed); the load client, target and baselines keep the default loop",
    )
    args = parser.parse_args(argv)
    if args.loop is not None:  # the chain's programs inherit it; the load client stays put
        os.environ[ENV] = args.loop
    raise_fd_limit()
    out = args.out or Path("bench/results") / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    env = environment(argv)
    progress(f"writing {out}; load average {' '.join(env['loadavg_at_start'])}")
    endpoint_args = ["--window", args.window] if args.window else []
    if args.max_window:
        endpoint_args += ["--max-window", args.max_window]
    extra: dict = {"rtts": args.rtts} if args.rtts else {}
    if args.target_sndbuf:
        extra["target_sndbuf"] = args.target_sndbuf
    names = args.only or list(PLAN)
    data = eventloop.run_default(run(names, args.quick, out, endpoint_args, extra))
    data["environment"] = env
    data["quick"] = args.quick  # the report then judges no target (bench/report.py)
    (out / "results.json").write_text(json.dumps(data, indent=1))
    summary = report.write(data, out)
    print(summary)
    progress(f"results in {out}")
    return 0
