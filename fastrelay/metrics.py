"""Every metric name in one place, exported at scrape time from plain ints.

Hot paths increment integer attributes on `__slots__` objects; a custom
collector turns them into Prometheus families only when /metrics is scraped,
so no prometheus-client call ever runs per frame.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Info, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from fastrelay import __version__

PREFIX = "fastrelay_"

# Metric names, shared by the programs, tests and docs/OPERATIONS.md.
CONNECTIONS = PREFIX + "connections"
STREAMS_ACTIVE = PREFIX + "streams_active"
STREAMS = PREFIX + "streams"  # exported as fastrelay_streams_total
STREAM_BYTES = PREFIX + "stream_bytes"
STREAM_FRAMES = PREFIX + "stream_frames"
FRAMES_DROPPED = PREFIX + "frames_dropped"
PROTOCOL_ERRORS = PREFIX + "protocol_errors"
AUTH_FAILURES = PREFIX + "auth_failures"
BACKPRESSURE_PAUSES = PREFIX + "backpressure_pauses"
FLOW_CONTROL_STALLS = PREFIX + "flow_control_stalls"
RECONNECTS = PREFIX + "reconnects"
WS_WRITE_BUFFER = PREFIX + "ws_write_buffer_bytes"
RELAY_CONNECTED = PREFIX + "relay_connected"
CLIENT_REQUESTS = PREFIX + "client_requests"
AGENT_DIALS = PREFIX + "agent_dials"
LIMIT_HITS = PREFIX + "limit_hits"
OPEN_RETRIES = PREFIX + "open_retries"
AGENT_STALLS = PREFIX + "agent_stalls"
ACCEPT_PAUSES = PREFIX + "accept_pauses"  # relay and client_a listeners out of fds
CLIENT_CONNECTIONS_DROPPED = PREFIX + "client_connections_dropped"  # 408 / 503 by client_a

READY = PREFIX + "ready"
CLUSTER_MEMBERS = PREFIX + "cluster_members"
CLUSTER_ERRORS = PREFIX + "cluster_errors"
RELAY_DIALS = PREFIX + "relay_dials"
STREAM_DURATION = PREFIX + "stream_duration_seconds"
PING_RTT = PREFIX + "ws_ping_rtt_seconds"
RELAY_OPEN = PREFIX + "relay_open_seconds"
CLIENT_CONNECT = PREFIX + "client_connect_seconds"
CLIENT_FIRST_BYTE = PREFIX + "client_first_byte_seconds"
AGENT_DIAL = PREFIX + "agent_dial_seconds"

# Latency buckets, 100 us to 30 s: loopback hops land in the first few,
# a transatlantic agent or a slow DNS server in the middle, timeouts at the top.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
# Tunnel lifetimes: a one-shot HTTP request up to an hour-long download.
DURATION_BUCKETS = (0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)

STREAM_RESULTS = (
    "ok", "refused", "denied", "dial_failed", "no_agent", "limited", "timeout", "error",
)  # fmt: skip
# The relay's limits, as the `limit` label of fastrelay_limit_hits_total. The
# last three are upgrade heads answered 431 (fastrelay/io/httphead.py).
LIMITS = (
    "connections", "connections_per_token", "streams_per_connection", "streams_per_agent",
    "opens_per_connection", "opens_per_agent", "connection_buffer",
    "head_size", "head_line", "head_fields",
)  # fmt: skip


def counter(name: str, doc: str, labels: Iterable[str], values: Mapping[tuple, int]) -> Metric:
    family = CounterMetricFamily(name, doc, labels=list(labels))
    for label_values, value in values.items():
        family.add_metric(list(label_values), value)
    return family


def gauge(name: str, doc: str, labels: Iterable[str], values: Mapping[tuple, float]) -> Metric:
    family = GaugeMetricFamily(name, doc, labels=list(labels))
    for label_values, value in values.items():
        family.add_metric(list(label_values), value)
    return family


class Histogram:
    """A histogram in plain ints: `observe` is a bisect and two adds, and the
    Prometheus family is built only at scrape time. Observed once per stream
    or per ping, never per frame."""

    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last slot is +Inf
        self.count = 0
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        out, cumulative = [], 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            cumulative += n
            out.append((repr(bound), cumulative))
        out.append(("+Inf", self.count))
        return out


def histogram(
    name: str, doc: str, labels: Iterable[str], values: Mapping[tuple, Histogram]
) -> Metric:
    family = HistogramMetricFamily(name, doc, labels=list(labels))
    for label_values, hist in values.items():
        family.add_metric(list(label_values), hist.buckets(), hist.total)
    return family


class ScrapeCollector(Collector):
    """Calls `collect_fn` at scrape time; it reads the program's plain ints."""

    def __init__(self, collect_fn: Callable[[], Iterable[Metric]]) -> None:
        self.collect_fn = collect_fn

    def collect(self) -> Iterable[Metric]:
        return self.collect_fn()


def make_registry(
    program: str,
    collect_fn: Callable[[], Iterable[Metric]],
    ready: Callable[[], tuple[bool, str]],
) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    Info(PREFIX + "build", "fastrelay build", registry=registry).info(
        {"version": __version__, "program": program}
    )

    def collect() -> Iterable[Metric]:
        yield gauge(READY, "1 when /readyz answers 200", [], {(): float(ready()[0])})
        yield from collect_fn()

    registry.register(ScrapeCollector(collect))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
