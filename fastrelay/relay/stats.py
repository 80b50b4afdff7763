"""The relay's counters: plain ints on the hot path, Prometheus families at scrape time."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client.core import Metric

from fastrelay import metrics

if TYPE_CHECKING:
    from fastrelay.relay.server import Relay


class RelayStats:
    def __init__(self) -> None:
        self.results: Counter[str] = Counter({r: 0 for r in metrics.STREAM_RESULTS})
        self.connections_opened: Counter[str] = Counter({"client": 0, "agent": 0})
        self.connections_closed: Counter[str] = Counter({"client": 0, "agent": 0})
        self.auth_failures: Counter[str] = Counter({"client": 0, "agent": 0})
        self.protocol_errors: Counter[str] = Counter()
        self.dropped_unknown_stream = 0
        self.backpressure_pauses = 0
        self.closed_bytes_up = 0
        self.closed_bytes_down = 0
        self.closed_frames_up = 0
        self.closed_frames_down = 0
        self.open_latency = metrics.Histogram()
        self.stream_duration = metrics.Histogram(metrics.DURATION_BUCKETS)
        self.ping_rtt = {"client": metrics.Histogram(), "agent": metrics.Histogram()}

    def count_protocol_error(self, kind: str) -> None:
        self.protocol_errors[kind] += 1

    def collect(self, relay: Relay) -> Iterable[Metric]:
        live = {"client": len(relay.clients), "agent": len(relay.agents)}
        queued = {
            "client": sum(p.write_buffer_size() for p in relay.clients),
            "agent": sum(p.write_buffer_size() for p in relay.agents.agents),
        }
        yield metrics.gauge(
            metrics.WS_WRITE_BUFFER,
            "Bytes queued on WebSockets, not yet taken by the kernel, by the peer's role",
            ["role"],
            {(r,): n for r, n in queued.items()},
        )
        yield metrics.gauge(
            metrics.CONNECTIONS,
            "Open WebSocket connections by role",
            ["role"],
            {(r,): n for r, n in live.items()},
        )
        yield metrics.gauge(
            metrics.CLUSTER_MEMBERS,
            "Relay instances in the live set this relay announces to agents",
            [],
            {(): len(relay.members)},
        )
        yield metrics.counter(
            metrics.CLUSTER_ERRORS,
            "Failed membership heartbeats (Redis unreachable)",
            [],
            {(): relay.membership_errors()},
        )
        yield metrics.gauge(
            metrics.STREAMS_ACTIVE,
            "Streams open through this relay",
            [],
            {(): relay.active_streams},
        )
        yield metrics.counter(
            metrics.STREAMS,
            "Streams opened, by result",
            ["result"],
            {(r,): n for r, n in self.results.items()},
        )
        # Live peers hold their own counts; closed peers' counts were folded in here.
        for name, doc, attr, closed_up, closed_down in (
            (
                metrics.STREAM_BYTES,
                "Tunnel payload bytes forwarded",
                "data_bytes",
                self.closed_bytes_up,
                self.closed_bytes_down,
            ),
            (
                metrics.STREAM_FRAMES,
                "TUNNEL_DATA frames forwarded",
                "data_frames",
                self.closed_frames_up,
                self.closed_frames_down,
            ),
        ):
            up = closed_up + sum(getattr(c, attr) for c in relay.clients)
            down = closed_down + sum(getattr(a, attr) for a in relay.agents.agents)
            yield metrics.counter(
                name, doc, ["direction"], {("upstream",): up, ("downstream",): down}
            )
        yield metrics.counter(
            metrics.AUTH_FAILURES,
            "Rejected WebSocket upgrades by role",
            ["role"],
            {(r,): n for r, n in self.auth_failures.items()},
        )
        yield metrics.counter(
            metrics.PROTOCOL_ERRORS,
            "Protocol errors by kind",
            ["kind"],
            {(k,): n for k, n in self.protocol_errors.items()},
        )
        yield metrics.counter(
            metrics.FRAMES_DROPPED,
            "Frames dropped, by reason",
            ["reason"],
            {("unknown_stream",): self.dropped_unknown_stream},
        )
        yield metrics.counter(
            metrics.BACKPRESSURE_PAUSES,
            "Times a WebSocket's backlog paused its feeders",
            [],
            {(): self.backpressure_pauses},
        )
        yield metrics.counter(
            metrics.PREFIX + "connections_accepted",
            "WebSocket connections accepted by role",
            ["role"],
            {(r,): n for r, n in self.connections_opened.items()},
        )
        yield metrics.histogram(
            metrics.RELAY_OPEN,
            "Open received to CONNECT_RESPONSE received, at the relay",
            [],
            {(): self.open_latency},
        )
        yield metrics.histogram(
            metrics.STREAM_DURATION,
            "Lifetime of tunnels that opened, from open to close",
            [],
            {(): self.stream_duration},
        )
        yield metrics.histogram(
            metrics.PING_RTT,
            "WebSocket ping round-trip time, by the role of the non-relay end",
            ["role"],
            {(r,): h for r, h in self.ping_rtt.items()},
        )
