"""Probe one many-tunnel download: where the bytes, the CPU and the kernel's memory go.

`python -m bench.probe_many [--tunnels 1000] [--seconds 4] [--target-sndbuf 256KiB]
[--client-args "--carriers 8"] [--ss FILE] [--pyspy PROGRAM] [--syscalls] [--out DIR]`

Starts the target and one fastrelay chain exactly as `python -m bench` does
(bench/topology.py), opens the tunnels 50 at a time, lets them all download for
`--seconds` (scenario 4's `steady_download`), and prints one line each for:

- aggregate MB/s, Jain's index over the bytes each tunnel moved, tunnels that moved nothing;
- the same by age: MB moved and tunnels that moved nothing, a tenth of the tunnels at a time
  in the order they opened;
- the kernel's TCP memory: peak pages against the `tcp_mem` pressure mark, and how often the
  stack entered pressure;
- per program, seconds on a CPU and seconds runnable but waiting for one
  (/proc/PID/schedstat), and times scheduled in;
- every program's `/metrics` lines that show where bytes wait (`ws_write_buffer_bytes`,
  stalls, pauses, window growths and cuts).

`--ss FILE` saves `ss -tmni` halfway through (per-socket queues, windows, drops) with a summary
by address pair; `--pyspy PROGRAM` records that program with py-spy for the window and prints
its hottest lines (root needed); `--syscalls` counts every program's data and poll system calls
for the window with `perf stat` (root needed) and prints them per MB moved, with the bytes each
read and write carried on average. Used for bench/README.md's notes on scenario 4.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from bench.load import open_tunnel
from bench.scenarios.common import jain
from bench.scenarios.heavy import TcpMemorySampler, steady_download
from bench.topology import chain, raise_fd_limit, start_target
from fastrelay import eventloop
from fastrelay.config import size_bytes

PY_SPY = str(Path(sys.executable).parent / "py-spy")
WATCHED = re.compile(r"ws_write_buffer|stalls_total|pauses_total|growths_total|backoffs_total")
# The system calls `--syscalls` counts: how each program reads and writes its sockets
# (uvloop's streams read with read(), aiofastnet's with recvfrom(); picows sends with send(),
# aiofastnet's queued writes go out with sendmsg()) and how it polls.
READS = ("read", "readv", "recvfrom", "recvmsg")
WRITES = ("write", "writev", "sendto", "sendmsg")
POLLS = ("epoll_pwait", "epoll_wait", "epoll_ctl")
SYSCALLS = READS + WRITES + POLLS


def schedstat(pid: int) -> tuple[int, int, int]:
    fields = Path(f"/proc/{pid}/schedstat").read_text().split()
    return int(fields[0]), int(fields[1]), int(fields[2])


def summarize_ss(text: str, relay_port: int = 0) -> list[str]:
    """Receive queue, send queue, drops and retransmitted share of every socket, summed
    by address pair; the carriers (either end on `relay_port`) on a line of their own,
    because one of them stalling stalls every tunnel it carries."""
    sums: dict[tuple[str, str], list[int]] = collections.defaultdict(lambda: [0] * 6)
    pair: tuple[str, str] | None = None
    for line in text.splitlines():
        head = re.match(r"^\S+\s+\d+\s+\d+\s+(\S+):(\d+)\s+(\S+):(\d+)", line)
        if head:
            carrier = relay_port and relay_port in (int(head.group(2)), int(head.group(4)))
            pair = ("carriers", f"port {relay_port}") if carrier else (head[1], head[3])
            continue
        mem = re.search(r"skmem:\(r(\d+),rb\d+,t\d+,tb\d+,f\d+,w(\d+),o\d+,bl\d+,d(\d+)", line)
        if mem and pair is not None:
            row = sums[pair]
            row[0] += int(mem.group(1))
            row[1] += int(mem.group(2))
            row[2] += int(mem.group(3))
            row[3] += 1
            for i, key in ((4, "bytes_sent"), (5, "bytes_retrans")):
                found = re.search(rf"\b{key}:(\d+)", line)
                row[i] += int(found.group(1)) if found else 0
            pair = None
    return [
        f"  {local} -> {remote}: {n} sockets, receive queues {r / 1e6:.1f} MB, "
        f"send queues {w / 1e6:.1f} MB, drops {d}, "
        f"retransmitted {retrans / sent if sent else 0:.1%} of {sent / 1e6:.0f} MB sent"
        for (local, remote), (r, w, d, n, sent, retrans) in sorted(
            sums.items(), key=lambda kv: -kv[1][0] - kv[1][1]
        )
    ]


def hottest(raw: Path, top: int = 15) -> list[str]:
    """py-spy's raw format: the lines with the most samples at the top of the stack."""
    leaf: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        total += int(count)
        leaf[stack.split(";")[-1]] += int(count)
    return [f"  {100 * n / max(1, total):5.1f} % {name}" for name, n in leaf.most_common(top)]


