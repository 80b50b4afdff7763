"""Probe one tunnel across a long path: its rate slice by slice, how it ramps, what bounds it.

`python -m bench.probe_ramp [--rtt-ms 50] [--direction down|up] [--bytes 256MiB]
[--slice-ms 50] [--repeats 3] [--chain-args "--max-window 64MiB"]
[--relay-args "--max-connection-buffer 128MiB"]`

Starts the target, a delay line (bench/delayline.py) and one fastrelay chain whose agent
dials the relay through the line, exactly as scenario 11 does (`python -m bench --only
long_path`), then moves `--bytes` through one fresh tunnel per repeat and prints, per
repeat:

- MB/s over the whole transfer, and the machine's idle CPU share over it (/proc/stat: a
  chain that is not CPU-bound at a long RTT is bound by its credit);
- MB/s in each `--slice-ms` slice, as the load client sees the bytes (down: received; up:
  handed to the kernel), so the ramp (the first round trip, then the window doubling) and
  any stall show;
- how many slices the ramp took to first reach 90 % of the median of the rest, and the
  median after it;
- what the three programs counted during it: senders out of credit (`flow_control_stalls`),
  receivers aiming a window higher (`window_growths`), connections paused for their write
  buffer (`backpressure_pauses`).

Scenario 11 gives one figure per transfer; this shows where within it the time goes. Used for
bench/README.md's notes on scenario 11.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.load import CHUNK, PAYLOAD, Tunnel, open_tunnel
from bench.topology import Process, Topology, chain, delay_line, scrape, start_target
from fastrelay import eventloop
from fastrelay.config import size_bytes

MB = 1_000_000
# Where a stream waits: its sender out of credit, its receiver aiming the window higher
# (or cutting it: the round trip to the relay rose),
# a whole connection paused for its write buffer.
COUNTERS = (
    "flow_control_stalls",
    "window_growths",
    "window_backoffs",
    "send_backoffs",
    "backpressure_pauses",
)


def _cpu_times() -> list[int]:
    with open("/proc/stat") as fh:
        return [int(x) for x in fh.readline().split()[1:]]


def _counters(procs: list[Process]) -> dict[str, float]:
    """COUNTERS summed per program: {"client_a window_growths": n, ...}."""
    out: dict[str, float] = {}
    for proc in procs:
        admin = proc.ready.get("admin")
        if proc.name not in ("client_a", "relay", "agent") or not admin:
            continue
        for (name, _), value in scrape(admin).items():
            short = name.removeprefix("fastrelay_").removesuffix("_total")
            if short in COUNTERS:
                key = f"{proc.name} {short}"
                out[key] = out.get(key, 0.0) + value
    return out


async def _pump(tunnel: Tunnel, n: int, sent: list[int]) -> None:
    """Tunnel.send, counting what the kernel took (sent[0])."""
    transport = tunnel.transport
    assert transport is not None
    while n > 0:
        await tunnel.can_write.wait()
        chunk = PAYLOAD if n >= CHUNK else PAYLOAD[:n]
        transport.write(chunk)
        n -= len(chunk)
        sent[0] += len(chunk)


async def one(
    topo: Topology, port: int, direction: str, n: int, slice_s: float, timeout: float
) -> dict:
    tunnel = await open_tunnel(topo, port)
    sent = [0]
    try:
        cpu0 = _cpu_times()
        start = time.perf_counter()
        if direction == "down":
            tunnel.request(b"D", n)
            done = asyncio.ensure_future(tunnel.until_received(n, timeout))

            def moved() -> int:
                return tunnel.received
        else:
            tunnel.request(b"U", n)
            done = asyncio.ensure_future(_pump(tunnel, n, sent))
            transport = tunnel.transport
            assert transport is not None

            def moved() -> int:
                return sent[0] - transport.get_write_buffer_size()

        slices: list[float] = []
        last = 0
        deadline = start + timeout
        while not done.done() and time.perf_counter() < deadline:
            await asyncio.wait({done}, timeout=slice_s)
            now = moved()
            slices.append((now - last) / slice_s / MB)
            last = now
        await done
        if direction == "up":
            await tunnel.until_received(1, max(1.0, deadline - time.perf_counter()))  # "K"
        elapsed = time.perf_counter() - start
        cpu1 = _cpu_times()
    finally:
        tunnel.close()
    spent = [b - a for a, b in zip(cpu0, cpu1, strict=True)]
    idle = (spent[3] + spent[4]) / max(1, sum(spent))
    return {"MBps": n / elapsed / MB, "idle": idle, "slices": slices[:-1]}  # last: partial


def ramp(slices: list[float]) -> tuple[int, float]:
    """(slices until the rate first reached 90 % of the median after the ramp, that median)."""
    if len(slices) < 3:
        return 0, float("nan")
    steady = statistics.median(slices[len(slices) // 2 :])
    for i, value in enumerate(slices):
        if value >= 0.9 * steady:
            return i, statistics.median(slices[i:])
    return len(slices), steady


async def main_async(args: argparse.Namespace) -> int:
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="probe-ramp-"))
    procs: list[Process] = []
    target, port = start_target(log_dir)
    procs.append(target)
    fr = None
    try:

        def agent_path(relay_listen: str) -> tuple[str, Process]:
            line = delay_line(relay_listen, args.rtt_ms, log_dir, "delayline-agent")
            procs.append(line)
            return line.ready["listen"], line

        fr = chain(
            log_dir,
            tuple(shlex.split(args.chain_args)),
            relay_args=tuple(shlex.split(args.relay_args)),
            agent_path=agent_path,
        )
        await one(fr, port, "down", 1 << 20, args.slice_ms / 1000, args.timeout)  # warm-up
        print(
            f"one tunnel, {args.direction}, {args.bytes:,} B across a {args.rtt_ms:g} ms line;"
            f" slices of {args.slice_ms:g} ms; logs in {log_dir}"
        )
        for rep in range(args.repeats):
            before = _counters(fr.processes)
            slice_s = args.slice_ms / 1000
            got = await one(fr, port, args.direction, args.bytes, slice_s, args.timeout)
            after = _counters(fr.processes)
            changed = {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k)}
            took, steady = ramp(got["slices"])
            print(
                f"repeat {rep + 1}: {got['MBps']:.0f} MB/s, idle CPU {got['idle']:.0%},"
                f" ramp {took} slices to 90 % of {steady:.0f} MB/s"
            )
            print("  counters: " + ", ".join(f"{k} +{v:g}" for k, v in sorted(changed.items())))
            print("  MB/s per slice: " + " ".join(f"{v:.0f}" for v in got["slices"]))
    finally:
        if fr is not None:
            fr.stop()
        for proc in reversed(procs):
            proc.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.probe_ramp", description=__doc__)
    parser.add_argument("--rtt-ms", type=float, default=50.0)
    parser.add_argument("--direction", choices=("down", "up"), default="down")
    parser.add_argument("--bytes", type=size_bytes, default=256 << 20)
    parser.add_argument("--slice-ms", type=float, default=50.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=60.0, help="per transfer, seconds")
    parser.add_argument("--chain-args", default="", help="options for client_a and the agent")
    parser.add_argument("--relay-args", default="", help="options for the relay")
    parser.add_argument("--log-dir", help="where the processes log (default: a new temp dir)")
    args = parser.parse_args(argv)
    if args.slice_ms <= 0 or args.repeats < 1 or args.bytes < 1:
        parser.error("--slice-ms, --repeats and --bytes must be positive")
    return eventloop.run_default(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
