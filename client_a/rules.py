"""Host filter list: decides which hosts client_a sends through the relay, to which agent
pool, and what happens when no relay or agent can take them.

One rule per line: ``PATTERN [@POOL] [fallback=direct|closed]``; ``#`` starts a comment.

- PATTERN is ``example.com`` (that host only), ``*.example.com`` (subdomains only),
  ``.example.com`` (domain and subdomains), or an IP/CIDR (``10.0.0.0/8``, ``2001:db8::/32``,
  bare ``10.0.0.1``).  A host that is an IPv4 literal in any spelling the WHATWG URL parser
  accepts (``127.1``, ``0x7f000001``) matches as the address it means.  The patterns themselves
  are parsed by :mod:`fastrelay.protocol.patterns`.
- ``@POOL`` names the agent pool the host is routed to (default ``default``).  A pool name is
  1-64 characters of ``a-z 0-9 _ -`` and starts with a letter or digit.
- ``fallback=closed`` (the default) fails closed: with no relay or no agent, the browser gets
  the 503.  ``fallback=direct`` fails open: client_a dials the host directly instead.  That is a
  security choice: traffic the operator meant to send through the agent may then leave from
  this machine's own network.
- A section header ``[pool NAME]`` sets the pool of the rules after it, up to the next header
  (``[pool default]`` goes back to the default).  ``@POOL`` on a line overrides it.

When a host matches several rules, the most specific one decides:

- a hostname: an exact match of the name (``example.com``, or ``.example.com`` for the name
  itself) wins over any suffix rule; of two rules for the same name, ``example.com`` wins over
  ``.example.com``; then the longest matching suffix wins (``.a.example.com`` over
  ``.example.com``; ``*.x`` and ``.x`` are the same suffix);
- an IP literal: the longest matching prefix wins;
- between equally specific rules (the same pattern twice, or ``*.x`` and ``.x``), the later line.

:meth:`Rules.lookup` stores the decided :class:`Rule` per name, suffix and network, so a lookup
is one dict probe per suffix of the host (or per prefix length), about 1 us at 100,000 rules.
"""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fastrelay.protocol.hostname import parse_ipv4
from fastrelay.protocol.messages import DEFAULT_POOL, pool_error
from fastrelay.protocol.patterns import (
    HostPattern,
    Pattern,
    PatternError,
    PatternKind,
    parse_ip,
    parse_pattern,
)

__all__ = [
    "DEFAULT_POOL",
    "Entry",
    "Fallback",
    "Rule",
    "RuleError",
    "Rules",
    "check_pool_name",
    "parse_entries",
]

_V4_BITS = 32
_V6_BITS = 128
MAX_POOL_LENGTH = 64
_SECTION_RE = re.compile(r"\[\s*([A-Za-z]+)\b\s*(.*?)\s*\]")


class RuleError(ValueError):
    """A rules file line is malformed; the message names the source, line and problem."""

    def __init__(self, source: str, line: int, problem: str) -> None:
        super().__init__(f"{source}:{line}: {problem}")
        self.source = source
        self.line = line
        self.problem = problem


class Fallback(enum.Enum):
    CLOSED = "closed"  # no relay or agent: the browser gets the 503
    DIRECT = "direct"  # no relay or agent: client_a dials the host itself


@dataclass(frozen=True, slots=True)
class Rule:
    """What a listed host gets: its agent pool and its fallback."""

    pool: str = DEFAULT_POOL
    fallback: Fallback = Fallback.CLOSED


DEFAULT_RULE = Rule()


@dataclass(frozen=True, slots=True)
class Entry:
    """One parsed rules line."""

    pattern: Pattern
    rule: Rule = DEFAULT_RULE

    def format(self) -> str:
        """The line that parses back to this entry (outside any ``[pool]`` section)."""
        p = self.pattern
        if isinstance(p, HostPattern):
            text = {PatternKind.EXACT: "", PatternKind.SUBDOMAINS: "*.", PatternKind.DOMAIN: "."}
            line = text[p.kind] + p.name
        else:
            line = str(p)
        if self.rule.pool != DEFAULT_POOL:
            line += f" @{self.rule.pool}"
        if self.rule.fallback is not Fallback.CLOSED:
            line += f" fallback={self.rule.fallback.value}"
        return line


