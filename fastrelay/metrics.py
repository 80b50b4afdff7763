"""Every metric name and help text in one place, exported at scrape time from plain ints.

Hot paths increment integer attributes on `__slots__` objects; a custom
collector turns them into Prometheus families only when /metrics is scraped,
so no prometheus-client call ever runs per frame.  Each family is declared
once below as a :class:`Family` (kind, name, help, labels); a program's
collector only supplies the values.  Where programs export the same name with
their own help text or labels, each variant is declared here, next to the others.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

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

WORKERS = PREFIX + "workers"
WORKER_RESTARTS = PREFIX + "worker_restarts"
CONNECTIONS_ACCEPTED = PREFIX + "connections_accepted"
RULES = PREFIX + "rules"
RULES_RELOADS = PREFIX + "rules_reloads"
RULES_VERSION = PREFIX + "rules_version"  # info-style: 1, with the pushed rules' version
CLIENT_RETRIES = PREFIX + "client_retries"
BUILD = PREFIX + "build"

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
WINDOW_GROWTHS = PREFIX + "window_growths"
WINDOW_BACKOFFS = PREFIX + "window_backoffs"
SEND_BACKOFFS = PREFIX + "send_backoffs"
RECONNECTS = PREFIX + "reconnects"
WS_WRITE_BUFFER = PREFIX + "ws_write_buffer_bytes"
RELAY_CONNECTED = PREFIX + "relay_connected"
CLIENT_REQUESTS = PREFIX + "client_requests"
AGENT_DIALS = PREFIX + "agent_dials"
DNS_LOOKUPS = PREFIX + "dns_lookups"
DNS_CACHE = PREFIX + "dns_cache_names"
LIMIT_HITS = PREFIX + "limit_hits"
OPEN_RETRIES = PREFIX + "open_retries"
AGENT_STALLS = PREFIX + "agent_stalls"
POOL_AGENTS = PREFIX + "pool_agents"
POOL_STREAMS = PREFIX + "pool_streams"  # exported as fastrelay_pool_streams_total
ACCEPT_PAUSES = PREFIX + "accept_pauses"  # relay and client_a listeners out of fds
CLIENT_CONNECTIONS_DROPPED = PREFIX + "client_connections_dropped"  # 408 / 503 by client_a

SEED_CONNECTIONS = PREFIX + "seed_connections"
SEED_SESSIONS = PREFIX + "seed_sessions"
SEED_UNKNOWN_SESSION = PREFIX + "seed_unknown_session"
SEED_READ_PAUSES = PREFIX + "seed_read_pauses"

READY = PREFIX + "ready"
CLUSTER_MEMBERS = PREFIX + "cluster_members"
CLUSTER_ERRORS = PREFIX + "cluster_errors"
RELAY_DIALS = PREFIX + "relay_dials"
STREAM_DURATION = PREFIX + "stream_duration_seconds"
PING_RTT = PREFIX + "ws_ping_rtt_seconds"
PATH_QUEUEING = PREFIX + "path_queueing_seconds"
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
    "opens_per_connection", "opens_per_agent", "token_streams", "token_opens",
    "connection_buffer", "pools", "head_size", "head_line", "head_fields",
)  # fmt: skip


def counter(name: str, doc: str, labels: Iterable[str], values: Mapping[tuple, float]) -> Metric:
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
        out: list[tuple[str, float]] = []
        cumulative = 0
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


@dataclass(frozen=True, slots=True)
class Family:
    """One metric family as exported: kind, name, help text and label names.

    ``family.build(values)`` is its builder; ``values`` maps label values to numbers (counters,
    gauges) or to :class:`Histogram` s (histograms).
    """

    kind: Literal["counter", "gauge", "histogram"]
    name: str
    help: str
    labels: tuple[str, ...] = ()

    def build(self, values: Mapping[tuple[str, ...], float | Histogram]) -> Metric:
        if self.kind == "histogram":
            hists = {k: v for k, v in values.items() if isinstance(v, Histogram)}
            return histogram(self.name, self.help, self.labels, hists)
        numbers = {k: v for k, v in values.items() if not isinstance(v, Histogram)}
        if self.kind == "counter":
            return counter(self.name, self.help, self.labels, numbers)
        return gauge(self.name, self.help, self.labels, numbers)

    def one(self, value: float | Histogram) -> Metric:
        """The family with a single unlabelled sample."""
        return self.build({(): value})


# --- The families, by who exports them ---

# Every program.
F_READY = Family("gauge", READY, "1 when /readyz answers 200")
F_PROTOCOL_ERRORS = Family("counter", PROTOCOL_ERRORS, "Protocol errors by kind", ("kind",))
F_FRAMES_DROPPED = Family("counter", FRAMES_DROPPED, "Frames dropped, by reason", ("reason",))
_DURATION_HELP = "Lifetime of tunnels that opened, from open to close"
F_STREAM_DURATION = Family("histogram", STREAM_DURATION, _DURATION_HELP)
F_STREAM_DURATION_BY_ROUTE = Family("histogram", STREAM_DURATION, _DURATION_HELP, ("route",))
F_STREAM_BYTES_RELAY = Family(
    "counter", STREAM_BYTES, "Tunnel payload bytes forwarded", ("direction",)
)
F_STREAM_BYTES_AGENT = Family("counter", STREAM_BYTES, "Tunnel payload bytes", ("direction",))
F_STREAM_BYTES_CLIENT = Family(
    "counter", STREAM_BYTES, "Tunnel payload bytes, by direction and route", ("direction", "route")
)
F_ACCEPT_PAUSES = Family(
    "counter",
    ACCEPT_PAUSES,
    "Times a listener stopped accepting for a moment, out of fds (or kernel memory)",
)

# The relay.
F_WS_WRITE_BUFFER_RELAY = Family(
    "gauge",
    WS_WRITE_BUFFER,
    "Bytes queued on WebSockets, not yet taken by the kernel, by the peer's role",
    ("role",),
)
F_CONNECTIONS = Family("gauge", CONNECTIONS, "Open WebSocket connections by role", ("role",))
F_CLUSTER_MEMBERS_RELAY = Family(
    "gauge", CLUSTER_MEMBERS, "Relay instances in the live set this relay announces to agents"
)
F_CLUSTER_ERRORS = Family(
    "counter", CLUSTER_ERRORS, "Failed membership heartbeats (Redis unreachable)"
)
F_STREAMS_ACTIVE_RELAY = Family("gauge", STREAMS_ACTIVE, "Streams open through this relay")
F_STREAMS = Family("counter", STREAMS, "Streams opened, by result", ("result",))
F_POOL_AGENTS = Family("gauge", POOL_AGENTS, "Agents connected, by pool", ("pool",))
F_POOL_STREAMS = Family(
    "counter",
    POOL_STREAMS,
    "Streams opened, by the agent pool they named and result",
    ("pool", "result"),
)
F_STREAM_FRAMES = Family("counter", STREAM_FRAMES, "TUNNEL_DATA frames forwarded", ("direction",))
F_AUTH_FAILURES = Family("counter", AUTH_FAILURES, "Rejected WebSocket upgrades by role", ("role",))
F_LIMIT_HITS = Family(
    "counter",
    LIMIT_HITS,
    "Opens and connections refused, and connections cut off, by the limit they hit",
    ("limit",),
)
F_OPEN_RETRIES = Family("counter", OPEN_RETRIES, "Unanswered opens moved to another agent")
F_AGENT_STALLS = Family(
    "counter",
    AGENT_STALLS,
    "Agents that left a liveness probe unanswered (no new opens until they answer)",
)
F_CONNECTIONS_ACCEPTED = Family(
    "counter", CONNECTIONS_ACCEPTED, "WebSocket connections accepted by role", ("role",)
)
F_RELAY_OPEN = Family(
    "histogram", RELAY_OPEN, "Open received to CONNECT_RESPONSE received, at the relay"
)
F_PING_RTT_RELAY = Family(
    "histogram",
    PING_RTT,
    "WebSocket ping round-trip time, by the role of the non-relay end",
    ("role",),
)
F_WORKERS = Family("gauge", WORKERS, "Relay worker processes alive")
F_WORKER_RESTARTS = Family("counter", WORKER_RESTARTS, "Relay workers restarted after they died")

# The relay's seed dialect (/v1/seed, fastrelay/protocol/seed.py).
F_SEED_CONNECTIONS = Family(
    "gauge", SEED_CONNECTIONS, "Seed-dialect WebSockets open (also counted as role client)"
)
F_SEED_SESSIONS = Family(
    "counter",
    SEED_SESSIONS,
    "Seed-dialect CONNECTs: opened (handed to the switch) or refused by the bridge itself",
    ("result",),
)
F_SEED_UNKNOWN_SESSION = Family(
    "counter",
    SEED_UNKNOWN_SESSION,
    "Seed-dialect TUNNEL_DATA or TUNNEL_CLOSE for no open session (answered TUNNEL_ERROR)",
)
F_SEED_READ_PAUSES = Family(
    "counter",
    SEED_READ_PAUSES,
    "Times the relay stopped reading a seed client: its bytes ran past the agent's credit",
)

# Programs with carriers to the relay (client_a and the agent).
F_RELAY_CONNECTED = Family("gauge", RELAY_CONNECTED, "Relay WebSockets up and open for new streams")
F_WS_WRITE_BUFFER_CARRIER = Family(
    "gauge",
    WS_WRITE_BUFFER,
    "Bytes queued on the relay connections, not yet taken by the kernel",
    ("role",),
)
F_RECONNECTS = Family("counter", RECONNECTS, "Relay redials by role", ("role",))
F_PING_RTT_CARRIER = Family(
    "histogram", PING_RTT, "WebSocket ping round-trip time to the relay", ("role",)
)
F_PATH_QUEUEING = Family(
    "histogram",
    PATH_QUEUEING,
    "Queueing delay on the path to the relay (to_relay) and back (from_relay), from each "
    "probe's one-way times over the least ones (round_trip: a relay that does not stamp "
    "probes), timed while senders are blocked on this program's windows or credit",
    ("role", "direction"),
)
F_FLOW_CONTROL_STALLS = Family("counter", FLOW_CONTROL_STALLS, "Times a stream waited for credit")
F_WINDOW_GROWTHS = Family(
    "counter",
    WINDOW_GROWTHS,
    "Times a stream's receive window was aimed higher: its sender ran out of credit while this "
    "end kept up (a long path)",
)
F_WINDOW_BACKOFFS = Family(
    "counter",
    WINDOW_BACKOFFS,
    "Times the receive windows of a relay connection were cut because the round trip to the "
    "relay rose: this connection's data queues on the path (a slow link)",
)
F_SEND_BACKOFFS = Family(
    "counter",
    SEND_BACKOFFS,
    "Times what each stream of a relay connection may have unacknowledged was capped lower "
    "because the round trip to the relay rose: what this program sends queues on the path",
)
F_BACKPRESSURE_PAUSES = Family(
    "counter", BACKPRESSURE_PAUSES, "Times the relay connection's backlog paused local sockets"
)

# The agent.
F_AGENT_DIALS = Family("counter", AGENT_DIALS, "Target dials by result", ("result",))
F_STREAMS_ACTIVE_AGENT = Family("gauge", STREAMS_ACTIVE, "Streams open at this agent")
F_DNS_LOOKUPS = Family(
    "counter",
    DNS_LOOKUPS,
    "Name look-ups by result (cached: a cache hit; joined: shared a query in flight)",
    ("result",),
)
F_DNS_CACHE = Family("gauge", DNS_CACHE, "Names in the resolver's cache")
F_AGENT_DIAL = Family(
    "histogram", AGENT_DIAL, "DNS lookup plus TCP connect to the target, successful dials"
)
F_RELAY_DIALS_AGENT = Family(
    "counter",
    RELAY_DIALS,
    "Dials of the relay URL by result (duplicate: an instance already held)",
    ("role", "result"),
)
F_CLUSTER_MEMBERS_AGENT = Family(
    "gauge",
    CLUSTER_MEMBERS,
    "Relay instances the mesh wants (the live set the relays announce)",
)

# client_a.
F_CLIENT_REQUESTS = Family(
    "counter", CLIENT_REQUESTS, "Browser requests by route and result", ("route", "result")
)
F_STREAMS_ACTIVE_CLIENT = Family(
    "gauge", STREAMS_ACTIVE, "Open tunnels at this client_a, by route", ("route",)
)
F_CLIENT_CONNECT = Family(
    "histogram",
    CLIENT_CONNECT,
    "Request received to 200 sent to the browser, successful opens",
    ("route",),
)
F_CLIENT_FIRST_BYTE = Family(
    "histogram",
    CLIENT_FIRST_BYTE,
    "200 sent to the browser to the first byte from the target",
    ("route",),
)
F_RULES = Family(
    "gauge",
    RULES,
    "Rules in effect by source: client_a's own file (local) and the relay's (pushed)",
    ("source",),
)
F_RULES_RELOADS = Family("counter", RULES_RELOADS, "Rules reloads by result", ("result",))
F_RULES_VERSION = Family(
    "gauge",
    RULES_VERSION,
    "1 for the version (SHA-256) of the rules the relay pushes (--client-rules)",
    ("source", "version"),
)


def rules_version(version: str | None) -> Metric:
    """1 labelled with the pushed rules' version; 0 with version "" while there are none."""
    return F_RULES_VERSION.build({("pushed", version or ""): 1 if version else 0})


