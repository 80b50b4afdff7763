"""The relay's one validated config object."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fastrelay.config import (
    ConfigError,
    Option,
    boolean,
    count_in,
    fraction,
    host_port,
    load_options,
    name_list,
    optional_file,
    positive_float,
    read_secret_file,
    redis_url,
    size_bytes,
    token_list,
)
from fastrelay.protocol.frames import MAX_PAYLOAD
from fastrelay.protocol.switch import SLOT_COUNT, SLOT_SIZE, Limits
from fastrelay.relay.rules import load_client_rules
from fastrelay.reload import load_at_start


def worker_count(text: str) -> int:
    if str(text).strip().lower() == "auto":
        return max(1, len(os.sched_getaffinity(0)))
    return count_in(1, 256)(text)


OPTIONS = [
    Option("listen", host_port, ("127.0.0.1", 8765), "WebSocket listen address HOST:PORT"),
    Option("admin", host_port, ("127.0.0.1", 9101), "admin address for /healthz /readyz /metrics"),
    Option("connect_timeout", positive_float, 10.0, "seconds to wait for an agent's answer"),
    Option("tls_cert", optional_file, None, "TLS certificate chain (PEM) for wss://"),
    Option("tls_key", optional_file, None, "TLS private key (PEM) for wss://"),
    Option("client_tokens", token_list, (), "client_a bearer tokens, comma-separated", flag=False),
    Option("agent_tokens", token_list, (), "agent bearer tokens, comma-separated", flag=False),
    Option("client_tokens_file", optional_file, None, "file with client_a tokens, one per line"),
    Option("agent_tokens_file", optional_file, None, "file with agent tokens, one per line"),
    Option("max_frame_size", size_bytes, 1024 * 1024, "largest WebSocket frame accepted"),
    Option(
        "max_connection_buffer",
        size_bytes,
        Limits.connection_buffer,
        "bytes queued for one connection before it is cut off (1008)",
    ),
    Option(
        "max_streams_per_connection",
        count_in(1, SLOT_SIZE - 1),
        Limits.streams_per_connection,
        "streams one WebSocket carries at once",
    ),
    Option(
        "max_streams_per_agent",
        count_in(1, 1 << 24),
        Limits.streams_per_agent,
        "streams one agent WebSocket carries at once (every client_a's together)",
    ),
    Option(
        "max_opens_per_connection",
        count_in(1, 1 << 20),
        Limits.opens_per_connection,
        "opens in flight from one client_a WebSocket",
    ),
    Option(
        "max_connections",
        count_in(1, SLOT_COUNT - 1),
        Limits.connections,
        "WebSocket connections, client_a and agents together",
    ),
    Option(
        "max_connections_per_token",
        count_in(1, SLOT_COUNT - 1),
        Limits.connections_per_token,
        "WebSocket connections per token (over it: HTTP 429)",
    ),
    Option(
        "max_opens_per_agent",
        count_in(1, 1 << 20),
        Limits.opens_per_agent,
        "opens in flight (dials) per agent connection",
    ),
    Option(
        "max_token_share",
        fraction,
        Limits.token_share,
        "share of one agent's streams and opens in flight one client token may hold "
        "while other client tokens are connected",
        metavar="FRACTION",
    ),
    Option(
        "max_pools",
        count_in(1, 4096),
        Limits.max_pools,
        "distinct agent pools (agents of one more: HTTP 503 at the upgrade)",
    ),
    Option(
        "open_retry_after",
        positive_float,
        Limits.open_retry_after,
        "seconds an open may go unanswered before it moves to another agent, once",
    ),
    Option(
        "seed_window",
        size_bytes,
        1024 * 1024,
        "receive window the relay grants an agent per seed-dialect session (/v1/seed)",
    ),
    Option(
        "client_rules",
        optional_file,
        None,
        "rules file pushed to every client_a (RULES); reloaded on SIGHUP and when it changes",
    ),
    Option("client_rules_poll", positive_float, 1.0, "seconds between checks of --client-rules"),
    Option("drain_timeout", positive_float, 30.0, "seconds open tunnels may finish on shutdown"),
    Option(
        "instance_id", str, "", "instance id announced in HELLO (default: random)", metavar="ID"
    ),
    Option("cluster", redis_url, "", "Redis URL holding the live relay set (scale-out)"),
    Option(
        "cluster_name", str, "fastrelay", "Redis key prefix: one per deployment", metavar="NAME"
    ),
    Option("cluster_ttl", positive_float, 5.0, "seconds a dead relay stays in the set"),
    Option("peers", name_list, (), "static relay instance ids, comma-separated (no Redis)"),
    Option(
        "workers",
        worker_count,
        1,
        "relay processes sharing --listen (N or auto: one per core)",
        metavar="N|auto",
    ),
    Option(
        "reuse_port",
        boolean,
        False,
        "SO_REUSEPORT on --listen (set for --workers' children)",
        hidden=True,
    ),
]


@dataclass(frozen=True)
class RelayConfig:
    listen: tuple[str, int]
    admin: tuple[str, int]
    connect_timeout: float
    tls_cert: Path | None
    tls_key: Path | None
    client_tokens: tuple[str, ...]
    agent_tokens: tuple[str, ...]
    max_frame_size: int
    max_connection_buffer: int
    max_streams_per_connection: int
    max_streams_per_agent: int
    max_opens_per_connection: int
    max_connections: int
    max_connections_per_token: int
    max_opens_per_agent: int
    max_token_share: float
    max_pools: int
    open_retry_after: float
    seed_window: int
    client_rules: Path | None
    client_rules_poll: float
    drain_timeout: float
    instance_id: str
    cluster: str
    cluster_name: str
    cluster_ttl: float
    peers: tuple[str, ...]
    workers: int
    reuse_port: bool
    ping_interval: float
    log_level: str
    log_format: str
    access_log: Path | None
    argv: tuple[str, ...]  # as given: --workers passes it on to each worker

    def limits(self) -> Limits:
        """The bounds the relay's switch enforces."""
        return Limits(
            max_message=self.max_frame_size,
            connection_buffer=self.max_connection_buffer,
            streams_per_connection=self.max_streams_per_connection,
            streams_per_agent=self.max_streams_per_agent,
            opens_per_connection=self.max_opens_per_connection,
            connections=self.max_connections,
            connections_per_token=self.max_connections_per_token,
            opens_per_agent=self.max_opens_per_agent,
            token_share=self.max_token_share,
            max_pools=self.max_pools,
            connect_timeout=self.connect_timeout,
            open_retry_after=self.open_retry_after,
        )

    def __repr__(self) -> str:  # never print tokens
        return f"RelayConfig(listen={self.listen}, admin={self.admin}, tokens=<hidden>)"