def check_pool_name(name: str) -> str | None:
    """Why ``name`` is not a valid pool name, or None if it is."""
    # The grammar is the wire's (messages.pool_error): what a rule names, the relay accepts.
    if pool_error(name) is None:
        return None
    if not name:
        return "empty pool name"
    if len(name) > MAX_POOL_LENGTH:
        return f"pool name is {len(name)} characters long (max {MAX_POOL_LENGTH})"
    return (
        f"invalid pool name {name!r}: 1-{MAX_POOL_LENGTH} characters of a-z 0-9 _ -, "
        "starting with a letter or digit"
    )


def _parse_options(tokens: list[str], pool: str) -> Rule:
    """The options after a pattern; ValueError with the problem."""
    seen_pool = False
    fallback: Fallback | None = None
    for token in tokens:
        if token.startswith("@"):
            if seen_pool:
                raise ValueError(f"duplicate pool option {token!r} (one @POOL per rule)")
            problem = check_pool_name(token[1:])
            if problem is not None:
                raise ValueError(problem)
            pool, seen_pool = token[1:], True
        elif "=" in token:
            key, _, value = token.partition("=")
            if key != "fallback":
                raise ValueError(f"unknown option {key!r} (options: @POOL, fallback=direct|closed)")
            if fallback is not None:
                raise ValueError(f"duplicate option {key!r}")
            try:
                fallback = Fallback(value)
            except ValueError:
                raise ValueError(
                    f"invalid fallback {value!r} (expected 'direct' or 'closed')"
                ) from None
        else:
            raise ValueError(
                f"unexpected {token!r} after the pattern "
                "(one pattern per line; options: @POOL, fallback=direct|closed)"
            )
    return Rule(pool, fallback or Fallback.CLOSED)


def parse_entries(text: str, source: str = "<rules>") -> list[Entry]:
    """Every rule line of a rules file, in order; :class:`RuleError` at the first bad one."""
    entries: list[Entry] = []
    pool = DEFAULT_POOL
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.partition("#")[0].strip()
        if not line:
            continue
        if line.startswith("["):
            section = _SECTION_RE.fullmatch(line)
            if section is None:
                raise RuleError(
                    source,
                    lineno,
                    f"invalid section header {line!r} (expected '[pool NAME]'; "
                    "IPv6 patterns are written without brackets)",
                )
            kind, name = section.groups()
            if kind != "pool":
                raise RuleError(
                    source, lineno, f"unknown section {kind!r} in {line!r} (expected '[pool NAME]')"
                )
            problem = check_pool_name(name)
            if problem is not None:
                raise RuleError(source, lineno, f"invalid section header {line!r}: {problem}")
            pool = name
            continue
        first, *options = line.split()
        try:
            pattern = parse_pattern(first)
        except PatternError as exc:
            raise RuleError(source, lineno, f"invalid pattern {first!r}: {exc}") from None
        try:
            rule = _parse_options(options, pool)
        except ValueError as exc:
            raise RuleError(source, lineno, f"invalid rule {line!r}: {exc}") from None
        entries.append(Entry(pattern, DEFAULT_RULE if rule == DEFAULT_RULE else rule))
    return entries


def _prefix_mask(prefixlen: int, bits: int) -> int:
    return ((1 << bits) - 1) ^ ((1 << (bits - prefixlen)) - 1)


