"""The agent's one validated config object."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.policy import EgressPolicy, PolicyError
from fastrelay.config import (
    ConfigError,
    Option,
    host_port,
    load_options,
    optional_file,
    positive_float,
    read_secret_file,
    size_bytes,
    text_value,
    ws_url,
)
from fastrelay.protocol.messages import DEFAULT_WINDOW

OPTIONS = [
    Option("relay", ws_url, "ws://127.0.0.1:8765", "relay URL, ws:// or wss://"),
    Option("admin", host_port, ("127.0.0.1", 9102), "admin address for /healthz /readyz /metrics"),
    Option("allow", text_value, (), "egress allowed: CIDR, host pattern or host:port", repeat=True),
    Option("deny", text_value, (), "egress denied: CIDR, host pattern or host:port", repeat=True),
    Option("ca_file", optional_file, None, "CA bundle to verify a wss:// relay"),
    Option("token", text_value, "", "bearer token for the relay", flag=False),
    Option("token_file", optional_file, None, "file holding the bearer token"),
    Option("dial_timeout", positive_float, 10.0, "seconds for DNS plus TCP connect"),
    Option("window", size_bytes, DEFAULT_WINDOW, "per-stream receive window"),
    Option("max_frame_size", size_bytes, 1024 * 1024, "largest WebSocket frame accepted"),
    Option("reconnect_max", positive_float, 10.0, "longest pause between relay redials"),
]


@dataclass(frozen=True)
class AgentConfig:
    relay: str
    admin: tuple[str, int]
    policy: EgressPolicy
    ca_file: Path | None
    token: str
    dial_timeout: float
    window: int
    max_frame_size: int
    reconnect_max: float
    ping_interval: float
    log_level: str
    log_format: str

    def __repr__(self) -> str:  # never print the token
        return f"AgentConfig(relay={self.relay!r}, admin={self.admin}, token=<hidden>)"


def load_token(values: dict) -> str:
    """FASTRELAY_TOKEN or --token-file: the same rule for client_a and the agent."""
    token = values.pop("token")
    from_file = read_secret_file(values.pop("token_file"), "--token-file")
    if token and from_file:
        raise ConfigError("give the token once: FASTRELAY_TOKEN or --token-file, not both")
    token = token or (from_file[0] if from_file else "")
    if not token:
        raise ConfigError("no token: set FASTRELAY_TOKEN or --token-file")
    return token


def load(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> AgentConfig:
    v = load_options("agent", OPTIONS, argv, environ)
    token = load_token(v)
    try:
        policy = EgressPolicy(allow=v.pop("allow"), deny=v.pop("deny"))
    except PolicyError as exc:
        raise ConfigError(f"--allow/--deny: {exc}") from None
    return AgentConfig(token=token, policy=policy, **v)
