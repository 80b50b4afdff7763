"""The agent's one validated config object."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.policy import EgressPolicy, PolicyError
from fastrelay.config import (
    ConfigError,
    Option,
    carrier_options,
    choice,
    host_port,
    load_options,
    load_token,
    positive_float,
    text_value,
)
from fastrelay.protocol.messages import DEFAULT_POOL, pool_error
from fastrelay.protocol.namecache import MAX_NAMES


def dns_server(text: str) -> str:
    """'192.0.2.53', '192.0.2.53:5353', '2001:db8::53', '[2001:db8::53]:5353' -> c-ares'
    form (IP:PORT, [IPv6]:PORT). An address, not a name: the resolver cannot look up itself."""
    raw = str(text).strip()
    host, port = raw, "53"
    if raw.startswith("["):
        host, sep, rest = raw[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"expected IP, IP:PORT or [IPv6]:PORT, got {text!r}")
        port = rest[1:] or "53"
    elif raw.count(":") == 1:
        host, _, port = raw.partition(":")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"expected IP, IP:PORT or [IPv6]:PORT, got {text!r}") from None
    if not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ValueError(f"expected a port from 1 to 65535 in {text!r}")
    return f"{ip}:{int(port)}" if ip.version == 4 else f"[{ip}]:{int(port)}"


def name_count(text: str) -> int:
    raw = str(text).strip()
    if not (raw.isascii() and raw.isdigit()) or int(raw) > 1_000_000:
        raise ValueError(f"expected a whole number from 0 to 1000000, got {text!r}")
    return int(raw)


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
        "resolver",
        choice("cares", "system"),
        "cares",
        "name look-ups: cares (c-ares: no thread pool, a TTL cache) or system (getaddrinfo)",
    ),
    Option(
        "dns_server",
        dns_server,
        (),
        "DNS server for --resolver cares; repeat for more (default: /etc/resolv.conf)",
        repeat=True,
        metavar="IP[:PORT]",
    ),
    Option(
        "dns_cache",
        name_count,
        MAX_NAMES,
        "names --resolver cares keeps for their TTL (at most 300 s); 0: none",
        metavar="N",
    ),
    Option(
        "pool",
        pool_name,
        DEFAULT_POOL,
        "the agent pool to join: opens naming it come here (1-64 of a-z 0-9 _ -)",
        metavar="NAME",
    ),
    *carrier_options(),
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
