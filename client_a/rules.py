"""Host filter list: decides which hosts client_a sends through the relay.

One pattern per line: ``example.com`` (that host only), ``*.example.com`` (subdomains only),
``.example.com`` (domain and subdomains), or an IP/CIDR (``10.0.0.0/8``, ``2001:db8::/32``,
bare ``10.0.0.1``).  ``#`` starts a comment.  A host that is an IPv4 literal in any spelling the
WHATWG URL parser accepts (``127.1``, ``0x7f000001``) matches as the address it means.  The
pattern parsing and IP helpers here are also used by ``agent.policy``.
"""

from __future__ import annotations

import enum
import ipaddress
import os
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fastrelay.protocol.hostname import ends_in_a_number, parse_ipv4

__all__ = [
    "HostPattern",
    "Network",
    "Pattern",
    "PatternError",
    "PatternKind",
    "RuleError",
    "Rules",
    "normalize_host",
    "parse_ip",
    "parse_pattern",
]

MAX_HOST_LENGTH = 253
MAX_LABEL_LENGTH = 63
_LABEL_RE = re.compile(r"[a-z0-9_-]+")
_IPV4_LIKE_RE = re.compile(r"[0-9][0-9.]*")
_MAPPED_PREFIX = 0xFFFF  # ::ffff:0:0/96 shifted right by 32 bits
_V4_BITS = 32
_V6_BITS = 128

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class PatternError(ValueError):
    """A single pattern is malformed; the message says why, without location."""


class RuleError(ValueError):
    """A rules file line is malformed; the message names the source, line and problem."""

    def __init__(self, source: str, line: int, problem: str) -> None:
        super().__init__(f"{source}:{line}: {problem}")
        self.source = source
        self.line = line
        self.problem = problem


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


def _prefix_mask(prefixlen: int, bits: int) -> int:
    return ((1 << bits) - 1) ^ ((1 << (bits - prefixlen)) - 1)


class Rules:
    """Compiled filter list.  Build with :meth:`parse` or :meth:`load`."""

    def __init__(self, patterns: Iterable[Pattern] = ()) -> None:
        # EXACT and DOMAIN both match the name itself; SUBDOMAINS and DOMAIN both match any
        # proper suffix, so two sets cover all three kinds.
        self._names: set[str] = set()
        self._suffixes: set[str] = set()
        self._max_depth = 0  # labels in the deepest suffix rule
        v4: dict[int, set[int]] = {}
        v6: dict[int, set[int]] = {}
        self._count = 0
        for pattern in patterns:
            self._count += 1
            if isinstance(pattern, HostPattern):
                if pattern.kind is not PatternKind.SUBDOMAINS:
                    self._names.add(pattern.name)
                if pattern.kind is not PatternKind.EXACT:
                    self._suffixes.add(pattern.name)
                    self._max_depth = max(self._max_depth, pattern.name.count(".") + 1)
            else:
                by_len = v4 if pattern.version == 4 else v6
                by_len.setdefault(pattern.prefixlen, set()).add(int(pattern.network_address))
        self._v4 = [(_prefix_mask(p, _V4_BITS), frozenset(v4[p])) for p in sorted(v4, reverse=True)]
        self._v6 = [(_prefix_mask(p, _V6_BITS), frozenset(v6[p])) for p in sorted(v6, reverse=True)]

    @classmethod
    def parse(cls, text: str, source: str = "<rules>") -> Rules:
        patterns: list[Pattern] = []
        for lineno, raw in enumerate(text.splitlines(), start=1):
            line = raw.partition("#")[0].strip()
            if not line:
                continue
            try:
                patterns.append(parse_pattern(line))
            except PatternError as exc:
                raise RuleError(source, lineno, f"invalid pattern {line!r}: {exc}") from None
        return cls(patterns)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Rules:
        return cls.decode(Path(path).read_bytes(), os.fspath(path))

    @classmethod
    def decode(cls, data: bytes, source: str = "<rules>") -> Rules:
        """A rules file's bytes (UTF-8, optional BOM); :class:`RuleError` if malformed."""
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            raise RuleError(source, line, f"not valid UTF-8: {exc.reason}") from None
        return cls.parse(text, source)

    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return f"<Rules: {self._count} patterns>"

    def matches(self, host: str) -> bool:
        # normalize_host() and parse_ip()'s hostname fast path are inlined: at ~1 us per lookup
        # the two extra calls were a third of the cost.
        host = host.lower()
        # IPv4 literals in every spelling a browser accepts (127.1, 0x7f.1, 2130706433, one
        # trailing dot) match as the address they mean; every IPv4 number starts with a digit.
        if host[:1].isdigit():
            value = parse_ipv4(host)
            if value is not None:
                return any(value & mask in networks for mask, networks in self._v4)
        if host[-1:] == ".":
            host = host[:-1]
        elif host[:1] == "[" and host[-1:] == "]":
            host = host[1:-1]
        if ":" in host or host[-1:].isdigit():
            ip = parse_ip(host)
            if ip is not None:
                version, value = ip
                for mask, networks in self._v4 if version == 4 else self._v6:
                    if value & mask in networks:
                        return True
                return False
        if host in self._names:
            return True
        # Only the last max_depth labels can start a matching suffix, so rsplit bounds the work
        # on deep hostnames; parts[0] is never a proper suffix, hence the [:0:-1].
        suffixes = self._suffixes
        start = len(host) + 1
        for label in host.rsplit(".", self._max_depth)[:0:-1]:
            start -= len(label) + 1
            if host[start:] in suffixes:
                return True
        return False
