"""The relay's counters: plain ints on the hot path, Prometheus families at scrape time."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client.core import Metric

from fastrelay import metrics
from fastrelay.metrics import by_label
from fastrelay.protocol.switch import UNKNOWN_POOL, Conn
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
        yield metrics.F_WS_WRITE_BUFFER_RELAY.build(
            by_label({r: sum(_queued(c) for c in cs) for r, cs in conns.items()})
        )
        yield metrics.F_CONNECTIONS.build(by_label({r: len(cs) for r, cs in conns.items()}))
        yield metrics.F_CLUSTER_MEMBERS_RELAY.one(len(switch.members))
        yield metrics.F_CLUSTER_ERRORS.one(relay.membership_errors())
        yield metrics.F_STREAMS_ACTIVE_RELAY.one(switch.active_streams)
        yield metrics.F_STREAMS.build(
            by_label({r: counts.results[r] for r in metrics.STREAM_RESULTS})
        )
        yield metrics.F_POOL_AGENTS.build(
            {(pool,): len(agents) for pool, agents in switch.pools.items()}
        )
        pools = [*switch.pools, UNKNOWN_POOL]
        yield metrics.F_POOL_STREAMS.build(
            {(p, r): counts.pool_results[p, r] for p in pools for r in metrics.STREAM_RESULTS}
        )
        # Live connections hold their own counts; closed ones' were folded in.
        for family, attr, closed in (
            (metrics.F_STREAM_BYTES_RELAY, "data_bytes", counts.closed_bytes),
            (metrics.F_STREAM_FRAMES, "data_frames", counts.closed_frames),
        ):
            up = closed["client"] + sum(getattr(c, attr) for c in conns["client"])
            down = closed["agent"] + sum(getattr(a, attr) for a in conns["agent"])
            yield metrics.by_direction(family, up, down)
        yield metrics.F_AUTH_FAILURES.build(by_label(self.auth_failures))
        yield metrics.protocol_errors(counts.protocol_errors)
        yield metrics.frames_dropped(counts.dropped_unknown_stream)
        yield metrics.F_LIMIT_HITS.build(
            by_label({k: counts.limits[k] + self.head_refusals[k] for k in metrics.LIMITS})
        )
        yield metrics.F_OPEN_RETRIES.one(counts.open_retries)
        yield metrics.F_AGENT_STALLS.one(counts.agent_stalls)
        yield metrics.F_CONNECTIONS_ACCEPTED.build(by_label(counts.connections_opened))
        yield metrics.F_RELAY_OPEN.one(self.open_latency)
        yield metrics.stream_duration(self.stream_duration)
        yield metrics.F_PING_RTT_RELAY.build({(r,): h for r, h in self.ping_rtt.items()})
        seed = relay.seed_stats
        yield metrics.F_SEED_CONNECTIONS.one(len(relay.seed_peers))
        yield metrics.F_SEED_SESSIONS.build(
            by_label({"opened": seed.sessions, "refused": seed.refused})
        )
        yield metrics.F_SEED_UNKNOWN_SESSION.one(seed.unknown_session)
        yield metrics.F_SEED_READ_PAUSES.one(seed.read_pauses)
        # Without --client-rules: 0 rules, version "" (0), no reloads.
        pushed = relay.client_rules
        yield metrics.F_RULES_RELAY.build({("pushed",): len(pushed.entries) if pushed else 0})
        yield metrics.rules_version(pushed.version if pushed else None)
        yield metrics.F_RULES_RELOADS_RELAY.build(by_label(relay.rules_reloads))


def _queued(conn: Conn) -> int:
    link = conn.link
    return link.write_buffer_size() if isinstance(link, Peer) else 0
