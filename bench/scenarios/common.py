"""What every scenario gets, and the statistics they share."""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

FULL_SIZES = {
    "bulk_bytes": 1 << 30,  # 1 GiB each way
    "rtt_count": 10_000,
    "setup_count": 3_000,
    "active_seconds": 4.0,
    "active_tunnels": [10, 100, 1000],
    "idle_tunnels": 10_000,
    "hol_bytes_per_tunnel": 64 << 20,
    "small_frames_seconds": 5.0,
    "scrape_seconds": 4.0,  # each download repeat; a 1 s scraper lands ~4 scrapes in it
    "scrape_pairs": 5,  # off/on repeats, interleaved
    "scrape_idle_rounds": 20,
    "workers_tunnels": 16,  # concurrent downloads per throughput repeat
    "workers_seconds": 4.0,
    "workers_carriers": 8,  # client_a's WebSockets, so streams land on every worker
    "workers_repeats": 3,  # per relay configuration, interleaved 1, 2, 1, 2, ...
    "noisy_seconds": 8.0,  # each phase's window (baseline, stalled, slow, recovered)
    "noisy_b_downloads": 8,  # B's concurrent downloaders
    "noisy_b_download_bytes": 32 << 20,  # each download, through a fresh tunnel
    "noisy_download_timeout": 4.0,  # a B download slower than this failed
    "noisy_setup_timeout": 2.0,  # a B setup slower than this failed
    "long_path_bytes": 256 << 20,  # each download and upload across the delay line
    "long_path_repeats": 3,  # direct and chain, alternating, at each RTT
    "seed_repeats": 3,  # scenario 12: binary and seed dialect, alternating
    "long_path_timeout": 120.0,  # one transfer slower than this fails the scenario
    "repeats": 3,
}
QUICK_SIZES = {
    "bulk_bytes": 32 << 20,
    "rtt_count": 500,
    "setup_count": 200,
    "active_seconds": 1.0,
    "active_tunnels": [10, 100],
    "idle_tunnels": 300,
    "hol_bytes_per_tunnel": 4 << 20,
    "small_frames_seconds": 1.0,
    "scrape_seconds": 1.0,
    "scrape_pairs": 2,
    "scrape_idle_rounds": 5,
    "workers_tunnels": 8,
    "workers_seconds": 1.0,
    "workers_carriers": 8,
    "workers_repeats": 1,
    "noisy_seconds": 2.5,
    "noisy_b_downloads": 8,
    "noisy_b_download_bytes": 8 << 20,
    "noisy_download_timeout": 2.0,
    "noisy_setup_timeout": 1.0,
    "long_path_bytes": 8 << 20,
    "long_path_repeats": 1,
    "seed_repeats": 1,
    "long_path_timeout": 20.0,
    "repeats": 1,
}


@dataclass
class Context:
    target_port: int
    sizes: dict
    log_dir: Path
    extra: dict = field(default_factory=dict)
    target_pid: int = 0  # the bench target, for scenarios that account CPU time
    chain_args: tuple[str, ...] = ()  # options for client_a and the agent (--window)


def progress(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p99": float("nan"), "p999": float("nan")}
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"p50": at(0.50), "p99": at(0.99), "p999": at(0.999)}


def jain(values: list[float]) -> float:
    """Jain's fairness index: 1.0 when every tunnel got the same share."""
    total = sum(values)
    if not values or not total:
        return float("nan")
    return total * total / (len(values) * sum(v * v for v in values))


def median_of(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)
