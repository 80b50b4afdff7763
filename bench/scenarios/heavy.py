"""Scenarios 4-7: many active tunnels, many idle tunnels, head-of-line
isolation, and small frames through the relay."""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from bench.load import REQUEST, Tunnel, open_tunnel
from bench.muxclient import MuxClient
from bench.scenarios.common import Context, jain
from bench.topology import TARGET_HOST, Process, Topology
from fastrelay.protocol.frames import FLAG_BLOCKED, FrameType, encode_frame

MB = 1_000_000
OPEN_PARALLEL = 200


async def open_many(topo: Topology, port: int, n: int) -> list[Tunnel]:
    gate = asyncio.Semaphore(OPEN_PARALLEL)

    async def one() -> Tunnel:
        async with gate:
            return await open_tunnel(topo, port)

    return list(await asyncio.gather(*(one() for _ in range(n))))


class RssSampler:
    """The peak RSS of each process while a scenario runs, sampled every 50 ms."""

    def __init__(self, processes: list[Process]) -> None:
        self.processes = processes
        self.peak = {p.name: p.rss_kib() for p in processes}
        self.task: asyncio.Task[None] | None = None

    async def _loop(self) -> None:
        while True:
            for p in self.processes:
                self.peak[p.name] = max(self.peak[p.name], p.rss_kib())
            await asyncio.sleep(0.05)

    def __enter__(self) -> RssSampler:
        self.task = asyncio.get_running_loop().create_task(self._loop())
        return self

    def __exit__(self, *exc: object) -> None:
        if self.task is not None:
            self.task.cancel()


def tcp_memory_pages() -> int:
    """Pages of memory the kernel's TCP stack holds now (/proc/net/sockstat)."""
    with open("/proc/net/sockstat") as fh:
        for line in fh:
            if line.startswith("TCP:"):
                fields = line.split()
                return int(fields[fields.index("mem") + 1])
    return 0


def tcp_memory_pressures() -> int:
    """How many times the kernel's TCP stack has entered memory pressure
    (TcpExt TCPMemoryPressures in /proc/net/netstat)."""
    with open("/proc/net/netstat") as fh:
        lines = fh.read().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return int(table.get("TCPMemoryPressures", 0))
    return 0


class TcpMemorySampler:
    """The kernel's TCP memory while a scenario runs: the peak of what the stack
    held (sampled every 50 ms), the pressure mark from tcp_mem, and how many
    times the stack entered pressure. Under pressure the kernel shrinks every
    socket's window on the host, the WebSockets' included."""

    def __init__(self) -> None:
        self.peak = tcp_memory_pages()
        self.pressure_mark = int(Path("/proc/sys/net/ipv4/tcp_mem").read_text().split()[1])
        self.pressures_before = tcp_memory_pressures()
        self.pressures = 0
        self.task: asyncio.Task[None] | None = None

    async def _loop(self) -> None:
        while True:
            self.peak = max(self.peak, tcp_memory_pages())
            await asyncio.sleep(0.05)

    def __enter__(self) -> TcpMemorySampler:
        self.task = asyncio.get_running_loop().create_task(self._loop())
        return self

    def __exit__(self, *exc: object) -> None:
        if self.task is not None:
            self.task.cancel()
        self.pressures = tcp_memory_pressures() - self.pressures_before


async def download_all(tunnels: list[Tunnel], each: int) -> tuple[float, list[float]]:
    """All tunnels download `each` bytes at once; (wall seconds, per-tunnel MB/s)."""
    start = time.perf_counter()

    async def one(t: Tunnel) -> float:
        t.request(b"D", each)
        await t.until_received(each)
        return each / (time.perf_counter() - start) / MB

    rates = await asyncio.gather(*(one(t) for t in tunnels))
    return time.perf_counter() - start, list(rates)


async def steady_download(
    tunnels: list[Tunnel], seconds: float, mode: bytes = b"D"
) -> tuple[float, list[int]]:
    """Every tunnel downloads without end for `seconds`: (elapsed, bytes per tunnel).
    `mode`: b"D", or b"B" for a target send buffer of fixed size (bench/target.py).

    Fairness is judged on bytes moved in the same interval, which is what a
    user of a busy relay sees, rather than on finishing times.
    """
    for t in tunnels:
        t.request(mode, 1 << 50)
    await asyncio.sleep(0.2)  # past the start-up burst
    start_bytes = [t.received for t in tunnels]
    start = time.perf_counter()
    await asyncio.sleep(seconds)
    elapsed = time.perf_counter() - start
    return elapsed, [t.received - b for t, b in zip(tunnels, start_bytes, strict=True)]


