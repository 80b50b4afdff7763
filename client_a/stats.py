"""client_a's counters and histograms: plain ints, exported at scrape time."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from prometheus_client.core import Metric

from fastrelay import metrics
from fastrelay.io.carrier import CarrierStats, carrier_metrics, carrier_stream_bytes
from fastrelay.io.pool import CarrierPool
from fastrelay.protocol.status import RESULTS

ROUTES = ("relay", "direct")


class ClientStats:
    def __init__(self) -> None:
        self.carrier = CarrierStats()  # the relay route's streams
        self.requests: Counter[tuple[str, str]] = Counter(
            {(route, result): 0 for route in ROUTES for result in RESULTS}
        )
        self.connect_latency = {route: metrics.Histogram() for route in ROUTES}
        self.first_byte = {route: metrics.Histogram() for route in ROUTES}
        self.direct_duration = metrics.Histogram(metrics.DURATION_BUCKETS)
        self.retries = 0  # opens retried on another carrier after a retryable 503
        self.direct_open = 0
        self.direct_bytes_up = 0
        self.direct_bytes_down = 0
        self.rules_reloads = 0
        self.rules_failures = 0

    def collect(self, pool: CarrierPool, rules: int) -> Iterable[Metric]:
        carriers = pool.carriers
        yield metrics.counter(
            metrics.CLIENT_REQUESTS,
            "Browser requests by route and result",
            ["route", "result"],
            {k: n for k, n in self.requests.items() if k[0] != "none" or n},
        )
        yield metrics.gauge(
            metrics.STREAMS_ACTIVE,
            "Open tunnels at this client_a, by route",
            ["route"],
            {("relay",): sum(len(c.streams) for c in carriers), ("direct",): self.direct_open},
        )
        up, down = carrier_stream_bytes(self.carrier, carriers)
        yield metrics.counter(
            metrics.STREAM_BYTES,
            "Tunnel payload bytes, by direction and route",
            ["direction", "route"],
            {
                ("upstream", "relay"): up,
                ("downstream", "relay"): down,
                ("upstream", "direct"): self.direct_bytes_up,
                ("downstream", "direct"): self.direct_bytes_down,
            },
        )
        yield metrics.histogram(
            metrics.STREAM_DURATION,
            "Lifetime of tunnels that opened, from open to close",
            ["route"],
            {("relay",): self.carrier.stream_duration, ("direct",): self.direct_duration},
        )
        yield metrics.histogram(
            metrics.CLIENT_CONNECT,
            "Request received to 200 sent to the browser, successful opens",
            ["route"],
            {(r,): h for r, h in self.connect_latency.items()},
        )
        yield metrics.histogram(
            metrics.CLIENT_FIRST_BYTE,
            "200 sent to the browser to the first byte from the target",
            ["route"],
            {(r,): h for r, h in self.first_byte.items()},
        )
        yield metrics.gauge(
            metrics.PREFIX + "rules", "Patterns in the filter list", [], {(): rules}
        )
        yield metrics.counter(
            metrics.PREFIX + "rules_reloads",
            "Rules reloads by result",
            ["result"],
            {("ok",): self.rules_reloads, ("error",): self.rules_failures},
        )
        yield metrics.counter(
            metrics.PREFIX + "client_retries",
            "Relay opens retried on another carrier after a retryable 503",
            [],
            {(): self.retries},
        )
        yield metrics.counter(
            metrics.RELAY_DIALS,
            "Dials of the relay URL by result",
            ["role", "result"],
            {("client", r): n for r, n in pool.dials.items()},
        )
        yield from carrier_metrics(self.carrier, "client", carriers)
