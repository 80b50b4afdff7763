"""Host patterns and IP-literal helpers shared by client_a's filter list and the agent's policy.

A pattern is ``example.com`` (that host only), ``*.example.com`` (subdomains only),
``.example.com`` (domain and subdomains), or an IP/CIDR (``10.0.0.0/8``, ``2001:db8::/32``,
bare ``10.0.0.1``).  Pure code: no I/O.
"""

from __future__ import annotations

import enum
import ipaddress
import re
import socket
from dataclasses import dataclass

from fastrelay.protocol.hostname import ends_in_a_number

__all__ = [
    "HostPattern",
    "Network",
    "Pattern",
    "PatternError",
    "PatternKind",
    "normalize_host",
    "parse_ip",
    "parse_pattern",
]

MAX_HOST_LENGTH = 253
MAX_LABEL_LENGTH = 63
_LABEL_RE = re.compile(r"[a-z0-9_-]+")
_IPV4_LIKE_RE = re.compile(r"[0-9][0-9.]*")
_MAPPED_PREFIX = 0xFFFF  # ::ffff:0:0/96 shifted right by 32 bits

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class PatternError(ValueError):
    """A single pattern is malformed; the message says why, without location."""


class PatternKind(enum.Enum):
    EXACT = "exact"  # example.com
    SUBDOMAINS = "subdomains"  # *.example.com
    DOMAIN = "domain"  # .example.com


@dataclass(frozen=True, slots=True)
class HostPattern:
    kind: PatternKind
    name: str  # lowercase, no trailing dot, no leading "*." or "."

    def matches(self, host: str) -> bool:
        """``host`` must already be passed through :func:`normalize_host`."""
        if host == self.name:
            return self.kind is not PatternKind.SUBDOMAINS
        return self.kind is not PatternKind.EXACT and host.endswith("." + self.name)


Pattern = HostPattern | Network


def normalize_host(host: str) -> str:
    """Lowercase, drop one trailing dot, and unbracket ``[v6]`` (Rules.matches inlines this)."""
    host = host.lower()
    if host[-1:] == ".":
        return host[:-1]
    if host[:1] == "[" and host[-1:] == "]":
        return host[1:-1]
    return host


def parse_ip(host: str) -> tuple[int, int] | None:
    """Return ``(version, int_address)`` for an IP literal, or None for anything else.

    IPv4-mapped IPv6 addresses come back as IPv4 so that one set of v4 rules covers both
    spellings of the same destination.  ``socket.inet_pton`` is used only as a pure string
    converter: it is several times faster than ``ipaddress`` and lookups must stay ~1 µs.
    """
    if ":" in host:
        try:
            value = int.from_bytes(socket.inet_pton(socket.AF_INET6, host.partition("%")[0]))
        except (OSError, ValueError):
            return None
        if value >> 32 == _MAPPED_PREFIX:
            return 4, value & 0xFFFFFFFF
        return 6, value
    # Hostnames rarely end in a digit (a TLD never does), so most names skip the parse.
    if not host or not host[-1].isdigit():
        return None
    try:
        return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, host))
    except (OSError, ValueError):
        return None


def _parse_network(text: str) -> Network:
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise PatternError(str(exc)) from None
    mapped = ipaddress.IPv6Network("::ffff:0:0/96")
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 and net.subnet_of(mapped):
        # Store mapped ranges as IPv4 because parse_ip() reports mapped addresses as IPv4.
        low = int(net.network_address) & 0xFFFFFFFF
        return ipaddress.IPv4Network((low, net.prefixlen - 96))
    return net


def _parse_host_pattern(text: str) -> HostPattern:
    if text.startswith("*."):
        kind, name = PatternKind.SUBDOMAINS, text[2:]
    elif text.startswith("."):
        kind, name = PatternKind.DOMAIN, text[1:]
    else:
        kind, name = PatternKind.EXACT, text
    name = name.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name:
        raise PatternError("no domain name after the prefix")
    if len(name) > MAX_HOST_LENGTH:
        raise PatternError(f"hostname is {len(name)} characters long (max {MAX_HOST_LENGTH})")
    for label in name.split("."):
        if not label:
            raise PatternError("empty label (consecutive or misplaced dots)")
        if "*" in label:
            raise PatternError("'*' is only allowed as a whole leading '*.' label")
        if len(label) > MAX_LABEL_LENGTH:
            raise PatternError(f"label {label[:20]!r}... is longer than {MAX_LABEL_LENGTH}")
        if not _LABEL_RE.fullmatch(label):
            bad = next(c for c in label if not _LABEL_RE.fullmatch(c))
            raise PatternError(
                f"invalid character {bad!r} in label {label!r} "
                "(allowed: ASCII letters, digits, '-', '_'; use punycode for IDNs)"
            )
    if ends_in_a_number(name):
        # Browsers (and normalize_hostname) read such a name as an IPv4 address: 0x, a.0x1f and
        # 1.0x1 are addresses or nothing, never names, so a name pattern could never match.
        raise PatternError(
            "last label is a number (decimal, or 0x hex), which no hostname has: "
            "a browser reads the name as an IPv4 address"
        )
    return HostPattern(kind, name)


def parse_pattern(text: str) -> Pattern:
    """Parse one host pattern or IP/CIDR; raise :class:`PatternError` if invalid."""
    if not text:
        raise PatternError("empty pattern")
    if any(c.isspace() for c in text):
        raise PatternError("contains whitespace")
    if "/" in text or ":" in text:
        return _parse_network(text)
    if "." in text and _IPV4_LIKE_RE.fullmatch(text):
        try:
            return ipaddress.IPv4Network(text)
        except ValueError as exc:
            raise PatternError(f"looks like an IPv4 address but is not one: {exc}") from None
    return _parse_host_pattern(text)
