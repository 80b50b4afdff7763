"""The relay's counters: plain ints on the hot path, Prometheus families at scrape time."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client.core import Metric

from fastrelay import metrics
from fastrelay.protocol.switch import Conn
from fastrelay.relay.peer import Peer

if TYPE_CHECKING:
    from fastrelay.relay.server import Relay


class RelayStats:
    """The adapter's own numbers (auth, latency histograms, ping round trips);
    the switch keeps the rest (`Switch.stats`), and both are read at scrape time."""

    def __init__(self) -> None:
        self.auth_failures: Counter[str] = Counter({"client": 0, "agent": 0})
        self.head_refusals: Counter[str] = Counter()  # upgrade heads answered 431, by limit
        self.open_latency = metrics.Histogram()
        self.stream_duration = metrics.Histogram(metrics.DURATION_BUCKETS)
        self.ping_rtt = {"client": metrics.Histogram(), "agent": metrics.Histogram()}

    def collect(self, relay: Relay) -> Iterable[Metric]:
        switch = relay.switch
        counts = switch.stats
        conns = {"client": list(switch.clients), "agent": list(switch.agents)}
        yield metrics.gauge(
            metrics.WS_WRITE_BUFFER,
            "Bytes queued on WebSockets, not yet taken by the kernel, by the peer's role",
            ["role"],
            {(r,): sum(_queued(c) for c in cs) for r, cs in conns.items()},
        )
        yield metrics.gauge(
            metrics.CONNECTIONS,
            "Open WebSocket connections by role",
            ["role"],
            {(r,): len(cs) for r, cs in conns.items()},
        )
        yield metrics.gauge(
            metrics.CLUSTER_MEMBERS,
            "Relay instances in the live set this relay announces to agents",
            [],
            {(): len(switch.members)},
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
            {(): switch.active_streams},
        )
        results = {r: counts.results[r] for r in metrics.STREAM_RESULTS}
        yield metrics.counter(
            metrics.STREAMS,
            "Streams opened, by result",
            ["result"],
            {(r,): n for r, n in results.items()},
        )
        # Live connections hold their own counts; closed ones' were folded in.
        for name, doc, attr, closed in (
            (metrics.STREAM_BYTES, "Tunnel payload bytes forwarded", "data_bytes",
             counts.closed_bytes),
            (metrics.STREAM_FRAMES, "TUNNEL_DATA frames forwarded", "data_frames",
             counts.closed_frames),
        ):  # fmt: skip
            up = closed["client"] + sum(getattr(c, attr) for c in conns["client"])
            down = closed["agent"] + sum(getattr(a, attr) for a in conns["agent"])
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
            {(k,): n for k, n in counts.protocol_errors.items()},
        )
        yield metrics.counter(
            metrics.FRAMES_DROPPED,
            "Frames dropped, by reason",
            ["reason"],
            {("unknown_stream",): counts.dropped_unknown_stream},
        )
        yield metrics.counter(
            metrics.LIMIT_HITS,
            "Opens and connections refused, and connections cut off, by the limit they hit",
            ["limit"],
            {(k,): counts.limits[k] + self.head_refusals[k] for k in metrics.LIMITS},
        )
        yield metrics.counter(
            metrics.OPEN_RETRIES,
            "Unanswered opens moved to another agent",
            [],
            {(): counts.open_retries},
        )
        yield metrics.counter(
            metrics.AGENT_STALLS,
            "Agents that left a liveness probe unanswered (no new opens until they answer)",
            [],
            {(): counts.agent_stalls},
        )
        yield metrics.counter(
            metrics.PREFIX + "connections_accepted",
            "WebSocket connections accepted by role",
            ["role"],
            {(r,): n for r, n in counts.connections_opened.items()},
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


def _queued(conn: Conn) -> int:
    link = conn.link
    return link.write_buffer_size() if isinstance(link, Peer) else 0