# The relay: the rules it pushes to client_a (--client-rules).
F_RULES_RELAY = Family(
    "gauge", RULES, "Rules this relay pushes to client_a (--client-rules)", ("source",)
)
F_RULES_RELOADS_RELAY = Family(
    "counter", RULES_RELOADS, "--client-rules reloads by result", ("result",)
)
F_CLIENT_RETRIES = Family(
    "counter", CLIENT_RETRIES, "Relay opens retried on another carrier after a retryable 503"
)
F_RELAY_DIALS_CLIENT = Family(
    "counter", RELAY_DIALS, "Dials of the relay URL by result", ("role", "result")
)
F_CLIENT_CONNECTIONS_DROPPED = Family(
    "counter",
    CLIENT_CONNECTIONS_DROPPED,
    "Browser connections client_a answered itself and closed: header_timeout (408), "
    "max_connections (503)",
    ("reason",),
)


# --- Builders for the families several programs export ---


def protocol_errors(by_kind: Mapping[str, int]) -> Metric:
    return F_PROTOCOL_ERRORS.build({(kind,): n for kind, n in by_kind.items()})


def frames_dropped(unknown_stream: int) -> Metric:
    return F_FRAMES_DROPPED.build({("unknown_stream",): unknown_stream})


def stream_duration(hist: Histogram) -> Metric:
    return F_STREAM_DURATION.one(hist)


