"""CPU instructions per round trip of one program of the real chain, under callgrind.

    PYTHONPATH=$PWD .venv/bin/python -m bench.icount_chain client [--count 2000] [--size 100]

Starts the target and the chain as `python -m bench` does (bench/topology.py), with the
chosen program (`relay`, `agent` or `client`) under `valgrind --tool=callgrind`, opens one
tunnel, warms it up with 100 round trips, zeroes the program's counters
(`callgrind_control -z`), runs `--count` round trips of `--size` bytes one at a time, and
dumps the counters (`callgrind_control -d`): the instructions that program spent, divided
by the round trips. Unlike bench.icount's socket-free rigs this is the whole program (uvloop,
aiofastnet, picows, the event loop's dispatch) on real sockets; like it, the count hardly
moves with whatever else runs on the machine (two runs of the same code: within 0.3 %).
Kernel time is not counted. `--keep DIR` keeps the callgrind file for callgrind_annotate.
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
    parser.add_argument("--count", type=int, default=2000, help="round trips counted")
    parser.add_argument("--size", type=int, default=100, help="bytes per message")
    parser.add_argument("--keep", type=Path, help="copy the callgrind file here")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("valgrind (callgrind) is needed", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        total = asyncio.run(measure(args.program, args.count, args.size, out))
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            for part in Path(tmp).glob("callgrind.out*"):
                shutil.copy(part, args.keep / part.name)
    print(
        f"{args.program}: {total / args.count:,.0f} instructions per round trip "
        f"({args.count} round trips of {args.size} B)"
    )
    return 0


async def measure(program: str, count: int, size: int, out: Path) -> int:
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
        tunnel = await open_tunnel(chain, port)
        tunnel.request(b"E")
        expected = 0

        async def round_trips(n: int) -> None:
            nonlocal expected
            for _ in range(n):
                await tunnel.send(size)
                expected += size
                await tunnel.until_received(expected, timeout=60)

        await round_trips(100)
        control = ["callgrind_control", "-z", str(pids[0])]
        subprocess.run(control, check=True, capture_output=True)
        await round_trips(count)
        control[1] = "-d"
        subprocess.run(control, check=True, capture_output=True)
        tunnel.close()
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
