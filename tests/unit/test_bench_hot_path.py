"""bench/topology.py refuses to measure a chain whose hot path is "mixed": a module run
from source beside compiled ones, as after an edit without `make hotpath`. Such a run
measured neither build (a stale switch.py cost the relay 42.5k instructions per round
trip instead of 27.2k, and 305 -> 330 B per idle tunnel)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench import topology
from bench.topology import Process


def _started(*modes: str) -> list[Process]:
    popen = subprocess.Popen([sys.executable, "-c", ""])
    popen.wait(timeout=30)
    names = ("relay", "agent", "client_a")[: len(modes)]
    return [Process(n, popen, {"hotpath": m}) for n, m in zip(names, modes, strict=True)]


@pytest.mark.parametrize("modes", [("compiled",) * 3, ("python",) * 3, ("compiled", "python")])
def test_a_compiled_or_interpreted_chain_is_measured(modes: tuple[str, ...]) -> None:
    topology._check_hot_path(_started(*modes))


def test_a_mixed_hot_path_stops_the_bench() -> None:
    with pytest.raises(RuntimeError, match=r"'agent': 'mixed'.*run make hotpath"):
        topology._check_hot_path(_started("compiled", "mixed", "compiled"))
