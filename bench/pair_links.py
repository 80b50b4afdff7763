"""The pair tests' slow agent links, measured rather than asserted.

tests/protocol/test_path_delay.py models an agent behind a slow link in the in-memory pair
(the real session, switch and credit code; a millisecond clock; no sockets). This runs the
same link with a download from the agent, an upload to it, or both, and another tenant's
opens one at a time, in five phases of the opens, and prints per case: each bulk stream's
rate, the others' opens (p50, p90, max) and the deepest queue the relay held for the
agent. It takes a few seconds and needs no processes; `python -m bench.hol_probe` is the
same question asked of the real programs.

    .venv/bin/python -m bench.pair_links
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "protocol"))

from test_path_delay import Tenants

# out of the agent, into it (bytes/s), from when (ms after the bulk starts), upload, download
CASES = (
    (5e6, 20e6, 2000, True, True),
    (20e6, 20e6, 2000, True, True),
    (5e6, 100e6, 2000, True, True),
    (20e6, 20e6, 20, True, True),
    (20e6, 20e6, 20, True, False),
    (5e6, 20e6, 20, True, True),
)
PHASES = (0, 17, 33, 51, 77)  # ms into each 100 ms at which the next open may start
STEPS = 6000  # of a millisecond


def run(
    out: float, into: float, start: int, up: bool, down: bool, phase: int
) -> tuple[float, float, list[float], int]:
    """One case, one phase: download and upload bytes/s, the opens (s), the relay's
    deepest queue to the agent (bytes)."""
    tenants = Tenants(out=out, into=into)
    for i in range(STEPS):
        tenants.step(down=down, up=up, open_one=i >= start and i % 100 == phase)
    down_rate, up_rate = tenants.rates()
    assert not tenants.errors
    return down_rate, up_rate, tenants.opens, max(tenants.relay_queue)


def main() -> None:
    for out, into, start, up, down in CASES:
        downs, ups, opens, deepest = [], [], [], 0
        for phase in PHASES:
            d, u, o, q = run(out, into, start, up, down, phase)
            downs.append(d)
            ups.append(u)
            opens += o
            deepest = max(deepest, q)
        opens.sort()
        row: dict[str, Any] = {
            "link MB/s out/in": f"{out / 1e6:g}/{into / 1e6:g}",
            "bulk": "+".join(n for n, on in (("up", up), ("down", down)) if on),
            "opens from": "start" if start < 100 else f"{start / 1000:g} s",
            "down MB/s": f"{statistics.median(downs) / 1e6:.2f}",
            "up MB/s": f"{statistics.median(ups) / 1e6:.2f}",
            "opens p50/p90/max ms": "/".join(
                f"{opens[int(len(opens) * q)] * 1e3:.0f}" for q in (0.5, 0.9)
            )
            + f"/{opens[-1] * 1e3:.0f}",
            "relay queue peak MB": f"{deepest / 1e6:.1f}",
        }
        print("  ".join(f"{k} {v}" for k, v in row.items()), flush=True)


if __name__ == "__main__":
    main()
