"""Per-hop budget: CPU, run-queue wait, syscalls and hold time per round trip, open or MB.

`python -m bench.profile_hops [--mode round_trip setup] [--count N] [--repeats 3]
[--strace] [--timeline] [--perf] [--pyspy DIR] [--out DIR]` starts the target, the one-hop
baselines and the fastrelay chain exactly as `python -m bench` does (bench/topology.py),
then, per mode and repeat, runs a fixed number of operations and reads every process's
counters before and after the window:

- **round_trip**: 1 KiB sent and echoed on one open tunnel, one at a time (scenario 2);
  one "op" is one round trip, so every hop forwards two messages (request and echo);
- **setup**: CONNECT, 200, a 64-byte echo, close, `--concurrency` at a time
  (scenario 3); one "op" is one open;
- **bulk**: one tunnel downloads `count` MB (scenario 1, down); one "op" is one MB
  (10^6 bytes), so CPU per op is µs per MB.

Per process and op: on-CPU µs and run-queue wait µs (the summed
/proc/PID/task/*/schedstat of every thread: ns on CPU, ns runnable but waiting for a
core) and the number of times it was scheduled in. The end-to-end wall per op (window /
ops) and the p50 latency of one op are reported beside them.

Each of these is a separate pass after the plain windows, since each slows the chain:
`--strace` (`strace -c -f` on every process: syscalls per op), `--timeline` (round trip
only: `perf record -e raw_syscalls:*`; per program, epoll returning to the next send, and
per edge, a send to the next program's epoll return), `--perf` (`perf record -g` per
program: on-CPU µs per op by library and by system call) and `--pyspy DIR`
(`py-spy record --native -r 1000 --format raw` per program: the functions with the largest
share, and the issue's candidate causes, in user-space µs per op). Root is needed for the
last three and for strace. Everything lands in `--out` (profile.md, profile.json, the raw
strace, perf and py-spy files).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.load import open_tunnel, timed_open
from bench.topology import (
    Topology,
    chain,
    connect_proxy,
    forwarder,
    raise_fd_limit,
    start_target,
)
from fastrelay import eventloop

PY_SPY = str(Path(sys.executable).parent / "py-spy")
MODES: dict[str, tuple[str, ...]] = {
    "round_trip": ("forwarder", "fastrelay"),
    "setup": ("connect_proxy", "fastrelay"),
    "bulk": ("forwarder", "fastrelay"),
}
DEFAULT_COUNT = {"round_trip": 5000, "setup": 2000, "bulk": 2000}
UNITS = {"round_trip": "round trip", "setup": "open", "bulk": "MB"}
MB = 1_000_000


@dataclass
class Sched:
    cpu_ns: int = 0
    wait_ns: int = 0
    slices: int = 0
    other_threads_cpu_ns: int = 0  # every thread but the main one (thread pools)
    utime: int = 0  # clock ticks, user and system (for the user-space share)
    stime: int = 0


def schedstat(pid: int) -> Sched:
    """Summed over every thread of `pid` (the resolver's thread pool included)."""
    total = Sched()
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
                cpu, wait, slices = (int(x) for x in fh.read().split())
            total.cpu_ns += cpu
            total.wait_ns += wait
            total.slices += slices
            if int(tid) != pid:
                total.other_threads_cpu_ns += cpu
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    total.utime, total.stime = int(fields[11]), int(fields[12])
    return total


@dataclass
class Window:
    ops: int
    wall_s: float
    p50_s: float
    per_proc: dict[str, dict[str, float]] = field(default_factory=dict)


Runner = Callable[[Topology, int, int], Awaitable[float]]
LATENCIES: list[float] = []  # seconds: each round trip, or each open (CONNECT to 200)


async def run_round_trips(topo: Topology, target_port: int, count: int) -> float:
    tunnel = await open_tunnel(topo, target_port)
    tunnel.request(b"E")
    expected = 0
    start = time.perf_counter()
    for _ in range(count):
        sent = time.perf_counter()
        await tunnel.send(1024)
        expected += 1024
        await tunnel.until_received(expected, timeout=30)
        LATENCIES.append(time.perf_counter() - sent)
    elapsed = time.perf_counter() - start
    tunnel.close()
    return elapsed


def setup_runner(concurrency: int) -> Runner:
    async def run_setups(topo: Topology, target_port: int, count: int) -> float:
        queue = iter(range(count))

        async def worker() -> None:
            for _ in queue:
                tunnel, opened = await timed_open(topo, target_port)
                LATENCIES.append(opened)
                tunnel.request(b"E")
                await tunnel.send(64)
                await tunnel.until_received(64, timeout=30)
                tunnel.close()

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - start

    return run_setups


async def run_bulk(topo: Topology, target_port: int, count: int) -> float:
    """`count` MB down one tunnel; each MB's time is a latency sample (its p50 is µs per MB)."""
    tunnel = await open_tunnel(topo, target_port)
    start = time.perf_counter()
    tunnel.request(b"D", count * MB)
    last = start
    for n in range(1, count + 1):
        await tunnel.until_received(n * MB, timeout=60)
        now = time.perf_counter()
        LATENCIES.append(now - last)
        last = now
    elapsed = time.perf_counter() - start
    tunnel.close()
    return elapsed


RUNNERS: dict[str, Callable[[int], Runner]] = {
    "round_trip": lambda concurrency: run_round_trips,
    "setup": setup_runner,
    "bulk": lambda concurrency: run_bulk,
}


async def measure(
    topo: Topology, pids: dict[str, int], runner: Runner, target_port: int, count: int
) -> Window:
    before = {name: schedstat(pid) for name, pid in pids.items()}
    LATENCIES.clear()
    wall = await runner(topo, target_port, count)
    p50 = statistics.median(LATENCIES) if LATENCIES else float("nan")
    await asyncio.sleep(0.05)  # closes finish inside the window
    after = {name: schedstat(pid) for name, pid in pids.items()}
    window = Window(count, wall, p50)
    for name in pids:
        a, b = after[name], before[name]
        window.per_proc[name] = {
            "cpu_us": (a.cpu_ns - b.cpu_ns) / 1e3 / count,
            "runq_us": (a.wait_ns - b.wait_ns) / 1e3 / count,
            "sched_in": (a.slices - b.slices) / count,
            "threads_cpu_us": (a.other_threads_cpu_ns - b.other_threads_cpu_ns) / 1e3 / count,
            # clock ticks (10 ms): a window of a few hundred ms of CPU gives it to a few %
            "user_share": (a.utime - b.utime) / max(1, a.utime + a.stime - b.utime - b.stime),
        }
    return window


def parse_strace(text: str) -> Counter[str]:
    calls: Counter[str] = Counter()
    for line in text.splitlines():
        parts = line.split()
        # % time, seconds, usecs/call, calls, [errors], syscall
        if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
            with contextlib.suppress(ValueError):
                calls[parts[-1]] += int(parts[3])
    return calls


async def strace_pass(
    topo: Topology, pids: dict[str, int], runner: Runner, target_port: int, count: int, out: Path
) -> dict[str, Counter[str]]:
    tracers: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    for name, pid in pids.items():
        path = out / f"strace-{name}-{pid}.txt"
        tracers[name] = (
            subprocess.Popen(["strace", "-c", "-f", "-o", str(path), "-p", str(pid)]),
            path,
        )
    await asyncio.sleep(1.0)  # every tracer attached
    try:
        await runner(topo, target_port, count)
        await asyncio.sleep(0.05)
    finally:
        for proc, _ in tracers.values():
            proc.send_signal(signal.SIGINT)
        for proc, _ in tracers.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
    result = {}
    for name, (_, path) in tracers.items():
        text = path.read_text() if path.exists() else ""
        result[name] = parse_strace(text)
    return result


async def pyspy_pass(
    topo: Topology, pids: dict[str, int], runner: Runner, target_port: int, count: int, out: Path
) -> dict[str, Path]:
    procs: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    for name, pid in pids.items():
        path = out / f"pyspy-{name}.raw"
        cmd = [PY_SPY, "record", "--native", "-r", "1000", "--format", "raw"]
        cmd += ["-o", str(path), "-p", str(pid)]
        procs[name] = (
            subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
            path,
        )
    await asyncio.sleep(1.0)
    try:
        await runner(topo, target_port, count)
    finally:
        for proc, _ in procs.values():
            proc.send_signal(signal.SIGINT)
        for proc, _ in procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
    return {name: path for name, (_, path) in procs.items()}


PROJECT = ("fastrelay/", "agent/", "client_a/", "relay/", "asyncio/", "picows", "aiofastnet")


# libc leaves that are system calls: py-spy counts a thread in one as busy even while it
# waits runnable for a core (a send() that woke its receiver often does), so these samples
# are left out and the rest scaled to the user-space CPU; perf gives the kernel's share.
SYSCALL_LEAVES = {
    "send", "recv", "sendto", "recvfrom", "write", "read", "writev", "epoll_ctl", "connect",
    "shutdown", "socket", "close", "ioctl", "getpid", "setsockopt", "getsockopt",
    "getsockname", "getpeername", "accept4", "pthread_cond_signal", "__close", "__libc_close",
}  # fmt: skip


def _is_syscall_leaf(frame: str) -> bool:
    return "(libc.so" in frame and frame.split(" ", 1)[0] in SYSCALL_LEAVES


def _is_idle(stack: str) -> bool:
    """The loop waiting in epoll, or a thread (an executor's worker) waiting on a lock."""
    leaf = stack.rsplit(";", 1)[-1]
    return "epoll_wait" in leaf or "epoll_pwait" in leaf or "acquire_lock_timed" in stack


def _strip_line(frame: str) -> str:
    """`f (file.py:12)` -> `f (file.py)`: one row per function, not per line."""
    head, sep, tail = frame.rpartition(":")
    return f"{head})" if sep and tail.rstrip(")").isdigit() else frame


def summarise_pyspy(
    path: Path, top: int
) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    """(busy samples, top self leaves, top inclusive project functions) from a py-spy
    raw (collapsed) file. Stacks whose leaf is the loop waiting (epoll) are idle: dropped."""
    inclusive: Counter[str] = Counter()
    self_: Counter[str] = Counter()
    busy = 0
    if not path.exists():
        return 0, [], []
    for line in path.read_text().splitlines():
        stack, _, n_text = line.rpartition(" ")
        if not stack or not n_text.isdigit():
            continue
        if _is_idle(stack):
            continue
        frames = [_strip_line(f) for f in stack.split(";")]
        if _is_syscall_leaf(frames[-1]):
            continue
        n = int(n_text)
        busy += n
        for frame in set(frames):
            if any(mark in frame for mark in PROJECT):
                inclusive[frame] += n
        self_[frames[-1]] += n
    return busy, self_.most_common(top), inclusive.most_common(top * 2)


SYSCALL_NR = {0: "read", 1: "write", 20: "writev", 44: "sendto", 45: "recvfrom", 46: "sendmsg"}
WAKE_NR = {232, 281}  # epoll_wait, epoll_pwait
SEND_NR = {1, 20, 44, 46}


async def perf_pass(
    topo: Topology,
    pids: dict[str, int],
    runner: Runner,
    target_port: int,
    count: int,
    out: Path,
    events: list[str],
    tag: str,
) -> Path:
    """One `perf record` over every pid for the window (`-g` or tracepoints)."""
    path = out / f"perf-{tag}.data"
    cmd = ["perf", "record", "-q", "-o", str(path), *events]
    cmd += ["-p", ",".join(str(p) for p in pids.values())]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    await asyncio.sleep(1.0)
    try:
        await runner(topo, target_port, count)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return path


def timeline(path: Path, pids: dict[str, int], count: int) -> list[str]:
    """Per-hop wall time of a round trip from syscall tracepoints (one message in flight).

    Per program: wake (epoll returns) to the first send that follows, the time it holds a
    message. Per edge: a program's send entered to the next program's wake, the kernel's
    loopback delivery plus the wake-up of the receiver."""
    text = subprocess.run(
        ["perf", "script", "-i", str(path), "-F", "pid,tid,time,event,trace"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    names = {pid: name for name, pid in pids.items()}
    hold: dict[str, list[float]] = {n: [] for n in pids}
    edges: dict[str, list[float]] = {}
    woke: dict[str, float] = {}
    last_send: tuple[str, float] | None = None
    for line in text.splitlines():
        parts = line.split()
        # pid/tid time: raw_syscalls:sys_enter: NR 44 (...) | sys_exit: NR 281 = 1
        if len(parts) < 5 or "raw_syscalls" not in line:
            continue
        try:
            pid = int(parts[0].split("/")[0])
            stamp = float(parts[1].rstrip(":"))
            nr = int(parts[parts.index("NR") + 1])
        except (ValueError, IndexError):
            continue
        name = names.get(pid)
        if name is None:
            continue
        if "sys_exit" in line and nr in WAKE_NR and not line.rstrip().endswith("= 0"):
            woke[name] = stamp
            if last_send is not None and last_send[0] != name:
                edges.setdefault(f"{last_send[0]} -> {name}", []).append(stamp - last_send[1])
                last_send = None
        elif "sys_enter" in line and nr in SEND_NR:
            if name in woke:
                hold[name].append(stamp - woke.pop(name))
            last_send = (name, stamp)
    rows = ["| program or edge | µs per round trip | events per round trip | median µs |"]
    rows.append("|---|---|---|---|")
    for name, values in hold.items():
        if values:
            rows.append(
                f"| {name}: wake to send | {sum(values) / count * 1e6:.1f} "
                f"| {len(values) / count:.2f} | {statistics.median(values) * 1e6:.1f} |"
            )
    for edge, values in sorted(edges.items(), key=lambda kv: -sum(kv[1])):
        if len(values) >= count // 10:
            rows.append(
                f"| {edge}: send to wake | {sum(values) / count * 1e6:.1f} "
                f"| {len(values) / count:.2f} | {statistics.median(values) * 1e6:.1f} |"
            )
    return rows


def perf_summary(path: Path, title: str, cpu_us: float) -> list[str]:
    """perf's on-CPU split of one program: by library, and by system call (inclusive)."""

    def report(*extra: str) -> list[tuple[float, str]]:
        text = subprocess.run(
            ["perf", "report", "-i", str(path), "--stdio", "-g", "none", *extra],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        rows = []
        for line in text.splitlines():
            parts = line.split()
            if parts and parts[0].endswith("%") and not line.startswith("#"):
                with contextlib.suppress(ValueError):
                    rows.append((float(parts[0].rstrip("%")), parts[-1]))
        return rows

    lines = [f"\n#### perf {title}: {cpu_us:.1f} CPU µs/op\n", "by library, µs/op:\n"]
    lines += [
        f"- {pct / 100 * cpu_us:6.1f}  {dso}"
        for pct, dso in report("--no-children", "--sort", "dso")[:6]
    ]
    lines.append("\nsystem calls (kernel, inclusive), µs/op:\n")
    # A syscall's entry shows as __x64_sys_NAME, __sys_NAME or both (sendmsg has only the
    # latter here); each is counted once, under its largest share.
    calls: dict[str, float] = {}
    for pct, sym in report("--children", "--sort", "sym"):
        for prefix in ("__x64_sys_", "__sys_"):
            if sym.startswith(prefix):
                name = sym.removeprefix(prefix)
                calls[name] = max(calls.get(name, 0.0), pct)
    top = sorted(calls.items(), key=lambda kv: -kv[1])[:8]
    lines += [f"- {pct / 100 * cpu_us:6.1f}  {name}" for name, pct in top]
    lines.append("\nkernel copies to and from user space (inclusive), µs/op:\n")
    copies = [(p, s) for p, s in report("--no-children", "--sort", "sym") if "copy_" in s]
    lines += [f"- {pct / 100 * cpu_us:6.1f}  {sym}" for pct, sym in copies[:3]]
    return lines


# The candidate causes, as frames to look for in every sampled stack: inclusive
# µs/op of the stacks that contain any of the markers.
CANDIDATES: dict[str, tuple[str, ...]] = {
    "uvloop idle handler: every call_soon callback and task step": ("Loop__on_idle",),
    "  of it, FlushScheduler.flush_all (the batched writes)": ("FlushScheduler.flush_all",),
    "  FlushScheduler.mark (scheduling the flush)": ("FlushScheduler.mark",),
    "orjson (loads/dumps)": ("orjson",),
    "dataclass __init__ (generated)": ("__create_fn__",),
    "messages.py encode/decode (orjson and dataclasses inside)": ("protocol/messages.py",),
    "name look-ups (fastrelay/resolver.py)": ("fastrelay/resolver.py", "getaddrinfo", "pycares"),
    "thread-pool wake-up (pthread_cond_signal)": ("pthread_cond_signal",),
    "timers (call_later, wait_for, timeouts)": ("call_later", "call_at", "wait_for", "TimerHandle"),
    "metrics (fastrelay/metrics.py, prometheus_client)": ("fastrelay/metrics.py", "prometheus"),
    "logging and access log": ("logging/", "accesslog.py", "fastrelay/logs.py"),
    "garbage collector": ("gc_collect_main",),
    "add/remove reader and writer (uvloop UVPoll)": ("add_reader", "remove_reader", "add_writer"),
}


def candidates(path: Path) -> dict[str, float]:
    """Share of busy samples (0..1) whose stack holds any marker of each candidate."""
    hits: Counter[str] = Counter()
    busy = 0
    if not path.exists():
        return {}
    for line in path.read_text().splitlines():
        stack, _, n_text = line.rpartition(" ")
        if not stack or not n_text.isdigit():
            continue
        leaf = stack.rsplit(";", 1)[-1]
        if _is_idle(stack) or _is_syscall_leaf(leaf):
            continue
        n = int(n_text)
        busy += n
        for name, marks in CANDIDATES.items():
            if any(m in stack for m in marks):
                hits[name] += n
    return {name: hits[name] / busy for name in CANDIDATES} if busy else {}


def table(mode: str, windows: dict[str, list[Window]], calls: dict[str, dict]) -> str:
    unit = UNITS[mode]
    lines = [
        f"### {mode}: per {unit} (median of {len(next(iter(windows.values())))} repeats)",
        "",
        f"| topology | program | CPU µs / {unit} (of it, other threads) | run-queue wait µs "
        "| on-CPU + wait µs "
        f"| scheduled in / {unit} | syscalls / {unit} | top syscalls / {unit} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for topo_name, runs in windows.items():
        wall = statistics.median(w.wall_s / w.ops * 1e6 for w in runs)
        p50 = statistics.median(w.p50_s * 1e6 for w in runs)
        for name in runs[0].per_proc:

            def med(key: str, name: str = name, runs: list[Window] = runs) -> float:
                return statistics.median(w.per_proc[name][key] for w in runs)

            sc = calls.get(topo_name, {}).get(name)
            if sc is None:
                total, top_text = "-", "-"
            else:
                n = sc["ops"]
                total = f"{sum(sc['calls'].values()) / n:.1f}"
                top_text = ", ".join(f"{k} {v / n:.1f}" for k, v in sc["calls"].most_common(5))
            lines.append(
                f"| {topo_name} | {name} | {med('cpu_us'):.1f} ({med('threads_cpu_us'):.1f}) "
                f"| {med('runq_us'):.1f} "
                f"| {med('cpu_us') + med('runq_us'):.1f} | {med('sched_in'):.2f} "
                f"| {total} | {top_text} |"
            )
        lines.append(
            f"| {topo_name} | *end to end: window / ops; p50 latency* | | | {wall:.1f}; "
            f"{p50:.1f} | | | |"
        )
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> int:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    target, port = start_target(logs)
    topos: dict[str, Topology] = {}
    report: list[str] = []
    tables: list[str] = []
    raw: dict = {}
    try:
        needed = {t for m in args.mode for t in MODES[m]}
        if "forwarder" in needed:
            topos["forwarder"] = forwarder(port, logs)
        if "connect_proxy" in needed:
            topos["connect_proxy"] = connect_proxy(logs)
        if "fastrelay" in needed:
            topos["fastrelay"] = chain(logs)
        for mode in args.mode:
            runner = RUNNERS[mode](args.concurrency)
            count = args.count or DEFAULT_COUNT[mode]
            windows: dict[str, list[Window]] = {t: [] for t in MODES[mode]}
            calls: dict[str, dict] = {}
            for topo_name in MODES[mode]:
                topo = topos[topo_name]
                pids = {p.name: p.pid for p in topo.processes}
                pids["target"] = target.pid
                pids["load client"] = os.getpid()
                await runner(topo, port, max(50, count // 10))  # warm-up
                for rep in range(args.repeats):
                    with open("/proc/loadavg") as fh:
                        load = " ".join(fh.read().split()[:3])
                    win = await measure(topo, pids, runner, port, count)
                    windows[topo_name].append(win)
                    print(
                        f"[profile] {mode} {topo_name} run {rep + 1}: "
                        f"{win.wall_s / count * 1e6:.1f} µs/op wall, load {load}",
                        file=sys.stderr,
                        flush=True,
                    )
                if args.strace:
                    traced = {n: p for n, p in pids.items() if n not in ("load client",)}
                    got = await strace_pass(topo, traced, runner, port, count, out)
                    calls[topo_name] = {n: {"ops": count, "calls": c} for n, c in got.items()}
                if args.timeline and mode == "round_trip":
                    n = min(count, 2000)
                    events = ["-e", "raw_syscalls:sys_enter", "-e", "raw_syscalls:sys_exit"]
                    path = await perf_pass(topo, pids, runner, port, n, out, events, topo_name)
                    report.append(f"\n#### syscall timeline, {mode} {topo_name} ({n} ops)\n")
                    report += timeline(path, pids, n)
                if args.perf and topo_name == "fastrelay":
                    for name, pid in ((p.name, p.pid) for p in topo.processes):
                        path = await perf_pass(
                            topo, {name: pid}, runner, port, count, out, ["-g"], f"{mode}-{name}"
                        )
                        report_cmd = ["perf", "report", "-i", str(path), "--stdio"]
                        report_cmd += ["--no-children", "--sort", "sym", "--percent-limit", "1.5"]
                        perf_text = subprocess.run(
                            [*report_cmd, "-g", "none"],
                            capture_output=True,
                            text=True,
                            check=False,
                        ).stdout
                        (out / f"perf-{mode}-{name}.txt").write_text(perf_text)
                        cpu = statistics.median(
                            w.per_proc[name]["cpu_us"] for w in windows[topo_name]
                        )
                        report += perf_summary(path, f"{mode} {name}", cpu)
                if args.pyspy and topo_name == "fastrelay":
                    spy_out = args.pyspy / mode
                    spy_out.mkdir(parents=True, exist_ok=True)
                    progs = {p.name: p.pid for p in topo.processes}
                    paths = await pyspy_pass(topo, progs, runner, port, count, spy_out)
                    for name, path in paths.items():
                        cpu = statistics.median(
                            w.per_proc[name]["cpu_us"] * w.per_proc[name]["user_share"]
                            for w in windows[topo_name]
                        )
                        busy, leaves, funcs = summarise_pyspy(path, args.top)
                        report.append(
                            f"\n#### py-spy {mode} {name}: {busy} busy samples, "
                            f"{cpu:.1f} user-space CPU µs/op (syscall leaves left out)"
                            "\n\nself (leaf) µs/op:\n"
                        )
                        report += [f"- {n / busy * cpu:6.1f}  {f}" for f, n in leaves if busy]
                        report.append("\ninclusive µs/op (project, asyncio, picows, aiofastnet):\n")
                        report += [
                            f"- {n / busy * cpu:6.1f}  {f}" for f, n in funcs if busy and n < busy
                        ]
                        report.append("\ncandidates, inclusive µs/op:\n")
                        report += [
                            f"- {share * cpu:6.1f}  {cand}"
                            for cand, share in candidates(path).items()
                        ]
            tables.append(table(mode, windows, calls) + "\n")
            raw[mode] = {
                t: [
                    {"ops": w.ops, "wall_s": w.wall_s, "p50_s": w.p50_s, "per_proc": w.per_proc}
                    for w in ws
                ]
                for t, ws in windows.items()
            } | {
                "syscalls": {
                    t: {n: dict(v["calls"]) for n, v in c.items()} for t, c in calls.items()
                }
            }
    finally:
        for topo in topos.values():
            topo.stop()
        target.stop()
    (out / "profile.json").write_text(json.dumps(raw, indent=1))
    text = "\n".join(tables + report)
    (out / "profile.md").write_text(text + "\n")
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_hops", allow_abbrev=False)
    parser.add_argument("--mode", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument(
        "--count", type=int, default=0, help="ops per window (5000 / 2000 / 2000 MB)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=50, help="setup: opens at a time")
    parser.add_argument("--strace", action="store_true", help="a pass with strace -c -f")
    parser.add_argument("--pyspy", type=Path, help="a pass with py-spy; raw profiles here")
    parser.add_argument("--timeline", action="store_true", help="round_trip: perf syscall trace")
    parser.add_argument("--perf", action="store_true", help="perf record -g per program")
    parser.add_argument("--top", type=int, default=12, help="functions shown per program")
    parser.add_argument("--out", type=Path, default=Path("bench/results/profile-hops"))
    args = parser.parse_args(argv)
    raise_fd_limit()
    return eventloop.run_default(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
