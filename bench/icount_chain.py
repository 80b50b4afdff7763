"""CPU instructions per round trip, or per open, of one program of the real chain, under
callgrind.

    PYTHONPATH=$PWD .venv/bin/python -m bench.icount_chain client [--count 2000] [--size 100]
    PYTHONPATH=$PWD .venv/bin/python -m bench.icount_chain client --opens [--count 500]

Starts the target and the chain as `python -m bench` does (bench/topology.py), with the
chosen program (`relay`, `agent` or `client`) under `valgrind --tool=callgrind`, opens one
tunnel, warms it up with 100 round trips, zeroes the program's counters
(`callgrind_control -z`), runs `--count` round trips of `--size` bytes one at a time, and
dumps the counters (`callgrind_control -d`): the instructions that program spent, divided
by the round trips. Unlike bench.icount's socket-free rigs this is the whole program (uvloop,
aiofastnet, picows, the event loop's dispatch) on real sockets; like it, the count hardly
moves with whatever else runs on the machine (two runs of the same code: within 0.3 %).
Kernel time is not counted. `--keep DIR` keeps the callgrind file for callgrind_annotate.

`--tunnels N` spreads the round trips over N open tunnels in turn (still one message in
flight): client_a spreads tunnels over its carriers (two by default), so the programs then
take messages from more than one WebSocket, as a browser with several connections makes
them.

`--opens` counts whole tunnels instead, one at a time: CONNECT and its 200, one `--size`
exchange (64 B by default there), close (50 unmeasured first). It is the per-open cost of
scenario 3 without its concurrency (50 opens in flight batch some frames there), so it
moves only with the code.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import bench.topology as topology
from bench.load import open_tunnel

PROGRAMS = ("relay", "agent", "client")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("program", choices=PROGRAMS)
    parser.add_argument("--count", type=int, help="round trips (2000) or opens (500) counted")
    parser.add_argument("--size", type=int, help="bytes per message (100; 64 with --opens)")
    parser.add_argument("--opens", action="store_true", help="count whole tunnels, not messages")
    parser.add_argument(
        "--tunnels", type=int, default=1, help="round trips taken in turn over this many tunnels"
    )
    parser.add_argument("--keep", type=Path, help="copy the callgrind file here")
    args = parser.parse_args(argv)
    count = args.count or (500 if args.opens else 2000)
    size = args.size or (64 if args.opens else 100)
    if count < 1 or size < 1 or args.tunnels < 1:
        parser.error("--count, --size and --tunnels must be positive")
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("valgrind (callgrind) is needed", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        total = asyncio.run(measure(args.program, count, size, out, args.opens, args.tunnels))
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            for part in Path(tmp).glob("callgrind.out*"):
                shutil.copy(part, args.keep / part.name)
    if args.opens:
        print(
            f"{args.program}: {total / count:,.0f} instructions per open "
            f"({count} tunnels one at a time: CONNECT, one {size} B exchange, close)"
        )
    else:
        print(
            f"{args.program}: {total / count:,.0f} instructions per round trip "
            f"({count} round trips of {size} B"
            + (f" over {args.tunnels} tunnels)" if args.tunnels > 1 else ")")
        )
    return 0


async def measure(
    program: str, count: int, size: int, out: Path, opens: bool = False, tunnels: int = 1
) -> int:
    spawn = topology.spawn_ready
    pids: list[int] = []

    def under_callgrind(argv: list[str], env: Any = None, **kwargs: Any) -> Any:
        if argv[1:4] == ["-m", "fastrelay", program]:
            argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *argv]
            kwargs["timeout"] = 300  # a Python start under valgrind is slow
            popen, ready = spawn(argv, env, **kwargs)
            pids.append(popen.pid)
            return popen, ready
        return spawn(argv, env, **kwargs)

    topology.spawn_ready = under_callgrind
    log_dir = Path(tempfile.mkdtemp(prefix="icount-chain-"))
    target, port = topology.start_target(log_dir)
    chain = None
    try:
        chain = topology.chain(log_dir)
        control = ["callgrind_control", "-z", str(pids[0])]
        if opens:

            async def tunnels(n: int) -> None:
                for _ in range(n):
                    one = await open_tunnel(chain, port, timeout=60)
                    one.request(b"E")
                    await one.send(size)
                    await one.until_received(size, timeout=60)
                    one.close()
                    await asyncio.wait_for(one.closed, 60)

            await tunnels(50)
            subprocess.run(control, check=True, capture_output=True)
            await tunnels(count)
        else:
            opened = [await open_tunnel(chain, port) for _ in range(tunnels)]
            for tunnel in opened:
                tunnel.request(b"E")
            expected = [0] * tunnels

            async def round_trips(n: int) -> None:
                for i in range(n):
                    k = i % tunnels
                    await opened[k].send(size)
                    expected[k] += size
                    await opened[k].until_received(expected[k], timeout=60)

            await round_trips(100 * tunnels)
            subprocess.run(control, check=True, capture_output=True)
            await round_trips(count)
            for tunnel in opened:
                tunnel.close()
        control[1] = "-d"
        subprocess.run(control, check=True, capture_output=True)
    finally:
        topology.spawn_ready = spawn
        if chain is not None:
            chain.stop()
        target.stop()
    dump = out.with_name(out.name + ".1")  # the first dump: the counted window only
    found = re.search(r"^summary:\s*(\d+)", dump.read_text(), re.MULTILINE)
    if found is None:
        raise RuntimeError(f"no summary in {dump}")
    return int(found.group(1))


if __name__ == "__main__":
    sys.exit(main())
