"""Lookup cost of client_a.rules.Rules with 100,000 rules (target: <= 2 us per lookup).

Run: .venv/bin/pytest bench/micro/test_rules_bench.py --benchmark-only -q
Results are asserted for correctness only; timing is reported, never asserted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from client_a.rules import Fallback, Rule, Rules

Benchmark = Callable[..., Any]

# A single lookup is about as long as the timer call itself, so each round batches enough
# iterations (min_time) for the per-call figures to reflect the lookup, not the clock.
pytestmark = pytest.mark.benchmark(min_time=0.0002, warmup=True)


def _rule_lines() -> list[str]:
    lines = [f"host{i}.site{i % 997}.example.com" for i in range(40_000)]
    lines += [f".dom{i}.example.net" for i in range(25_000)]
    lines += ["[pool cdn]"]
    lines += [f"*.svc{i}.cdn.example.org" for i in range(10_000)]
    lines += ["[pool default]"]
    # Several prefix lengths so the CIDR path probes more than one bucket.
    lines += [f"10.{i // 256}.{i % 256}.0/24" for i in range(12_000)]
    lines += [f"172.{16 + i // 4096 % 16}.{i // 16 % 256}.{i % 16 * 16}/28" for i in range(5_000)]
    lines += [f"198.{18 + i // 65536}.{i // 256 % 256}.{i % 256}" for i in range(3_000)]
    lines += [f"2001:db8:{i:x}::/48" for i in range(4_000)]
    lines += [f"2001:db8:ffff:{i:x}::/64 @v6 fallback=direct" for i in range(1_000)]
    return lines


@pytest.fixture(scope="module")
def rules() -> Rules:
    lines = _rule_lines()
    assert sum(not line.startswith("[") for line in lines) == 100_000
    built = Rules.parse("\n".join(lines))
    assert len(built) == 100_000
    return built


def test_hit_suffix_rule(benchmark: Benchmark, rules: Rules) -> None:
    assert benchmark(rules.matches, "static.assets.dom12345.example.net") is True


def test_hit_exact_host(benchmark: Benchmark, rules: Rules) -> None:
    assert benchmark(rules.matches, "host31337.site430.example.com") is True


def test_miss_deep_hostname(benchmark: Benchmark, rules: Rules) -> None:
    host = "a.b.c.d.e.f.g.h.i.j.k.l.svc10000.cdn.example.org"
    assert benchmark(rules.matches, host) is False


def test_hit_ipv4_literal(benchmark: Benchmark, rules: Rules) -> None:
    assert benchmark(rules.matches, "10.46.200.17") is True


def test_miss_ipv4_literal(benchmark: Benchmark, rules: Rules) -> None:
    assert benchmark(rules.matches, "203.0.113.9") is False


def test_hit_ipv6_literal(benchmark: Benchmark, rules: Rules) -> None:
    assert benchmark(rules.matches, "[2001:db8:ffff:3e7::1]") is True
    assert rules.lookup("[2001:db8:ffff:3e7::1]") == Rule("v6", Fallback.DIRECT)


# lookup() returns the most specific Rule (pool, fallback); matches() is lookup() is not None.
def test_lookup_hit_suffix_rule(benchmark: Benchmark, rules: Rules) -> None:
    rule = benchmark(rules.lookup, "static.assets.dom12345.example.net")
    assert rule is not None and rule.pool == "default"


def test_lookup_hit_exact_host(benchmark: Benchmark, rules: Rules) -> None:
    assert benchmark(rules.lookup, "host31337.site430.example.com") is not None


def test_lookup_miss_deep_hostname(benchmark: Benchmark, rules: Rules) -> None:
    assert benchmark(rules.lookup, "a.b.c.d.e.f.g.h.i.j.k.l.svc10000.cdn.example.org") is None


def test_lookup_hit_ipv4_literal(benchmark: Benchmark, rules: Rules) -> None:
    assert benchmark(rules.lookup, "10.46.200.17") is not None