async def many_active(ctx: Context, topo: Topology) -> dict:
    """4. 10, 100 and 1,000 concurrent tunnels, each moving data.

    The target sends every download through a send buffer of fixed size (b"B"): a real
    target's send queue sits in its own host's kernel, while the bench target's, autotuned
    towards 4 MiB each, put ~1.5 GB of this host's TCP memory in front of 1,000 tunnels and
    the host into TCP memory pressure, which then squeezes the chain's carriers (bench/README.md,
    scenario 4, fourth look). The largest size runs once more with them autotuned (b"D", as
    every run before 2026-11-30 measured it; `autotuned_` keys), so both stay on record.
    """
    out: dict = {}
    sizes = ctx.sizes["active_tunnels"]
    runs = [(n, b"B", "") for n in sizes] + [(sizes[-1], b"D", "autotuned_")]
    for n, mode, key in runs:
        tunnels = await open_many(topo, ctx.target_port, n)
        with RssSampler(topo.processes) as rss, TcpMemorySampler() as tcp:
            elapsed, moved = await steady_download(tunnels, ctx.sizes["active_seconds"], mode)
        for t in tunnels:
            t.close()
        out[f"{key}aggregate_MBps_{n}"] = sum(moved) / elapsed / MB
        out[f"{key}jain_{n}"] = jain([float(m) for m in moved])
        out[f"{key}tcp_mem_peak_pages_{n}"] = tcp.peak
        out[f"{key}tcp_mem_pressure_mark_pages_{n}"] = tcp.pressure_mark
        out[f"{key}tcp_memory_pressures_{n}"] = tcp.pressures
        for name, kib in rss.peak.items():
            out[f"{key}peak_rss_MiB_{name}_{n}"] = kib / 1024
        await asyncio.sleep(1.0)  # let the closes settle before the next size
    return out


async def many_idle(ctx: Context, topo: Topology) -> dict:
    """5. N open, idle tunnels: RSS growth per tunnel in each process."""
    n = ctx.sizes["idle_tunnels"]
    await asyncio.sleep(0.5)
    before = {p.name: p.rss_kib() for p in topo.processes}
    tunnels = await open_many(topo, ctx.target_port, n)
    for t in tunnels:  # one byte through each, so every hop holds its state
        t.request(b"E")
        t.transport.write(b"x")  # type: ignore[union-attr]
    await asyncio.gather(*(t.until_received(1, timeout=60) for t in tunnels))
    await asyncio.sleep(1.0)
    after = {p.name: p.rss_kib() for p in topo.processes}
    for t in tunnels:
        t.close()
    await asyncio.sleep(1.0)
    out: dict = {"tunnels": n}
    for name in before:
        out[f"bytes_per_tunnel_{name}"] = (after[name] - before[name]) * 1024 / n
    return out


async def head_of_line(ctx: Context, topo: Topology) -> dict:
    """6. One tunnel whose reader stops, beside 9 busy tunnels on the same carrier.

    The 9 download alone before and after the phase with the stalled tunnel, and the phase
    is judged against the mean of the two (as scenario 10 brackets its phases), so that the
    host drifting between two back-to-back measurements does not read as the stall's cost.
    """
    each = ctx.sizes["hol_bytes_per_tunnel"]
    relay = next(p for p in topo.processes if p.name == "relay")

    async def alone() -> float:
        busy = await open_many(topo, ctx.target_port, 9)
        wall, _ = await download_all(busy, each)
        for t in busy:
            t.close()
        return wall

    before_wall = await alone()
    stalled = await open_tunnel(topo, ctx.target_port)
    stalled.transport.pause_reading()  # type: ignore[union-attr]
    stalled.request(b"D", 1 << 40)  # far more than any window: it fills and stops
    await asyncio.sleep(1.0)
    relay_before = relay.rss_kib()
    busy = await open_many(topo, ctx.target_port, 9)
    with RssSampler([relay]) as rss:
        stalled_wall, _ = await download_all(busy, each)
    for t in [*busy, stalled]:
        t.close()
    await asyncio.sleep(0.5)
    after_wall = await alone()
    alone_MBps = (9 * each / before_wall + 9 * each / after_wall) / 2 / MB
    with_stalled_MBps = 9 * each / stalled_wall / MB
    return {
        "busy_MBps_alone": alone_MBps,
        "busy_MBps_alone_before": 9 * each / before_wall / MB,
        "busy_MBps_alone_after": 9 * each / after_wall / MB,
        "busy_MBps_with_stalled": with_stalled_MBps,
        "busy_throughput_kept": with_stalled_MBps / alone_MBps,
        "relay_rss_growth_MiB": (rss.peak["relay"] - relay_before) / 1024,
        "bound_MiB": 2 * 1 * 10,  # 2 x window (1 MiB) x streams
    }