def load(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> RelayConfig:
    v = load_options("relay", OPTIONS, argv, environ)
    client = v.pop("client_tokens") + read_secret_file(
        v.pop("client_tokens_file"), "--client-tokens-file"
    )
    agent = v.pop("agent_tokens") + read_secret_file(
        v.pop("agent_tokens_file"), "--agent-tokens-file"
    )
    if not client:
        raise ConfigError("no client_a tokens: set FASTRELAY_CLIENT_TOKENS or --client-tokens-file")
    if not agent:
        raise ConfigError("no agent tokens: set FASTRELAY_AGENT_TOKENS or --agent-tokens-file")
    if (v["tls_cert"] is None) != (v["tls_key"] is None):
        raise ConfigError("--tls-cert and --tls-key go together")
    if v["peers"] and v["cluster"]:
        raise ConfigError("--peers and --cluster are two ways to list relays: give one")
    if v["peers"] and not v["instance_id"]:
        raise ConfigError("--peers needs --instance-id: the other relays list this one by it")
    if v["max_frame_size"] > MAX_PAYLOAD:
        raise ConfigError(f"--max-frame-size: at most {MAX_PAYLOAD} bytes (the mux frame limit)")
    if v["max_streams_per_agent"] < v["max_streams_per_connection"]:
        raise ConfigError("--max-streams-per-agent must be at least --max-streams-per-connection")
    if v["max_connection_buffer"] < 2 * v["max_frame_size"]:
        raise ConfigError("--max-connection-buffer must be at least twice --max-frame-size")
    if v["client_rules"] is not None:  # checked here too, so a supervisor exits 2 for it
        max_frame_size = v["max_frame_size"]
        load_at_start(
            "--client-rules", v["client_rules"], lambda p: load_client_rules(p, max_frame_size)
        )
    return RelayConfig(client_tokens=client, agent_tokens=agent, argv=tuple(argv), **v)
