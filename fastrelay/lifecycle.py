"""Process lifecycle shared by the programs: uvloop, signals, readiness line.

A program is one coroutine that receives a `stop` event. SIGTERM or SIGINT
sets it and the program shuts down cleanly; a second signal exits at once.
When its sockets are bound, a program prints one JSON line on stdout
(`{"event": "ready", ...}` with the bound addresses) so supervisors and tests
that asked for port 0 learn the real ports.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable

import orjson
import uvloop


def announce_ready(program: str, **addresses: str) -> None:
    line = orjson.dumps({"event": "ready", "program": program, "pid": os.getpid(), **addresses})
    sys.stdout.write(line.decode() + "\n")
    sys.stdout.flush()


def format_address(sockname: tuple) -> str:
    host, port = sockname[0], sockname[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def run(main: Callable[[asyncio.Event], Awaitable[int | None]]) -> int:
    async def runner() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        hits = 0

        def on_signal() -> None:
            nonlocal hits
            hits += 1
            if hits > 1:
                os._exit(1)  # second Ctrl-C: the operator wants out now
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        return (await main(stop)) or 0

    return uvloop.run(runner())