def count_syscalls(pid: int, path: Path) -> subprocess.Popen[bytes]:
    """`perf stat` counting SYSCALLS entered by `pid` (all its threads) until SIGINT."""
    events = ",".join(f"syscalls:sys_enter_{name}" for name in SYSCALLS)
    return subprocess.Popen(
        ["perf", "stat", "-x", ",", "-e", events, "-p", str(pid), "-o", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def parse_perf_stat(text: str) -> dict[str, int]:
    """`perf stat -x ,` output: count by system call name (`<not counted>` as 0)."""
    counts: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split(",")
        if len(fields) < 3 or not fields[2].startswith("syscalls:sys_enter_"):
            continue
        name = fields[2].removeprefix("syscalls:sys_enter_")
        counts[name] = int(fields[0]) if fields[0].isdigit() else 0
    return counts


def syscall_line(name: str, counts: dict[str, int], moved: int) -> str:
    """One program's calls per MB moved; reads and writes also as KB per call (every
    program reads and writes each byte once, so `moved` is each one's traffic)."""
    mb = max(moved, 1) / 1e6
    reads = sum(counts.get(c, 0) for c in READS)
    writes = sum(counts.get(c, 0) for c in WRITES)
    detail = ", ".join(f"{c} {counts[c] / mb:.1f}" for c in SYSCALLS if counts.get(c))
    return (
        f"  {name}: reads {reads / mb:.1f} / MB ({moved / 1e3 / max(reads, 1):.1f} KB each), "
        f"writes {writes / mb:.1f} / MB ({moved / 1e3 / max(writes, 1):.1f} KB each); {detail}"
    )


async def probe(args: argparse.Namespace) -> None:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    target, port = start_target(out, args.target_sndbuf)
    topo = None
    try:
        topo = chain(out, client_args=tuple(shlex.split(args.client_args)))
        tunnels = []
        while len(tunnels) < args.tunnels:
            batch = min(50, args.tunnels - len(tunnels))
            tunnels += await asyncio.gather(*(open_tunnel(topo, port) for _ in range(batch)))
        procs = {p.name: p for p in topo.processes}
        before = {name: schedstat(p.pid) for name, p in procs.items()}
        spy = None
        if args.pyspy:
            spy = subprocess.Popen(
                [PY_SPY, "record", "-p", str(procs[args.pyspy].pid), "-d",
                 str(max(1, int(args.seconds))), "-r", "500", "-f", "raw",
                 "-o", str(out / f"{args.pyspy}.pyspy.txt")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip

        async def snapshot() -> None:
            await asyncio.sleep(args.seconds / 2)
            ss = subprocess.run(["ss", "-tmniH"], capture_output=True, text=True, check=False)
            args.ss.write_text(ss.stdout)

        snap = asyncio.ensure_future(snapshot()) if args.ss else None
        counted = {name: p.pid for name, p in procs.items()}
        counted.update({"target": target.pid, "load client": os.getpid()})
        counters = {
            name: count_syscalls(pid, out / f"{name.replace(' ', '_')}.perfstat.txt")
            for name, pid in (counted.items() if args.syscalls else ())
        }
        if counters:
            await asyncio.sleep(0.5)  # perf attaches before the window opens
        start = time.perf_counter()
        try:
            with TcpMemorySampler() as tcp:
                elapsed, moved = await steady_download(tunnels, args.seconds)
            wall = time.perf_counter() - start
            after = {name: schedstat(p.pid) for name, p in procs.items()}
        finally:
            for counter in counters.values():
                counter.send_signal(signal.SIGINT)
            for counter in counters.values():
                counter.wait(timeout=30)
        if snap is not None:
            await snap
        metrics = {
            name: urllib.request.urlopen(f"http://{p.ready['admin']}/metrics", timeout=10)
            .read()
            .decode()
            for name, p in procs.items()
        }
        for t in tunnels:
            t.close()
        if spy is not None:
            spy.wait(timeout=60)
        print(
            f"{args.tunnels} tunnels for {elapsed:.1f} s: {sum(moved) / elapsed / 1e6:.0f} MB/s, "
            f"Jain {jain([float(m) for m in moved]):.3f}, {sum(1 for m in moved if not m)} moved "
            f"nothing"
        )
        step = max(1, len(moved) // 10)
        tenths = [moved[i : i + step] for i in range(0, len(moved), step)]
        print(  # fairness by age: a tenth of the tunnels at a time, in the order they opened
            "by opening order, tenths: MB moved "
            + " ".join(f"{sum(t) / 1e6:.0f}" for t in tenths)
            + "; moved nothing "
            + " ".join(str(sum(1 for m in t if not m)) for t in tenths)
        )
        print(
            f"kernel TCP memory: peak {tcp.peak:,} pages, pressure mark {tcp.pressure_mark:,}, "
            f"entered pressure {tcp.pressures} times"
        )
        for name in procs:
            cpu, wait, slices = (a - b for a, b in zip(after[name], before[name], strict=True))
            print(
                f"{name}: {cpu / 1e9:.2f} s on CPU, {wait / 1e9:.2f} s waiting for one, "
                f"{slices} times scheduled, over {wall:.1f} s"
            )
            for line in metrics[name].splitlines():
                if WATCHED.search(line) and not line.startswith("#"):
                    print(f"  {line}")
        if args.ss:
            print(f"ss -tmni halfway ({args.ss}), by address pair:")
            relay_port = int(procs["relay"].ready["listen"].rsplit(":", 1)[1])
            print("\n".join(summarize_ss(args.ss.read_text(), relay_port)))
        if counters:
            print("system calls in the window, per MB moved:")
            for name in counters:
                path = out / f"{name.replace(' ', '_')}.perfstat.txt"
                print(syscall_line(name, parse_perf_stat(path.read_text()), sum(moved)))
        if args.pyspy:
            print(f"py-spy, {args.pyspy}, hottest lines:")
            print("\n".join(hottest(out / f"{args.pyspy}.pyspy.txt")))
    finally:
        if topo is not None:
            topo.stop()
        target.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.probe_many", allow_abbrev=False)
    parser.add_argument("--tunnels", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--target-sndbuf", type=size_bytes, default=0)
    parser.add_argument("--client-args", default="", help="extra options for client_a only")
    parser.add_argument("--ss", type=Path, help="save `ss -tmni` halfway to this file")
    parser.add_argument("--pyspy", choices=("relay", "agent", "client_a"))
    parser.add_argument(
        "--syscalls", action="store_true", help="count each program's system calls (perf stat)"
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/probe-many"))
    args = parser.parse_args(argv)
    raise_fd_limit()
    eventloop.run_default(probe(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
