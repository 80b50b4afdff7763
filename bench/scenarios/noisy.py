"""Scenario 10: a noisy neighbour. Does one misbehaving client_a slow the others down?

Two clients share one relay and one agent (a fresh chain of this scenario's own):

- **B** is the chain's client_a, with a steady workload run by the load client for
  `noisy_seconds`: `noisy_b_downloads` downloaders, each fetching `noisy_b_download_bytes`
  through a fresh tunnel, again and again (MB/s moved in the window), and
  `SETUP_CONCURRENCY` workers setting up tunnels (CONNECT, one 64-byte echo, close; the
  setup latency is CONNECT sent to echo back).
- **A** is bench/noisy_peer.py in a process of its own: a client_a stand-in on a WebSocket
  with a small SO_RCVBUF (4 KiB asked, so the kernel cannot hide a stopped reader), with
  `A_STREAMS` endless downloads open at the normal per-stream window. It misbehaves one way
  per phase:
  - *stalled*: SIGSTOPped once its downloads flow, as a laptop that went to sleep;
  - *slow*: it reads its socket at `A_STREAMS` x 500 kB/s, a slow link (~500 kB/s each).

Phases, in one run on one chain: baseline (no A), stalled, B alone ("between"), slow, and
B alone again ("recovered", which shows B came back and how much the machine drifted). Each
A phase's ratios are against B alone in the two phases that bracket it (baseline and
between for stalled, between and recovered for slow): the mean of the windows right before
and right after cancels a steady drift of the shared machine, and both are one window
away, not two. Every phase
starts fresh tunnels; A is started fresh for its phase and removed after it (SIGCONT, then
SIGTERM and, if need be, SIGKILL, by PID). Every wait is bounded: a B download that takes
longer than `noisy_download_timeout`, or a setup longer than `noisy_setup_timeout`, is a
failure (a timed-out setup counts in the percentiles at the timeout, a lower bound), and
an attempt that the end of the window cuts short is neither success nor failure.

Targets (from the issue; reported, never asserted): with A misbehaving B keeps >= 90 % of
its MB/s alone with no failed download, B's setup p99 is <= 1.5x its p99 alone with no
failed setup, and the relay's RSS grows by no more than the per-connection buffer budget
(the relay's --max-connection-buffer default when it has one, else 32 MiB) for A's one
WebSocket.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import sys
import time

from bench.load import Tunnel
from bench.scenarios.common import Context, percentiles, progress
from bench.scenarios.heavy import RssSampler
from bench.topology import TARGET_HOST, Process, Topology, chain, scrape, start
from fastrelay.lifecycle import stop_process

MB = 1_000_000
MiB = 1 << 20
A_STREAMS = 8  # N: A's large downloads
A_RATE = 500_000  # bytes/s per download when A is slow
A_RCVBUF = 4096  # SO_RCVBUF asked for A's WebSocket (the kernel doubles it)
A_SETTLE_S = 0.5  # after A stops or slows, before B's window: let the relay's buffers fill
SETUP_CONCURRENCY = 4
SETTLE_S = 1.0  # after A is gone, before the next phase
WARMUP_S = 1.0  # B alone, unmeasured, before the baseline
RECOVERY_TIMEOUT_S = 10.0
KEEP_TARGET = 0.90
SETUP_P99_TARGET = 1.5
DEFAULT_BUDGET = 32 * MiB
PHASES = ("baseline", "stalled", "between", "slow", "recovered")
# B alone right before and right after each A phase: its reference.
BRACKETS = {"stalled": ("baseline", "between"), "slow": ("between", "recovered")}
BACKPRESSURE = "fastrelay_backpressure_pauses_total"
WS_BUFFER = "fastrelay_ws_write_buffer_bytes"
CONNECTIONS = "fastrelay_connections"


def connection_budget() -> tuple[int, str]:
    """The relay's per-connection buffer limit (--max-connection-buffer), if it has one."""
    from fastrelay.relay import config as relay_config

    for option in relay_config.OPTIONS:
        if option.name == "max_connection_buffer":
            value = option.default
            if not isinstance(value, int):
                value = option.parse(str(value))
            return int(value), "the relay's --max-connection-buffer default"
    return DEFAULT_BUDGET, "32 MiB: the relay has no --max-connection-buffer yet"


