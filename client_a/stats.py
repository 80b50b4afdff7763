"""client_a's counters and histograms: plain ints, exported at scrape time."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

from prometheus_client.core import Metric

from client_a.rules import RuleSources
from fastrelay import metrics
from fastrelay.io.carrier import CarrierStats, carrier_metrics, carrier_stream_bytes
from fastrelay.io.pool import CarrierPool
from fastrelay.metrics import by_label
from fastrelay.protocol.status import RESULTS

ROUTES = ("relay", "direct")
# Requests are also counted under "fallback": a fallback=direct rule's request that no relay or
# agent could take, dialled directly (its tunnel's bytes and timings count as "direct").
REQUEST_ROUTES = (*ROUTES, "fallback")


class ClientStats:
    def __init__(self) -> None:
        self.carrier = CarrierStats()  # the relay route's streams
        self.requests: Counter[tuple[str, str]] = Counter(
            {(route, result): 0 for route in REQUEST_ROUTES for result in RESULTS}
        )
        self.connect_latency = {route: metrics.Histogram() for route in ROUTES}
        self.first_byte = {route: metrics.Histogram() for route in ROUTES}
        self.direct_duration = metrics.Histogram(metrics.DURATION_BUCKETS)
        self.retries = 0  # opens retried on another carrier after a retryable 503
        self.direct_open = 0
        self.direct_bytes_up = 0
        self.direct_bytes_down = 0

    def collect(
        self, pool: CarrierPool, rules: RuleSources, reloads: Mapping[str, int]
    ) -> Iterable[Metric]:
        carriers = pool.carriers
        yield metrics.F_CLIENT_REQUESTS.build(
            {k: n for k, n in self.requests.items() if k[0] != "none" or n}
        )
        relay_open = sum(len(c.streams) for c in carriers)
        yield metrics.F_STREAMS_ACTIVE_CLIENT.build(
            by_label({"relay": relay_open, "direct": self.direct_open})
        )
        yield metrics.stream_bytes_by_route(
            {
                "relay": carrier_stream_bytes(self.carrier, carriers),
                "direct": (self.direct_bytes_up, self.direct_bytes_down),
            }
        )
        yield metrics.stream_duration_by_route(
            {"relay": self.carrier.stream_duration, "direct": self.direct_duration}
        )
        yield metrics.F_CLIENT_CONNECT.build({(r,): h for r, h in self.connect_latency.items()})
        yield metrics.F_CLIENT_FIRST_BYTE.build({(r,): h for r, h in self.first_byte.items()})
        yield metrics.F_RULES.build(by_label(rules.counts()))
        yield metrics.rules_version(rules.pushed.version if rules.pushed else None)
        yield metrics.F_RULES_RELOADS.build(by_label(reloads))
        yield metrics.F_CLIENT_RETRIES.one(self.retries)
        yield metrics.F_RELAY_DIALS_CLIENT.build({("client", r): n for r, n in pool.dials.items()})
        yield from carrier_metrics(self.carrier, "client", carriers)
