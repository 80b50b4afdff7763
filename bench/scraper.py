"""A Prometheus stand-in: GET /metrics from each admin address every `--interval` seconds.

    python -m bench.scraper --interval 1 relay=127.0.0.1:9101 agent=127.0.0.1:9102 ...

It runs as its own process, as a real scraper would, so it never competes with the load
client for the runner's GIL or event loop. After the first round it prints
`{"event": "ready"}`; when its stdin closes (or after `--rounds` rounds) it prints one JSON
line with every round's time per target in ms, the body sizes and the error count, then exits.
Standard library only, so it starts fast.
"""

from __future__ import annotations

import argparse
import json
import select
import sys
import time
import urllib.request


def scrape_once(address: str) -> tuple[float, int]:
    start = time.perf_counter()
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as resp:
        body = resp.read()
        if resp.status != 200:
            raise OSError(f"HTTP {resp.status}")
    return (time.perf_counter() - start) * 1000, len(body)


def stdin_closed(timeout: float) -> bool:
    """Wait up to `timeout` seconds; True once stdin reached EOF."""
    readable, _, _ = select.select([sys.stdin], [], [], max(0.0, timeout))
    return bool(readable) and not sys.stdin.buffer.read1(4096)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scraper", allow_abbrev=False)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between rounds")
    parser.add_argument("--rounds", type=int, help="stop after this many rounds")
    parser.add_argument("targets", nargs="+", metavar="NAME=HOST:PORT")
    args = parser.parse_args(argv)
    targets = dict(t.split("=", 1) for t in args.targets)
    rounds: list[dict[str, float]] = []
    sizes: dict[str, int] = {}
    errors = {name: 0 for name in targets}
    next_round = time.monotonic()
    while True:
        timings: dict[str, float] = {}
        for name, address in targets.items():
            try:
                timings[name], sizes[name] = scrape_once(address)
            except OSError:
                errors[name] += 1
        rounds.append(timings)
        if len(rounds) == 1:
            print(json.dumps({"event": "ready"}), flush=True)
        if args.rounds and len(rounds) >= args.rounds:
            break
        next_round += args.interval
        if stdin_closed(next_round - time.monotonic()):
            break
    print(json.dumps({"event": "done", "rounds": rounds, "bytes": sizes, "errors": errors}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
