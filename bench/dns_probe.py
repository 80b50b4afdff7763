"""The agent's name look-ups: what stalled names cost the others, what a look-up costs, and
what c-ares keeps (docs/OPERATIONS.md, "Name look-ups").

Every part runs against tests/support/dns_server.py on loopback, where names under
stall.test never get an answer:

- ``stall``: how long a good name takes to resolve behind N look-ups that never end, for
  c-ares (fastrelay/resolver.py) in this process; with ``--system`` also for getaddrinfo, which
  reads /etc/resolv.conf, so that part re-runs this script in a mount and network namespace of
  its own (root, ``unshare -mn``) where resolv.conf names the test server on 127.0.0.1:53.
- ``cost``: process CPU per resolve: the agent's cache, c-ares answering from its own cache,
  a c-ares query (TTL 0), and getaddrinfo for localhost (the hosts file).
- ``memory``: malloc'd bytes kept per distinct name after many look-ups with a one-hour TTL,
  with the channel replaced every 10,000 queries (the agent's) and never.

    .venv/bin/python -m bench.dns_probe [--system] [--stalled 1,2,4,8,50] [--names 40000]

``make bench-quick`` runs it at small sizes (``--stalled 2 --names 2000 --rotate-after 500``).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support.dns_server import DnsServer  # noqa: E402

from fastrelay import eventloop  # noqa: E402
from fastrelay.resolver import (  # noqa: E402
    ROTATE_AFTER,
    CaresResolver,
    LookupFailure,
    SystemResolver,
)

GOOD = {"good.test": ["192.0.2.1"]}


class _AnyName(dict[str, list[str]]):
    """Every name resolves (a distinct-name flood without a table of them)."""

    def __contains__(self, name: object) -> bool:
        return True

    def __getitem__(self, name: str) -> list[str]:
        return ["192.0.2.1"]


async def _serve(server: DnsServer, port: int = 0) -> tuple[str, asyncio.BaseTransport]:
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: server, local_addr=("127.0.0.1", port)
    )
    return f"127.0.0.1:{transport.get_extra_info('sockname')[1]}", transport


async def _good_behind(resolve, stalled: int, bound: float = 60.0) -> str:  # type: ignore[no-untyped-def]
    waiting = [asyncio.ensure_future(resolve(f"n{i}.stall.test")) for i in range(stalled)]
    await asyncio.sleep(0.2)
    started = time.perf_counter()
    try:
        await asyncio.wait_for(resolve("good.test"), bound)
        return f"{(time.perf_counter() - started) * 1000:.1f} ms"
    except TimeoutError:
        return f"over {bound:.0f} s"
    finally:
        for w in waiting:
            w.cancel()


async def stall(counts: list[int], system: bool) -> None:
    server = DnsServer(GOOD, stall=["stall.test"])
    if system:  # in the namespace: resolv.conf names 127.0.0.1:53
        _, transport = await _serve(server, 53)
        resolver: SystemResolver | CaresResolver = SystemResolver()
    else:
        address, transport = await _serve(server)
        resolver = CaresResolver([address], timeout=30, tries=1)
    name = "getaddrinfo (libuv's pool)" if system else "c-ares on the loop"
    for n in counts:
        took = await _good_behind(resolver.resolve, n)
        print(f"stall  {name:28} good name behind {n:3} stalled: {took}", flush=True)
    await resolver.close()
    transport.close()
    if system:
        os._exit(0)  # the stalled getaddrinfo threads never end by themselves


def _cpu_per(count: int, started: float) -> str:
    return f"{(time.process_time() - started) / count * 1e6:.1f} µs"


async def cost(count: int = 3000) -> None:
    for ttl, cache, label in ((3600, 10, "agent's cache hit"), (3600, 0, "c-ares cache hit")):
        server = DnsServer(GOOD, ttl=ttl)
        address, transport = await _serve(server)
        resolver = CaresResolver([address], cache_names=cache)
        await resolver.resolve("good.test")
        started = time.process_time()
        for _ in range(count):
            await resolver.resolve("good.test")
        print(f"cost   {label:28} CPU per resolve: {_cpu_per(count, started)}")
        await resolver.close()
        transport.close()
    server = DnsServer(GOOD, ttl=0)
    address, transport = await _serve(server)
    resolver = CaresResolver([address], cache_names=0)
    started = time.process_time()
    for _ in range(count // 3):
        await resolver.resolve("good.test")
    print(
        f"cost   {'c-ares query (TTL 0)':28} CPU per resolve: {_cpu_per(count // 3, started)}"
        " (the test server's share included)"
    )
    await resolver.close()
    transport.close()
    system = SystemResolver()
    try:
        await system.resolve("localhost")
        started = time.process_time()
        for _ in range(count):
            await system.resolve("localhost")
        print(f"cost   {'getaddrinfo localhost':28} CPU per resolve: {_cpu_per(count, started)}")
    except LookupFailure as exc:
        print(f"cost   getaddrinfo localhost: {exc}")


_MALLINFO2 = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in _MALLINFO2.split(" ")]


def _malloced() -> int:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    return int(libc.mallinfo2().uordblks)


async def memory(names: int, rotate_after: int) -> None:
    for rotate, label in (
        (rotate_after, f"replaced every {rotate_after:,}"),
        (10**9, "never replaced"),
    ):
        server = DnsServer({}, ttl=3600)
        server.table = _AnyName()
        server.questions = _NoCount()  # type: ignore[assignment]
        address, transport = await _serve(server)
        resolver = CaresResolver([address], cache_names=0, rotate_after=rotate)
        for i in range(100):
            await resolver.resolve(f"warm{i}.test")
        gc.collect()
        before = _malloced()
        # 100 at a time: a burst of more overflows the test server's socket (it answers in
        # Python), and each lost question waits for c-ares' retry.
        for start in range(0, names, 100):
            await asyncio.gather(
                *(resolver.resolve(f"n{i}.flood.test") for i in range(start, start + 100))
            )
        gc.collect()
        kept = (_malloced() - before) / names
        print(f"memory channel {label:22} kept per distinct name: {kept / 1024:.3f} KiB")
        await resolver.close()
        transport.close()


class _NoCount:
    def __getitem__(self, name: str) -> int:
        return 0

    def __setitem__(self, name: str, value: int) -> None:
        pass


def _system_in_namespace(counts: list[int]) -> None:
    """Each count in a fresh process: a getaddrinfo thread stays blocked after its caller has
    given up, so the stalls of one count would still hold the pool during the next."""
    with tempfile.TemporaryDirectory() as scratch:
        conf = Path(scratch) / "resolv.conf"
        conf.write_text("nameserver 127.0.0.1\noptions timeout:5 attempts:2\n")
        for n in counts:
            inner = (
                f"ip link set lo up && mount --bind {conf} /etc/resolv.conf && "
                f"exec {sys.executable} -m bench.dns_probe --in-namespace --stalled {n}"
            )
            done = subprocess.run(["unshare", "-mn", "sh", "-c", inner], cwd=ROOT, timeout=600)
            if done.returncode:
                print(f"stall  getaddrinfo: could not run in a namespace (exit {done.returncode})")
                return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stalled", default="1,2,4,8,50", help="stalled look-ups, comma-separated")
    parser.add_argument("--system", action="store_true", help="getaddrinfo too (root: unshare)")
    parser.add_argument("--names", type=int, default=40_000, help="distinct names (memory)")
    parser.add_argument(
        "--rotate-after", type=int, default=ROTATE_AFTER, help="queries per channel (memory)"
    )
    parser.add_argument("--in-namespace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    counts = [int(n) for n in args.stalled.split(",")]
    if args.in_namespace:
        eventloop.run(stall(counts, system=True))
        return
    eventloop.run(stall(counts, system=False))
    if args.system:
        _system_in_namespace([n for n in counts if n <= 8])
    eventloop.run(cost())
    eventloop.run(memory(args.names, args.rotate_after))


if __name__ == "__main__":
    main()
