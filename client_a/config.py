"""client_a's one validated config object."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fastrelay.config import (
    Option,
    carrier_options,
    check_resolver,
    count_in,
    host_port,
    load_options,
    load_token,
    optional_file,
    positive_float,
    resolver_options,
    size_bytes,
)

OPTIONS = [
    Option("listen", host_port, ("127.0.0.1", 8080), "HTTP proxy listen address"),
    Option(
        "rules",
        optional_file,
        None,
        "filter list: hosts that go through the relay (optional: without it all go direct)",
    ),
    Option("admin", host_port, ("127.0.0.1", 9103), "admin address for /healthz /readyz /metrics"),
    Option("open_timeout", positive_float, 15.0, "seconds to wait for a tunnel to open"),
    Option("dial_timeout", positive_float, 10.0, "seconds to connect a direct target"),
    Option(
        "response_timeout",
        positive_float,
        60.0,
        "seconds a plain-HTTP request waits for the response head (else 504)",
    ),
    Option("max_header_bytes", size_bytes, 64 * 1024, "largest request head accepted (431)"),
    Option(
        "header_timeout",
        positive_float,
        10.0,
        "seconds a browser connection has to send a complete request head (else 408)",
    ),
    Option(
        "max_connections",
        count_in(1, 1_048_576),
        4096,
        "browser connections open at once; over it, new ones get 503",
    ),
    Option("rules_poll", positive_float, 1.0, "seconds between checks of the rules file"),
    Option("carriers", count_in(1, 64), 2, "WebSockets kept to the relay (through the balancer)"),
    *carrier_options(),
    *resolver_options(),
]


@dataclass(frozen=True)
class ClientConfig:
    listen: tuple[str, int]
    relay: str
    rules: Path | None
    admin: tuple[str, int]
    ca_file: Path | None
    token: str
    open_timeout: float
    dial_timeout: float
    resolver: str
    dns_server: tuple[str, ...]
    dns_cache: int
    response_timeout: float
    window: int
    max_window: int
    max_header_bytes: int
    header_timeout: float
    max_connections: int
    max_frame_size: int
    reconnect_max: float
    rules_poll: float
    carriers: int
    ping_interval: float
    log_level: str
    log_format: str
    access_log: Path | None

    def __repr__(self) -> str:  # never print the token
        return f"ClientConfig(listen={self.listen}, relay={self.relay!r}, token=<hidden>)"


def load(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> ClientConfig:
    v = load_options("client", OPTIONS, argv, environ)
    token = load_token(v)
    check_resolver(v)
    return ClientConfig(token=token, **v)