class _Attempt:
    """One B tunnel, closed whatever happens (open_tunnel drops the socket on a timeout)."""

    def __init__(self, topo: Topology, port: int) -> None:
        self.topo, self.port = topo, port
        self.tunnel: Tunnel | None = None

    async def open(self) -> Tunnel:
        loop = asyncio.get_running_loop()
        _, self.tunnel = await loop.create_connection(
            lambda: Tunnel(self.topo.uses_connect), *self.topo.entry
        )
        assert self.tunnel.transport is not None
        host = f"{TARGET_HOST}:{self.port}"
        self.tunnel.transport.write(f"CONNECT {host} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        await self.tunnel.opened
        return self.tunnel

    def close(self) -> int:
        if self.tunnel is None:
            return 0
        with contextlib.suppress(Exception):
            self.tunnel.close()
        return self.tunnel.received


async def b_workload(ctx: Context, topo: Topology, window: float) -> dict:
    """B's downloads and setups, side by side, for `window` seconds."""
    sizes = ctx.sizes
    size = sizes["noisy_b_download_bytes"]
    dl_timeout, setup_timeout = sizes["noisy_download_timeout"], sizes["noisy_setup_timeout"]
    start = time.perf_counter()
    deadline = start + window
    tally = {"moved": 0, "done": 0, "failed": 0, "cut": 0, "setups": 0, "setup_failed": 0}
    setup_ms: list[float] = []

    async def attempt(bound: float, body, counts: bool) -> str:  # type: ignore[no-untyped-def]
        """'done', 'failed' (error, or over its own timeout) or 'cut' (the window ended);
        the bytes a download moved count towards MB/s whatever its outcome."""
        left = deadline - time.perf_counter()
        limit = min(bound, left)
        job = _Attempt(topo, ctx.target_port)
        try:
            await asyncio.wait_for(body(job), limit)
            return "done"
        except TimeoutError:
            return "cut" if limit < bound else "failed"
        except (OSError, ConnectionError):
            return "failed"
        finally:
            moved = job.close()
            if counts:
                tally["moved"] += moved

    async def download(job: _Attempt) -> None:
        tunnel = await job.open()
        tunnel.request(b"D", size)
        await tunnel.until_received(size)

    async def setup(job: _Attempt) -> None:
        tunnel = await job.open()
        tunnel.request(b"E")
        await tunnel.send(64)
        await tunnel.until_received(64)

    async def downloader() -> None:
        while deadline - time.perf_counter() > 0:
            outcome = await attempt(dl_timeout, download, True)
            tally[outcome] += 1

    async def setups() -> None:
        while deadline - time.perf_counter() > 0:
            t0 = time.perf_counter()
            outcome = await attempt(setup_timeout, setup, False)
            if outcome == "done":
                tally["setups"] += 1
                setup_ms.append((time.perf_counter() - t0) * 1000)
            elif outcome == "failed":
                tally["setup_failed"] += 1
                setup_ms.append(setup_timeout * 1000)  # a lower bound of what it took

    await asyncio.gather(
        *(downloader() for _ in range(sizes["noisy_b_downloads"])),
        *(setups() for _ in range(SETUP_CONCURRENCY)),
    )
    elapsed = time.perf_counter() - start
    pct = percentiles(setup_ms)
    return {
        "seconds": elapsed,
        "MBps": tally["moved"] / elapsed / MB,
        "downloads_done": tally["done"],
        "downloads_failed": tally["failed"],
        "setups": tally["setups"],
        "setups_failed": tally["setup_failed"],
        "setup_p50_ms": pct["p50"],
        "setup_p99_ms": pct["p99"],
    }


def start_a(ctx: Context, topo: Topology, relay: Process, mode: str) -> Process:
    argv = [
        sys.executable,
        "-m",
        "bench.noisy_peer",
        "--relay",
        f"ws://{relay.ready['listen']}",
        "--target",
        f"{TARGET_HOST}:{ctx.target_port}",
        "--streams",
        str(A_STREAMS),
        "--rcvbuf",
        str(A_RCVBUF),
        "--max-seconds",
        "120",  # never outlive a runner that died (unless stopped, which we undo)
    ]
    window = _chain_window(ctx.chain_args)
    if window:
        argv += ["--window", str(window)]
    if mode == "slow":
        argv += ["--rate", str(A_RATE)]
    return start(
        "client_a_A",
        argv,
        {"FASTRELAY_BENCH_TOKEN": topo.client_token},
        ctx.log_dir / "noisy-client_A.log",
    )


def _chain_window(args: tuple[str, ...]) -> int:
    """--window given to the chain (python -m bench --window 8MiB): A grants the same."""
    from fastrelay.config import size_bytes

    for flag, value in itertools.pairwise(args):
        if flag == "--window":
            return size_bytes(value)
    return 0


def stop_a(a: Process) -> dict:
    """SIGCONT, SIGTERM (SIGKILL after 3 s) by PID; A's last line reports what it read."""
    stop_process(a.popen, 3)
    with contextlib.suppress(Exception):
        assert a.popen.stdout is not None
        for line in reversed(a.popen.stdout.read().splitlines()):
            report = json.loads(line)
            if report.get("event") == "report":
                return report
    return {}


async def b_recovery(ctx: Context, topo: Topology) -> float:
    """Seconds until B downloads 64 KiB again, after A is gone (nan if not within 10 s)."""
    start = time.perf_counter()
    while time.perf_counter() - start < RECOVERY_TIMEOUT_S:
        job = _Attempt(topo, ctx.target_port)
        try:
            tunnel = await asyncio.wait_for(job.open(), 1.0)
            tunnel.request(b"D", 65536)
            await tunnel.until_received(65536, timeout=1.0)
            return time.perf_counter() - start
        except (TimeoutError, OSError, ConnectionError):
            await asyncio.sleep(0.05)
        finally:
            job.close()
    return float("nan")


def _relay_gauges(relay: Process) -> dict[str, float]:
    """Feeder pauses so far, the relay's backlog towards client_a WebSockets, and how many
    client_a WebSockets it holds (B's carriers, and A's while A is connected)."""
    nan = float("nan")
    try:
        samples = scrape(relay.ready["admin"])
    except OSError:
        return {"pauses": nan, "client_backlog": nan, "clients": nan}
    return {
        "pauses": sum(v for (n, _), v in samples.items() if n == BACKPRESSURE),
        "client_backlog": samples.get((WS_BUFFER, (("role", "client"),)), nan),
        "clients": samples.get((CONNECTIONS, (("role", "client"),)), nan),
    }


async def one_phase(ctx: Context, topo: Topology, relay: Process, mode: str) -> dict:
    misbehaves = mode in ("stalled", "slow")
    rss_before = relay.rss_kib()
    gauges_before = _relay_gauges(relay)
    a: Process | None = None
    a_report: dict = {}
    a_info: dict = {}
    try:
        if misbehaves:
            a = start_a(ctx, topo, relay, mode)
            a_info = {"a_pid": a.pid, "a_rcvbuf": a.ready.get("rcvbuf")}
            if mode == "stalled":
                os.kill(a.pid, signal.SIGSTOP)
            await asyncio.sleep(A_SETTLE_S)
        with RssSampler([relay]) as rss:
            b = await b_workload(ctx, topo, ctx.sizes["noisy_seconds"])
        rss_end = relay.rss_kib()
        gauges_end = _relay_gauges(relay)  # before A goes: what the relay holds for it now
    finally:
        if a is not None:
            a_report = stop_a(a)
    recovery = await b_recovery(ctx, topo) if misbehaves else 0.0
    await asyncio.sleep(SETTLE_S)
    rss_after = relay.rss_kib()
    return {
        **b,
        **a_info,
        "a_per_stream_kBps": a_report.get("per_stream_Bps_since_ready", float("nan")) / 1000,
        "relay_rss_before_MiB": rss_before / 1024,
        "relay_rss_peak_MiB": max(rss.peak["relay"], rss_end) / 1024,
        "relay_rss_after_MiB": rss_after / 1024,
        "relay_rss_growth_MiB": (max(rss.peak["relay"], rss_end) - rss_before) / 1024,
        "relay_client_backlog_MiB": gauges_end["client_backlog"] / MiB,
        "relay_backpressure_pauses": gauges_end["pauses"] - gauges_before["pauses"],
        # 1 while the relay still holds A's WebSocket; 0 once it has dropped it.
        "a_connected_at_end": gauges_end["clients"] - gauges_before["clients"],
        "b_recovery_s": recovery,
    }


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def verdicts(phases: dict[str, dict], budget_mib: float) -> dict:
    """Ratios to B alone and pass/fail against the issue's targets, per A phase.

    B alone, for an A phase, is the mean of the two phases without A that bracket it
    (BRACKETS): on the shared machine one B-alone window drifted by up to 2x from another,
    and the mean of the windows right before and right after cancels a steady drift.
    `{mode}_drift_MBps` is after / before: how far the machine moved around that phase."""
    out: dict = {}
    for mode in ("stalled", "slow"):
        p = phases[mode]
        before, after = (phases[name] for name in BRACKETS[mode])
        for key in ("MBps", "setup_p99_ms"):
            out[f"{mode}_reference_{key}"] = (before[key] + after[key]) / 2
        out[f"{mode}_drift_MBps"] = _ratio(after["MBps"], before["MBps"])
        kept = _ratio(p["MBps"], out[f"{mode}_reference_MBps"])
        p99 = _ratio(p["setup_p99_ms"], out[f"{mode}_reference_setup_p99_ms"])
        out[f"{mode}_throughput_kept"] = kept
        out[f"{mode}_setup_p99_ratio"] = p99
        out[f"{mode}_relay_rss_growth_MiB"] = p["relay_rss_growth_MiB"]
        out[f"{mode}_throughput_ok"] = kept >= KEEP_TARGET and p["downloads_failed"] == 0
        out[f"{mode}_setup_ok"] = p99 <= SETUP_P99_TARGET and p["setups_failed"] == 0
        out[f"{mode}_rss_ok"] = p["relay_rss_growth_MiB"] <= budget_mib
    return out


def summary_lines(result: dict) -> list[str]:
    """A one-screen table of the phases and the verdicts."""
    phases = result["phases"]
    lines = [
        f"noisy neighbour: B = client_a, {result['b_downloads']} x"
        f" {result['b_download_MiB']:g} MiB downloads + {SETUP_CONCURRENCY} setup workers for"
        f" {result['seconds']:g} s per phase; A = {A_STREAMS} downloads, SO_RCVBUF"
        f" {result['a_rcvbuf']}",
        f"  {'phase':<10} {'B MB/s':>8} {'dl ok/fail':>11} {'setup p50':>10} {'p99 ms':>8}"
        f" {'setup fail':>10} {'relay RSS MiB':>20} {'pauses':>7} {'A kB/s':>7}",
    ]
    for name in PHASES:
        p = phases[name]
        rss = (
            f"{p['relay_rss_before_MiB']:.0f}->{p['relay_rss_peak_MiB']:.0f}"
            f" (+{p['relay_rss_growth_MiB']:.1f})"
        )
        a_rate = f"{p['a_per_stream_kBps']:.0f}" if name == "slow" else "-"
        lines.append(
            f"  {name:<10} {p['MBps']:>8.1f} {p['downloads_done']:>5}/{p['downloads_failed']:<5}"
            f" {p['setup_p50_ms']:>10.1f} {p['setup_p99_ms']:>8.1f} {p['setups_failed']:>10}"
            f" {rss:>20} {p['relay_backpressure_pauses']:>7.0f} {a_rate:>7}"
        )
    yes = lambda ok: "PASS" if ok else "FAIL"  # noqa: E731
    for mode in ("stalled", "slow"):
        at_least = ">= " if phases[mode]["setups_failed"] else ""  # timed-out setups: censored
        lines += [
            f"  A {mode}: B throughput kept {result[f'{mode}_throughput_kept']:.0%}"
            f" [{yes(result[f'{mode}_throughput_ok'])}: >= 90 %, no failed download],"
            f" setup p99 {at_least}{result[f'{mode}_setup_p99_ratio']:.2f}x"
            f" [{yes(result[f'{mode}_setup_ok'])}: <= 1.5x, no failed setup]",
            f"  {' ' * len(mode)}   relay RSS +{result[f'{mode}_relay_rss_growth_MiB']:.1f} MiB"
            f" [{yes(result[f'{mode}_rss_ok'])}: <= {result['rss_budget_MiB']:g} MiB];"
            f" B works {phases[mode]['b_recovery_s'] * 1000:.0f} ms after A left",
            f"  {' ' * len(mode)}   B alone = mean of {' and '.join(BRACKETS[mode])}:"
            f" {result[f'{mode}_reference_MBps']:.1f} MB/s, setup p99"
            f" {result[f'{mode}_reference_setup_p99_ms']:.1f} ms; after / before (drift)"
            f" {result[f'{mode}_drift_MBps']:.2f}",
        ]
    lines.append(
        f"  recovered / baseline (the whole run's drift): MB/s"
        f" {result['baseline_drift_MBps']:.2f}, p99 {result['baseline_drift_setup_p99']:.2f}"
    )
    return lines


async def noisy_neighbour(ctx: Context, topo: Topology) -> dict:
    """10. B's throughput and setup latency while A, on the same relay, stalls or crawls."""
    del topo  # a chain of its own: the stalled phase may leave the relay in any state
    sizes = ctx.sizes
    budget, budget_source = connection_budget()
    chain_topo = chain(ctx.log_dir, ctx.chain_args, log_prefix="noisy-")
    try:
        relay = next(p for p in chain_topo.processes if p.name == "relay")
        # Unmeasured: the first tunnels grow every program's heap and buffers once.
        await b_workload(ctx, chain_topo, WARMUP_S)
        await asyncio.sleep(SETTLE_S)
        phases: dict[str, dict] = {}
        for mode in PHASES:
            phases[mode] = await one_phase(ctx, chain_topo, relay, mode)
            p = phases[mode]
            progress(
                f"    noisy_neighbour {mode}: B {p['MBps']:.1f} MB/s"
                f" ({p['downloads_failed']} failed downloads), setup p99"
                f" {p['setup_p99_ms']:.1f} ms ({p['setups_failed']} failed), relay RSS"
                f" +{p['relay_rss_growth_MiB']:.1f} MiB"
            )
    finally:
        chain_topo.stop()
    result = {
        "seconds": sizes["noisy_seconds"],
        "b_downloads": sizes["noisy_b_downloads"],
        "b_download_MiB": sizes["noisy_b_download_bytes"] / MiB,
        "download_timeout_s": sizes["noisy_download_timeout"],
        "setup_timeout_s": sizes["noisy_setup_timeout"],
        "a_streams": A_STREAMS,
        "a_rate_kBps": A_RATE / 1000,
        "a_rcvbuf": phases["stalled"].get("a_rcvbuf"),
        "rss_budget_MiB": budget / MiB,
        "rss_budget_source": budget_source,
        **verdicts(phases, budget / MiB),
        # B alone before and after the A phases: how far the shared machine drifted.
        "baseline_drift_MBps": _ratio(phases["recovered"]["MBps"], phases["baseline"]["MBps"]),
        "baseline_drift_setup_p99": _ratio(
            phases["recovered"]["setup_p99_ms"], phases["baseline"]["setup_p99_ms"]
        ),
        "phases": phases,
    }
    for line in summary_lines(result):
        progress(line)
    return result
