"""Egress policy: decides whether the agent may dial a (host, resolved IP, port) target.

Specs come from ``--allow SPEC`` / ``--deny SPEC``: a host pattern (rules syntax:
``example.com``, ``*.example.com``, ``.example.com``), an IP/CIDR, or either with a port:
``HOST_PATTERN:PORT``, ``IPv4CIDR:PORT``, ``[IPv6CIDR]:PORT``.  An unbracketed IPv6 spec never
carries a port, so ``::1:80`` is the address ``::1:80``, not ``::1`` port 80.

Hosts are judged by their normalised form (:func:`fastrelay.protocol.hostname.normalize_hostname`:
IDNA UTS #46 mapping, one trailing dot dropped), the name the dialer resolves, so a look-alike
such as ``rt-loop.test`` spelt with a fullwidth r (U+FF52) meets ``--deny rt-loop.test``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from client_a.rules import (
    HostPattern,
    Network,
    Pattern,
    PatternError,
    normalize_host,
    parse_ip,
    parse_pattern,
)
from fastrelay.protocol.hostname import HostnameError, normalize_hostname

__all__ = ["DEFAULT_BLOCKED", "Decision", "EgressPolicy", "PolicyError"]

_N = ipaddress.ip_network

# The ranges are disjoint; the label of the one that matches becomes the refusal reason.
# IPv4-mapped IPv6 needs no entry: parse_ip() unmaps it, so ::ffff:127.0.0.1 hits 127.0.0.0/8.
DEFAULT_BLOCKED: tuple[tuple[Network, str], ...] = (
    (_N("127.0.0.0/8"), "loopback"),
    (_N("::1/128"), "loopback"),
    (_N("169.254.0.0/16"), "link-local"),
    (_N("fe80::/10"), "link-local"),
    (_N("10.0.0.0/8"), "private"),
    (_N("172.16.0.0/12"), "private"),
    (_N("192.168.0.0/16"), "private"),
    (_N("fc00::/7"), "private"),
    (_N("0.0.0.0/8"), "this-network"),
    (_N("100.64.0.0/10"), "shared (CGNAT)"),
    (_N("224.0.0.0/4"), "multicast"),
    (_N("ff00::/8"), "multicast"),
    (_N("::/128"), "unspecified"),
)


class PolicyError(ValueError):
    """An ``--allow``/``--deny`` spec is malformed; the message names the spec."""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str


def _in_network(ip: tuple[int, int], net: Network) -> bool:
    version, value = ip
    if version != net.version:
        return False
    return value & int(net.netmask) == int(net.network_address)


@dataclass(frozen=True, slots=True)
class _Spec:
    text: str  # as given on the command line, for reasons
    pattern: Pattern
    port: int | None

    def matches(self, name: str | None, ip: tuple[int, int], port: int) -> bool:
        """``name`` is the normalized hostname, or None when the host is an IP literal."""
        if self.port is not None and self.port != port:
            return False
        if isinstance(self.pattern, HostPattern):
            return name is not None and self.pattern.matches(name)
        return _in_network(ip, self.pattern)


def _parse_port(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise PatternError(f"port {text!r} is not a number")
    port = int(text)
    if not 1 <= port <= 65535:
        raise PatternError(f"port {port} is out of range 1-65535")
    return port


def _parse_spec_parts(spec: str) -> tuple[Pattern, int | None]:
    if spec.startswith("["):
        inner, bracket, rest = spec[1:].partition("]")
        if not bracket:
            raise PatternError("missing ']'")
        if rest and not rest.startswith(":"):
            raise PatternError("expected ':PORT' after ']'")
        if ":" not in inner:
            raise PatternError("brackets are only for IPv6 addresses")
        return parse_pattern(inner), _parse_port(rest[1:]) if rest else None
    if spec.count(":") > 1:
        return parse_pattern(spec), None
    target, colon, port = spec.partition(":")
    return parse_pattern(target), _parse_port(port) if colon else None


def _parse_spec(flag: str, spec: str) -> _Spec:
    try:
        pattern, port = _parse_spec_parts(spec)
    except PatternError as exc:
        raise PolicyError(f"invalid {flag} spec {spec!r}: {exc}") from None
    return _Spec(f"{flag} {spec}", pattern, port)


class EgressPolicy:
    """Deny specs, then allow specs, then the default-blocked ranges; otherwise permit."""

    def __init__(self, allow: Sequence[str] = (), deny: Sequence[str] = ()) -> None:
        # A bare str is a Sequence[str] too; iterating it per character would be a silent bug.
        if isinstance(allow, str) or isinstance(deny, str):
            raise TypeError("allow and deny must be sequences of specs, not a single string")
        self._allow = tuple(_parse_spec("--allow", spec) for spec in allow)
        self._deny = tuple(_parse_spec("--deny", spec) for spec in deny)

    def __repr__(self) -> str:
        allow = [s.text.removeprefix("--allow ") for s in self._allow]
        deny = [s.text.removeprefix("--deny ") for s in self._deny]
        return f"EgressPolicy(allow={allow!r}, deny={deny!r})"

    def check_name(self, host: str, port: int) -> Decision | None:
        """The refusal a name deny gives ``host`` whatever it resolves to, else None.

        The dialer asks this before resolving, so a denied name is never looked up.
        """
        try:
            name = normalize_hostname(host)
        except HostnameError as exc:
            return Decision(False, str(exc))
        if parse_ip(name) is not None:
            return None
        for spec in self._deny:
            if isinstance(spec.pattern, HostPattern) and spec.matches(name, (0, 0), port):
                return Decision(False, f"denied by {spec.text}")
        return None

    def check(self, host: str, ip: str, port: int) -> Decision:
        addr = parse_ip(normalize_host(ip))
        if addr is None:
            # Fail closed: the caller should only pass resolver output, so this is a bug upstream.
            return Decision(False, f"resolved address {ip!r} is not a valid IP address")
        try:
            name = normalize_hostname(host)  # idempotent: the dialer passes it normalised
        except HostnameError as exc:
            return Decision(False, str(exc))  # fail closed, as the dialer does
        # IP literal hosts are judged only by CIDR specs, as in the client's rules.
        name_or_none = None if parse_ip(name) is not None else name
        for spec in self._deny:
            if spec.matches(name_or_none, addr, port):
                return Decision(False, f"denied by {spec.text}")
        for spec in self._allow:
            if spec.matches(name_or_none, addr, port):
                return Decision(True, f"allowed by {spec.text}")
        for net, label in DEFAULT_BLOCKED:
            if _in_network(addr, net):
                return Decision(
                    False, f"{label} address {ip} is blocked by default (allow it with --allow)"
                )
        return Decision(True, "public address")
