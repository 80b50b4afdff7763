"""Host filter list: decides which hosts client_a sends through the relay.

One pattern per line: ``example.com`` (that host only), ``*.example.com`` (subdomains only),
``.example.com`` (domain and subdomains), or an IP/CIDR (``10.0.0.0/8``, ``2001:db8::/32``,
bare ``10.0.0.1``).  ``#`` starts a comment.  A host that is an IPv4 literal in any spelling the
WHATWG URL parser accepts (``127.1``, ``0x7f000001``) matches as the address it means.  The
patterns themselves are parsed by :mod:`fastrelay.protocol.patterns`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from fastrelay.protocol.hostname import parse_ipv4
from fastrelay.protocol.patterns import (
    HostPattern,
    Pattern,
    PatternError,
    PatternKind,
    parse_ip,
    parse_pattern,
)

__all__ = ["RuleError", "Rules"]

_V4_BITS = 32
_V6_BITS = 128


class RuleError(ValueError):
    """A rules file line is malformed; the message names the source, line and problem."""

    def __init__(self, source: str, line: int, problem: str) -> None:
        super().__init__(f"{source}:{line}: {problem}")
        self.source = source
        self.line = line
        self.problem = problem


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
        # the two calls would add half as much again.
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
