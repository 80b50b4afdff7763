"""client_a's PAC file at 100,000 rules (issue 13 part 1): how long generating it takes
(pytest-benchmark), how big it is, and what one FindProxyForURL call costs in node (V8, the
engine of Chromium's PAC resolver), recorded in ``extra_info`` and printed.

Run: .venv/bin/pytest bench/micro/test_pac_bench.py --benchmark-only -q -s
Correctness is asserted (the PAC answers as Rules.lookup does for every probe); timing is
reported, never asserted.  Needs node (Debian's ``nodejs``); skipped without it outside CI.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from client_a.pac import generate
from client_a.rules import Fallback, Rules

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from support.pac_node import PacNode, node_path
from support.procs import require_tools_or_skip
from test_rules_bench import _rule_lines

Benchmark = Callable[..., Any]
PROXY = "127.0.0.1:8080"
ROUNDS = 2_000  # x len(PROBES) calls timed in node, after ROUNDS / 4 warm-up rounds
# Hits and misses of every kind: exact names, suffixes (shallow and deep), IPv4, IPv6.
PROBES = [
    "host31337.site430.example.com",
    "static.assets.dom12345.example.net",
    "a.b.c.d.e.f.g.h.i.j.k.l.svc10000.cdn.example.org",
    "x.svc9999.cdn.example.org",
    "www.unlisted-site.example",
    "plain",
    "10.46.200.17",
    "203.0.113.9",
    "172.20.3.40",
    "2001:db8:ffff:3e7::1",
    "2001:db8:1::5",
    "2001:db9::1",
]


@pytest.fixture(scope="module")
def rules() -> Rules:
    built = Rules.parse("\n".join(_rule_lines()))
    assert len(built) == 100_000
    return built


def test_generate_pac_100k_rules(benchmark: Benchmark, rules: Rules) -> None:
    require_tools_or_skip([] if node_path() else ["node"], "apt-get install nodejs")
    pac = benchmark.pedantic(generate, args=(rules, PROXY), rounds=5, iterations=1)
    node = PacNode()
    try:
        result = node.run(pac, PROBES, rounds=ROUNDS)  # every kind of host, interleaved
        # and each host alone (a page's requests mostly repeat a few hosts)
        each = {host: node.run(pac, [host], rounds=ROUNDS)["ns_per_call"] for host in PROBES}
    finally:
        node.close()
    for host, answer in zip(PROBES, result["answers"], strict=True):
        rule = rules.lookup(host)
        want = "DIRECT"
        if rule is not None:
            want = f"PROXY {PROXY}" + ("; DIRECT" if rule.fallback is Fallback.DIRECT else "")
        assert answer == want, host
    assert not any(result["helper_calls"].values())
    size = len(pac.encode())
    benchmark.extra_info["pac_bytes"] = size
    benchmark.extra_info["node_ns_per_call"] = round(result["ns_per_call"], 1)
    benchmark.extra_info["node_load_ms"] = round(result["load_ns"] / 1e6, 1)
    benchmark.extra_info["node_ns_per_call_by_host"] = {h: round(ns) for h, ns in each.items()}
    print(
        f"\nPAC for {len(rules)} rules: {size / 1e6:.2f} MB; node: "
        f"{result['ns_per_call']:.0f} ns per FindProxyForURL call (mean over "
        f"{ROUNDS} x {len(PROBES)} calls), {result['load_ns'] / 1e6:.0f} ms to load"
    )
    for host, ns in each.items():
        print(f"  {ns:8.0f} ns  {host}")