class Rules:
    """Compiled filter list.  Build with :meth:`parse` or :meth:`load`."""

    def __init__(self, entries: Iterable[Entry | Pattern] = ()) -> None:
        # EXACT and DOMAIN both match the name itself; SUBDOMAINS and DOMAIN both match any
        # proper suffix, so two dicts cover all three kinds.  An EXACT rule for a name beats a
        # DOMAIN rule for it whatever the order; otherwise the later line wins.
        self.names: dict[str, Rule] = {}
        self.suffixes: dict[str, Rule] = {}
        exact: set[str] = set()
        self.max_depth = 0  # labels in the deepest suffix rule
        v4: dict[int, dict[int, Rule]] = {}
        v6: dict[int, dict[int, Rule]] = {}
        self._count = 0
        self.pools: dict[str, int] = {}  # rules per pool
        self.fallback_direct = 0  # rules with fallback=direct
        for item in entries:
            entry = item if isinstance(item, Entry) else Entry(item)
            pattern, rule = entry.pattern, entry.rule
            self._count += 1
            self.pools[rule.pool] = self.pools.get(rule.pool, 0) + 1
            self.fallback_direct += rule.fallback is Fallback.DIRECT
            if isinstance(pattern, HostPattern):
                name = pattern.name
                if pattern.kind is PatternKind.EXACT:
                    self.names[name] = rule
                    exact.add(name)
                elif pattern.kind is PatternKind.DOMAIN and name not in exact:
                    self.names[name] = rule
                if pattern.kind is not PatternKind.EXACT:
                    self.suffixes[name] = rule
                    self.max_depth = max(self.max_depth, name.count(".") + 1)
            else:
                by_len = v4 if pattern.version == 4 else v6
                by_len.setdefault(pattern.prefixlen, {})[int(pattern.network_address)] = rule
        # Longest prefix first: the first bucket that holds the address decides.
        self.v4 = [(p, _prefix_mask(p, _V4_BITS), v4[p]) for p in sorted(v4, reverse=True)]
        self.v6 = [(p, _prefix_mask(p, _V6_BITS), v6[p]) for p in sorted(v6, reverse=True)]
        self._v4 = [(mask, nets) for _, mask, nets in self.v4]
        self._v6 = [(mask, nets) for _, mask, nets in self.v6]

    @classmethod
    def parse(cls, text: str, source: str = "<rules>") -> Rules:
        return cls(parse_entries(text, source))

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
        pools = ", ".join(f"{name}={n}" for name, n in sorted(self.pools.items()))
        return (
            f"<Rules: {self._count} patterns, pools: {pools or '-'}, "
            f"{self.fallback_direct} with fallback=direct>"
        )

    def matches(self, host: str) -> bool:
        return self.lookup(host) is not None

    def lookup(self, host: str) -> Rule | None:
        """The most specific rule for ``host``, or None when no rule lists it (go direct)."""
        # normalize_host() and parse_ip()'s hostname fast path are inlined: at ~1 us per lookup
        # the two calls would add half as much again.
        host = host.lower()
        # IPv4 literals in every spelling a browser accepts (127.1, 0x7f.1, 2130706433, one
        # trailing dot) match as the address they mean; every IPv4 number starts with a digit.
        if host[:1].isdigit():
            value = parse_ipv4(host)
            if value is not None:
                for mask, networks in self._v4:
                    rule = networks.get(value & mask)
                    if rule is not None:
                        return rule
                return None
        if host[-1:] == ".":
            host = host[:-1]
        elif host[:1] == "[" and host[-1:] == "]":
            host = host[1:-1]
        if ":" in host or host[-1:].isdigit():
            ip = parse_ip(host)
            if ip is not None:
                version, value = ip
                for mask, networks in self._v4 if version == 4 else self._v6:
                    rule = networks.get(value & mask)
                    if rule is not None:
                        return rule
                return None
        rule = self.names.get(host)
        if rule is not None:
            return rule
        # Only the last max_depth labels can start a matching suffix, so rsplit bounds the work
        # on deep hostnames.  parts[0] is never a proper suffix; the longest one starts after it.
        suffixes = self.suffixes
        parts = host.rsplit(".", self.max_depth)
        start = len(parts[0]) + 1
        for label in parts[1:]:
            rule = suffixes.get(host[start:])
            if rule is not None:
                return rule
            start += len(label) + 1
        return None