def stream_duration_by_route(by_route: Mapping[str, Histogram]) -> Metric:
    return F_STREAM_DURATION_BY_ROUTE.build({(route,): h for route, h in by_route.items()})


def by_direction(family: Family, up: int, down: int) -> Metric:
    """A family with one ``direction`` label (upstream, downstream), as stream bytes are."""
    return family.build({("upstream",): up, ("downstream",): down})


def stream_bytes_by_route(by_route: Mapping[str, tuple[int, int]]) -> Metric:
    """client_a's ``fastrelay_stream_bytes``: (upstream, downstream) for each route."""
    values: dict[tuple[str, ...], float] = {}
    for route, (up, down) in by_route.items():
        values[("upstream", route)] = up
        values[("downstream", route)] = down
    return F_STREAM_BYTES_CLIENT.build(values)


def by_label(values: Mapping[str, float]) -> dict[tuple[str, ...], float]:
    """``{"a": 1}`` as ``{("a",): 1}``: the values of a family with one label."""
    return {(key,): n for key, n in values.items()}


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
    Info(BUILD, "fastrelay build", registry=registry).info(
        {"version": __version__, "program": program}
    )

    def collect() -> Iterable[Metric]:
        yield F_READY.one(float(ready()[0]))
        yield from collect_fn()

    registry.register(ScrapeCollector(collect))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
