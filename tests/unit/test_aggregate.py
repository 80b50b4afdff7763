"""The merge of several relay workers' /metrics (fastrelay/relay/aggregate.py)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fastrelay import metrics
from fastrelay.relay import aggregate


def exposition(ok: int, members: int, ready: bool, latencies: list[float]) -> str:
    hist = metrics.Histogram()
    for value in latencies:
        hist.observe(value)

    def collect():  # type: ignore[no-untyped-def]
        yield metrics.counter(metrics.STREAMS, "opens", ["result"], {("ok",): ok})
        yield metrics.histogram(metrics.RELAY_OPEN, "open latency", [], {(): hist})
        yield metrics.gauge(metrics.CLUSTER_MEMBERS, "members", [], {(): members})

    registry = metrics.make_registry("relay", collect, lambda: (ready, ""))
    return generate_latest(registry).decode()


def render(families: list) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    class Collector:
        def collect(self):  # type: ignore[no-untyped-def]
            return families

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector())
    text = generate_latest(registry).decode()  # what the supervisor serves must parse again
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def merged(retired=None):  # type: ignore[no-untyped-def]
    workers = {
        "0": aggregate.parse(exposition(3, 3, True, [0.001, 0.2])),
        "1": aggregate.parse(exposition(5, 2, False, [0.003])),
    }
    return render(aggregate.merge(workers, retired))


def test_counters_and_histograms_add_up() -> None:
    out = merged()
    assert out["fastrelay_streams_total", (("result", "ok"),)] == 8
    assert out["fastrelay_relay_open_seconds_count", ()] == 3
    assert out["fastrelay_relay_open_seconds_bucket", (("le", "0.001"),)] == 1
    assert out["fastrelay_relay_open_seconds_bucket", (("le", "0.005"),)] == 2
    assert out["fastrelay_relay_open_seconds_bucket", (("le", "+Inf"),)] == 3


def test_deployment_gauges_are_not_summed() -> None:
    out = merged()
    assert out["fastrelay_cluster_members", ()] == 3  # the largest view
    assert out["fastrelay_ready", ()] == 0  # not ready if one worker is not
    build = [v for (name, _), v in out.items() if name == "fastrelay_build_info"]
    assert build == [1]


def test_process_metrics_stay_per_worker() -> None:
    out = merged()
    workers = {dict(labels)["worker"] for (name, labels) in out if name == "process_open_fds"}
    assert workers == {"0", "1"}


def test_retired_counters_keep_totals_from_going_back() -> None:
    dead = aggregate.counter_samples(aggregate.parse(exposition(7, 1, True, [0.5])))
    assert ("fastrelay_streams_total", (("result", "ok"),)) in dead
    assert not any(name.startswith("fastrelay_cluster") for name, _ in dead)  # gauges don't carry
    out = merged(dead)
    assert out["fastrelay_streams_total", (("result", "ok"),)] == 8 + 7
    assert out["fastrelay_relay_open_seconds_count", ()] == 3 + 1
