"""Every metric name in one place, exported at scrape time from plain ints.

Hot paths increment integer attributes on `__slots__` objects; a custom
collector turns them into Prometheus families only when /metrics is scraped,
so no prometheus-client call ever runs per frame.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Info, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
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

STREAM_RESULTS = ("ok", "refused", "denied", "dial_failed", "no_agent", "timeout", "error")


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


class ScrapeCollector(Collector):
    """Calls `collect_fn` at scrape time; it reads the program's plain ints."""

    def __init__(self, collect_fn: Callable[[], Iterable[Metric]]) -> None:
        self.collect_fn = collect_fn

    def collect(self) -> Iterable[Metric]:
        return self.collect_fn()


def make_registry(program: str, collect_fn: Callable[[], Iterable[Metric]]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    Info(PREFIX + "build", "fastrelay build", registry=registry).info(
        {"version": __version__, "program": program}
    )
    registry.register(ScrapeCollector(collect_fn))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
