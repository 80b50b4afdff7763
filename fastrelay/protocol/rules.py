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
- ``[pushed off]`` (client_a's local file only) turns off the rules the relay pushes
  (``--client-rules``, the RULES frame): client_a then routes by its local file alone.
  ``[pushed on]`` is the default.  Where both sources are used, :func:`merge` decides:
  a local rule replaces a pushed rule with the same pattern.

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
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from fastrelay.protocol.errors import ControlMessageError
from fastrelay.protocol.frames import FrameType, encode_frame
from fastrelay.protocol.hostname import parse_ipv4
from fastrelay.protocol.messages import DEFAULT_POOL, control_field, load_control, pool_error
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
    "MAX_PUSHED_RULES_BYTES",
    "Entry",
    "Fallback",
    "PushedRules",
    "Rule",
    "RuleError",
    "Rules",
    "RulesFile",
    "canonical_text",
    "check_pool_name",
    "decode_rules_file",
    "merge",
    "parse_entries",
    "parse_rules_file",
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


@dataclass(frozen=True, slots=True)
class RulesFile:
    """A parsed rules file: its rules in order, and (a local file's) ``[pushed on|off]``."""

    entries: tuple[Entry, ...] = ()
    pushed: bool = True  # False: the local file says ``[pushed off]``


def parse_rules_file(text: str, source: str = "<rules>", local: bool = True) -> RulesFile:
    """Every rule line of a rules file, in order; :class:`RuleError` at the first bad one.

    ``local`` is False for the file a relay pushes (``--client-rules``): the ``[pushed]``
    directive belongs to client_a's own file and is an error there.
    """
    entries: list[Entry] = []
    pool = DEFAULT_POOL
    pushed = True
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
                    f"invalid section header {line!r} (expected '[pool NAME]' or "
                    "'[pushed on|off]'; IPv6 patterns are written without brackets)",
                )
            kind, name = section.groups()
            if kind == "pushed":
                if not local:
                    raise RuleError(
                        source,
                        lineno,
                        f"{line!r} belongs in client_a's own rules file, not in rules a relay "
                        "pushes (--client-rules)",
                    )
                if name not in ("on", "off"):
                    raise RuleError(
                        source, lineno, f"invalid directive {line!r} (expected '[pushed on|off]')"
                    )
                pushed = name == "on"
                continue
            if kind != "pool":
                raise RuleError(
                    source,
                    lineno,
                    f"unknown section {kind!r} in {line!r} (expected '[pool NAME]' or "
                    "'[pushed on|off]')",
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
    return RulesFile(tuple(entries), pushed)


def parse_entries(text: str, source: str = "<rules>") -> list[Entry]:
    """Every rule line of a local rules file, in order; :class:`RuleError` at the first bad one."""
    return list(parse_rules_file(text, source).entries)


def decode_rules_file(data: bytes, source: str = "<rules>", local: bool = True) -> RulesFile:
    """A rules file's bytes (UTF-8, optional BOM); :class:`RuleError` if malformed."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise RuleError(source, line, f"not valid UTF-8: {exc.reason}") from None
    return parse_rules_file(text, source, local)


def canonical_text(entries: Iterable[Entry]) -> str:
    """One :meth:`Entry.format` line per rule, in order, each ending in ``\\n``: what a relay
    pushes.  Comments, blank lines, spacing and ``[pool]`` sections are gone, so two files
    that say the same thing in the same order have the same text (and the same version)."""
    return "".join(entry.format() + "\n" for entry in entries)


def merge(local: RulesFile, pushed: Sequence[Entry]) -> tuple[list[Entry], int]:
    """The rules client_a routes by, and how many of them came from ``pushed``.

    A local rule replaces every pushed rule with the same pattern (local options win).  The
    pushed rules that remain come first and the local ones after, so between two equally
    specific rules (``*.x`` and ``.x``), the local one is the later line and wins too.  A local
    file with ``[pushed off]`` gets exactly its own rules.
    """
    if not local.pushed or not pushed:
        return list(local.entries), 0
    mine = {entry.pattern for entry in local.entries}
    kept = [entry for entry in pushed if entry.pattern not in mine]
    return [*kept, *local.entries], len(kept)


# --- RULES: the rules a relay pushes to client_a (docs/PROTOCOL.md) ---

# The canonical text a RULES frame may carry, in bytes.  About 10,000 rules of 25 characters;
# a relay refuses a larger --client-rules file, client_a a larger frame.
MAX_PUSHED_RULES_BYTES = 256 * 1024
# The whole JSON payload, checked before it is parsed: JSON writes each newline as two bytes,
# so canonical text at the limit (one rule per line, lines of 2 bytes or more) takes at most
# 1.5 times its size, plus the type and the version.
MAX_RULES_PAYLOAD = 2 * MAX_PUSHED_RULES_BYTES + 1024
_VERSION_RE = re.compile(r"[0-9a-f]{64}")


def rules_version(text: str) -> str:
    """A pushed rules text's version: the SHA-256 of its UTF-8 bytes, in lowercase hex."""
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class PushedRules:
    """The RULES frame: the relay's ``--client-rules`` in canonical form, and its version."""

    entries: tuple[Entry, ...]
    text: str  # canonical_text(entries) from a relay; any valid rules text is accepted
    version: str  # rules_version(text)

    @classmethod
    def from_entries(cls, entries: Iterable[Entry]) -> PushedRules:
        entries = tuple(entries)
        text = canonical_text(entries)
        return cls(entries, text, rules_version(text))

    @property
    def size(self) -> int:
        return len(self.text.encode())

    def encode(self) -> bytes:
        body = {"type": "RULES", "version": self.version, "rules": self.text}
        return encode_frame(FrameType.RULES, 0, orjson.dumps(body))

    @classmethod
    def decode(cls, payload: bytes | memoryview) -> PushedRules:
        """A RULES payload; :class:`ControlMessageError` names what is wrong with it."""
        kind = FrameType.RULES
        if len(payload) > MAX_RULES_PAYLOAD:  # before parsing any of it
            raise ControlMessageError(
                f"RULES payload is {len(payload)} bytes, over the limit of {MAX_RULES_PAYLOAD}"
            )
        doc: dict[str, Any] = load_control(payload, kind)
        version = control_field(doc, "version", str, kind)
        text = control_field(doc, "rules", str, kind)
        size = len(text.encode())
        if size > MAX_PUSHED_RULES_BYTES:
            raise ControlMessageError(
                f"RULES carries {size} bytes of rules, over the limit of {MAX_PUSHED_RULES_BYTES}"
            )
        if _VERSION_RE.fullmatch(version) is None:
            raise ControlMessageError("RULES version must be 64 lowercase hex digits (SHA-256)")
        if rules_version(text) != version:
            raise ControlMessageError("RULES version is not the SHA-256 of its rules")
        try:
            parsed = parse_rules_file(text, "RULES", local=False)
        except RuleError as exc:
            raise ControlMessageError(f"RULES rules line {exc.line}: {exc.problem}") from None
        return cls(parsed.entries, text, version)


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
    def decode(cls, data: bytes, source: str = "<rules>") -> Rules:
        """A local rules file's bytes (UTF-8, optional BOM); :class:`RuleError` if malformed."""
        return cls(decode_rules_file(data, source).entries)

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
