"""Metrics overhead: why the hot path counts in plain ints, and what one scrape costs.

(a) 1,000 increments per call of: an int attribute on a `__slots__` object, a
    `prometheus_client.Counter.inc()`, and a `Counter.labels(...).inc()`;
    `extra_info["per_op_ns"]` is the median divided by 1,000 (loop overhead included,
    the same for all three).
(b) one full scrape, `fastrelay.metrics.render()`, of the registry the relay builds with
    `make_registry("relay", ...)`, with streams open and bytes counted.

Run: .venv/bin/pytest bench/micro/test_metrics_bench.py --benchmark-only -q
Results are asserted for correctness only; timing is reported, never asserted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from fastrelay import metrics

Benchmark = Callable[..., Any]

OPS = 1000


class SlotsStats:
    __slots__ = ("frames",)

    def __init__(self) -> None:
        self.frames = 0


def _set_per_op(benchmark: Any) -> None:
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["per_op_ns"] = round(benchmark.stats.stats.median / OPS * 1e9, 1)


def _counter(labels: tuple[str, ...] = ()) -> tuple[Counter, CollectorRegistry]:
    registry = CollectorRegistry(auto_describe=True)
    return Counter("bench_frames", "frames", list(labels), registry=registry), registry


def _check_multiple(value: float, first: float) -> None:
    assert first == OPS, f"one call must add {OPS}, added {first}"
    assert value >= OPS and value % OPS == 0, value


def test_inc_slots_int(benchmark: Benchmark) -> None:
    stats = SlotsStats()

    def bump() -> None:
        for _ in range(OPS):
            stats.frames += 1

    bump()
    first = stats.frames
    benchmark(bump)
    _check_multiple(stats.frames, first)
    _set_per_op(benchmark)


def test_inc_prometheus_counter(benchmark: Benchmark) -> None:
    counter, registry = _counter()

    def bump() -> None:
        for _ in range(OPS):
            counter.inc()

    bump()
    first = registry.get_sample_value("bench_frames_total")
    benchmark(bump)
    _check_multiple(registry.get_sample_value("bench_frames_total"), first)
    _set_per_op(benchmark)


def test_inc_prometheus_counter_labels(benchmark: Benchmark) -> None:
    counter, registry = _counter(("direction",))

    def bump() -> None:
        for _ in range(OPS):
            counter.labels("upstream").inc()

    bump()
    first = registry.get_sample_value("bench_frames_total", {"direction": "upstream"})
    benchmark(bump)
    value = registry.get_sample_value("bench_frames_total", {"direction": "upstream"})
    _check_multiple(value, first)
    _set_per_op(benchmark)


STREAMS_PER_CLIENT = 25


def test_scrape_relay_registry(benchmark: Benchmark, rig: Any) -> None:
    relay = rig.relay
    clients = [rig.connect("client") for _ in range(4)]
    agents = [rig.connect("agent") for _ in range(2)]
    up = down = 0
    for n, (client, _) in enumerate(clients):
        for i in range(STREAMS_PER_CLIENT):
            sid, agent = rig.open_stream(client)
            rig.receive(client, memoryview(rig.data_message(sid, 2, 1000 + i)))
            rig.receive(agent, memoryview(rig.data_message(sid, 1, 5000 + n)))
            up += 2 * (1000 + i)
            down += 5000 + n
    rig.flush()
    open_streams = len(clients) * STREAMS_PER_CLIENT
    assert relay.active_streams == open_streams

    registry = metrics.make_registry(
        "relay", lambda: relay.stats.collect(relay), lambda: (True, "ready")
    )
    body = benchmark(metrics.render, registry)

    assert isinstance(body, bytes)
    assert b"fastrelay_stream_bytes_total" in body
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
    bytes_total = metrics.STREAM_BYTES + "_total"
    assert samples[bytes_total, (("direction", "upstream"),)] == up
    assert samples[bytes_total, (("direction", "downstream"),)] == down
    assert samples[metrics.STREAMS_ACTIVE, ()] == open_streams
    assert samples[metrics.STREAMS + "_total", (("result", "ok"),)] == open_streams
    assert samples[metrics.CONNECTIONS, (("role", "client"),)] == len(clients)
    assert samples[metrics.CONNECTIONS, (("role", "agent"),)] == len(agents)
    assert samples[metrics.PREFIX + "relay_open_seconds_count", ()] == open_streams
    build = [labels for name, labels in samples if name == metrics.PREFIX + "build_info"]
    assert len(build) == 1 and ("program", "relay") in build[0]
    if benchmark.stats is not None:
        benchmark.extra_info["body_bytes"] = len(body)
        benchmark.extra_info["streams_open"] = open_streams
