"""The agent's one validated config object."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.policy import EgressPolicy, PolicyError
from fastrelay.config import (
    ConfigError,
    Option,
    carrier_options,
    host_port,
    load_options,
    load_token,
    positive_float,
    resolver_options,
    text_value,
)
from fastrelay.protocol.messages import DEFAULT_POOL, pool_error


def pool_name(text: str) -> str:
    why = pool_error(text)
    if why is not None:
        raise ValueError(why)
    return text


OPTIONS = [
    Option("admin", host_port, ("127.0.0.1", 9102), "admin address for /healthz /readyz /metrics"),
    Option(
        "allow",
        text_value,
        (),
        "egress allowed: CIDR, host pattern or host:port; repeat for more",
        repeat=True,
        metavar="SPEC",
    ),
    Option(
        "deny",
        text_value,
        (),
        "egress denied (wins over --allow): CIDR, host pattern or host:port",
        repeat=True,
        metavar="SPEC",
    ),
    Option("dial_timeout", positive_float, 10.0, "seconds for DNS plus TCP connect"),
    Option(
        "pool",
        pool_name,
        DEFAULT_POOL,
        "the agent pool to join: opens naming it come here (1-64 of a-z 0-9 _ -)",
        metavar="NAME",
    ),
    *carrier_options(),
    *resolver_options(),
]


@dataclass(frozen=True)
class AgentConfig:
    relay: str
    admin: tuple[str, int]
    policy: EgressPolicy
    ca_file: Path | None
    token: str
    dial_timeout: float
    resolver: str
    dns_server: tuple[str, ...]
    dns_cache: int
    pool: str
    window: int
    max_window: int
    max_frame_size: int
    reconnect_max: float
    ping_interval: float
    log_level: str
    log_format: str
    access_log: Path | None

    def __repr__(self) -> str:  # never print the token
        return (
            f"AgentConfig(relay={self.relay!r}, pool={self.pool!r}, admin={self.admin}, "
            "token=<hidden>)"
        )


DESCRIPTION = """\
The agent dials the relay and opens the TCP connections client_a asks for.

Egress policy: by default the agent refuses loopback, private (RFC 1918, fc00::/7),
link-local (including 169.254.169.254), other special-purpose addresses and the
host's own interface addresses; public addresses are allowed. --allow lets a target
in one of those ranges through; --deny refuses more and wins over --allow. A SPEC is
a CIDR (10.0.0.0/8), a host pattern (example.com, *.example.com, .example.com) or
either with a port (example.com:443, [2001:db8::/32]:443). The policy is checked
against the resolved address (docs/OPERATIONS.md, Egress blocklist)."""


def load(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> AgentConfig:
    v = load_options("agent", OPTIONS, argv, environ, DESCRIPTION)
    token = load_token(v)
    try:
        policy = EgressPolicy(allow=v.pop("allow"), deny=v.pop("deny"))
    except PolicyError as exc:
        raise ConfigError(f"--allow/--deny: {exc}") from None
    if v["dns_server"] and v["resolver"] == "system":
        raise ConfigError(
            "--dns-server: the system resolver reads /etc/resolv.conf; it needs --resolver cares"
        )
    v["dns_server"] = tuple(v["dns_server"])
    return AgentConfig(token=token, policy=policy, **v)