def relay_frames(relay: Process) -> float:
    admin = relay.ready["admin"]
    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name == "fastrelay_stream_frames":
            total += sum(s.value for s in family.samples if s.name.endswith("_total"))
    return total


async def small_frames(ctx: Context, topo: Topology) -> dict:
    """7. 100-byte frames through the relay: streamed, and as ping-pong.

    Streamed: the runner speaks the mux protocol to the relay as a client_a
    would when many browsers send small messages at once, 64 frames of 100
    bytes per WebSocket message, within the agent's credit, into an upload to
    the target. Ping-pong: 100-byte echoes on 64 tunnels through client_a, one
    frame per message, the latency-bound case."""
    relay = next(p for p in topo.processes if p.name == "relay")
    out = await stream_small_frames(ctx, topo, relay)
    out.update(await ping_pong_small_frames(ctx, topo, relay))
    return out


async def stream_small_frames(ctx: Context, topo: Topology, relay: Process) -> dict:
    client = await MuxClient.connect(f"ws://{relay.ready['listen']}/v1/client", topo.client_token)
    try:
        sid = client.hello.stream_id_base + 1
        window = await client.open(sid, TARGET_HOST, ctx.target_port)
        client.credit = window
        client.send(encode_frame(FrameType.TUNNEL_DATA, sid, REQUEST.pack(b"U", 1 << 50)))
        client.credit -= REQUEST.size
        message = encode_frame(FrameType.TUNNEL_DATA, sid, b"m" * 100) * 64
        per_message = 64 * 100
        frames0, cpu0, t0 = relay_frames(relay), relay.cpu_seconds(), time.perf_counter()
        stop = t0 + ctx.sizes["small_frames_seconds"]
        blocked = False  # sent BLOCKED and no credit came since
        while time.perf_counter() < stop:
            if client.credit < per_message and client.writable.is_set() and not blocked:
                # A sender with more to send than its credit uses the credit to the last byte
                # and marks that frame BLOCKED (docs/PROTOCOL.md, "Flags"): the receiver may
                # hold up to a quarter window of credit until then, and the stream would stall.
                client.send(blocked_tail(sid, client.credit))
                client.credit, blocked = 0, True
            if client.credit < per_message or not client.writable.is_set():
                await client.wait_for_room(per_message)
                blocked = blocked and client.credit == 0
                continue
            client.send(message)
            client.credit -= per_message
        elapsed = time.perf_counter() - t0
        frames, cpu = relay_frames(relay) - frames0, relay.cpu_seconds() - cpu0
    finally:
        client.close()
    return {
        "relay_frames_per_s": frames / elapsed,
        "relay_cpu_us_per_frame": cpu / frames * 1e6 if frames else float("nan"),
        "relay_capacity_frames_per_s": frames / cpu if cpu else float("nan"),
    }


def blocked_tail(sid: int, credit: int) -> bytes:
    """`credit` bytes of data as 100-byte frames and a shorter last one, that last
    one flagged BLOCKED (an empty one when there is no credit left)."""
    full, rest = divmod(credit, 100)
    sizes = [100] * full + ([rest] if rest or not full else [])
    last = len(sizes) - 1
    return b"".join(
        encode_frame(FrameType.TUNNEL_DATA, sid, b"m" * n, FLAG_BLOCKED if i == last else 0)
        for i, n in enumerate(sizes)
    )


async def ping_pong_small_frames(ctx: Context, topo: Topology, relay: Process) -> dict:
    tunnels = await open_many(topo, ctx.target_port, 64)
    for t in tunnels:
        t.request(b"E")
    stop = time.perf_counter() + ctx.sizes["small_frames_seconds"]

    async def ping_pong(t: Tunnel) -> None:
        got = 0
        while time.perf_counter() < stop:
            t.transport.write(b"m" * 100)  # type: ignore[union-attr]
            got += 100
            await t.until_received(got, timeout=30)

    frames0, cpu0, t0 = relay_frames(relay), relay.cpu_seconds(), time.perf_counter()
    await asyncio.gather(*(ping_pong(t) for t in tunnels))
    elapsed = time.perf_counter() - t0
    frames, cpu = relay_frames(relay) - frames0, relay.cpu_seconds() - cpu0
    for t in tunnels:
        with contextlib.suppress(Exception):
            t.close()
    return {
        "pingpong_frames_per_s": frames / elapsed,
        "pingpong_relay_cpu_us_per_frame": cpu / frames * 1e6 if frames else float("nan"),
    }
