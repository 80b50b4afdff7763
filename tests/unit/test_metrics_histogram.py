"""metrics.Histogram: le semantics at the bucket edges, cumulative export,
and agreement with prometheus_client's own histogram."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client import Histogram as ClientHistogram
from prometheus_client.parser import text_string_to_metric_families

from fastrelay import metrics
from fastrelay.metrics import DURATION_BUCKETS, LATENCY_BUCKETS, Histogram

BOUNDS = (0.001, 0.01, 0.1, 1.0)


def counts(hist: Histogram) -> list[float]:
    return [n for _, n in hist.buckets()]


def test_a_value_equal_to_a_bound_goes_in_that_bucket() -> None:
    for i, bound in enumerate(BOUNDS):
        hist = Histogram(BOUNDS)
        hist.observe(bound)
        expected = [0] * i + [1] * (len(BOUNDS) - i) + [1]
        assert counts(hist) == expected, bound


def test_a_value_just_above_a_bound_goes_in_the_next_bucket() -> None:
    hist = Histogram(BOUNDS)
    hist.observe(math.nextafter(0.01, 1.0))
    assert counts(hist) == [0, 0, 1, 1, 1]


def test_above_the_last_bound_only_in_inf() -> None:
    hist = Histogram(BOUNDS)
    hist.observe(1.0000001)
    hist.observe(1e9)
    assert counts(hist) == [0, 0, 0, 0, 2]
    assert hist.buckets()[-1] == ("+Inf", 2)
    assert hist.count == 2


def test_zero_and_below_the_first_bound_go_in_the_first_bucket() -> None:
    hist = Histogram(BOUNDS)
    hist.observe(0.0)
    hist.observe(0.0005)
    assert counts(hist) == [2, 2, 2, 2, 2]


def test_buckets_are_cumulative_with_sum_and_count() -> None:
    hist = Histogram(BOUNDS)
    values = [0.0005, 0.001, 0.002, 0.05, 0.05, 0.5, 1.0, 3.0]
    for value in values:
        hist.observe(value)
    buckets = hist.buckets()
    assert [le for le, _ in buckets] == ["0.001", "0.01", "0.1", "1.0", "+Inf"]
    assert counts(hist) == [2, 3, 5, 7, 8]
    assert hist.count == len(values)
    assert math.isclose(hist.total, sum(values))


def test_empty_histogram_exports_zeros() -> None:
    hist = Histogram()
    assert len(hist.buckets()) == len(LATENCY_BUCKETS) + 1
    assert set(counts(hist)) == {0}
    assert (hist.count, hist.total) == (0, 0.0)


def test_bucket_sets_match_the_spec() -> None:
    assert LATENCY_BUCKETS == (
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
        0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
    )  # fmt: skip
    assert DURATION_BUCKETS == (0.001, 0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)
    for bounds in (LATENCY_BUCKETS, DURATION_BUCKETS):
        assert list(bounds) == sorted(set(bounds))


def render(families: list) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics.ScrapeCollector(lambda: families))
    return metrics.render(registry).decode()


def test_exported_family_is_a_valid_prometheus_histogram() -> None:
    hist = Histogram(BOUNDS)
    for value in (0.001, 0.5, 2.0):
        hist.observe(value)
    text = render([metrics.histogram("fastrelay_x_seconds", "x", ["route"], {("relay",): hist})])
    [family] = text_string_to_metric_families(text)
    assert family.type == "histogram"
    samples = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert samples["fastrelay_x_seconds_bucket", "0.001"] == 1
    assert samples["fastrelay_x_seconds_bucket", "0.1"] == 1
    assert samples["fastrelay_x_seconds_bucket", "1.0"] == 2
    assert samples["fastrelay_x_seconds_bucket", "+Inf"] == 3
    assert samples["fastrelay_x_seconds_count", None] == 3
    assert math.isclose(samples["fastrelay_x_seconds_sum", None], 2.501)
    assert all(s.labels["route"] == "relay" for s in family.samples)


@given(
    st.lists(
        st.one_of(
            st.sampled_from(LATENCY_BUCKETS),  # the edges themselves
            st.floats(min_value=0, max_value=100, allow_nan=False),
        ),
        max_size=50,
    )
)
def test_agrees_with_prometheus_client(values: list[float]) -> None:
    ours = Histogram(LATENCY_BUCKETS)
    registry = CollectorRegistry()
    theirs = ClientHistogram("h", "h", buckets=LATENCY_BUCKETS, registry=registry)
    for value in values:
        ours.observe(value)
        theirs.observe(value)
    expected = {
        s.labels["le"]: s.value for s in registry.collect().__next__().samples if "le" in s.labels
    }
    got = dict(ours.buckets())
    assert [float(le) for le in got] == [float(le) for le in expected]
    assert list(got.values()) == list(expected.values())
