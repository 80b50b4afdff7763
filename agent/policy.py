"""Egress policy: decides whether the agent may dial a (host, resolved IP, port) target.

Specs come from ``--allow SPEC`` / ``--deny SPEC``: a host pattern (rules syntax:
``example.com``, ``*.example.com``, ``.example.com``), an IP/CIDR, or either with a port:
``HOST_PATTERN:PORT``, ``IPv4CIDR:PORT``, ``[IPv6CIDR]:PORT``.  An unbracketed IPv6 spec never
carries a port, so ``::1:80`` is the address ``::1:80``, not ``::1`` port 80.

Hosts are judged by their normalised form (:func:`fastrelay.protocol.hostname.normalize_hostname`:
IDNA UTS #46 mapping, one trailing dot dropped), the name the dialer resolves, so a look-alike
such as ``rt-loop.test`` spelt with a fullwidth r (U+FF52) meets ``--deny rt-loop.test``.

Unless allowed, the IANA special-purpose ranges (:data:`DEFAULT_BLOCKED`, including the IPv4
address inside IPv4-compatible, NAT64 and 6to4 addresses) and the host's own interface
addresses are refused; docs/OPERATIONS.md (Egress blocklist) lists them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import shutil
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fastrelay.protocol.hostname import HostnameError, normalize_hostname
from fastrelay.protocol.patterns import (
    HostPattern,
    Network,
    Pattern,
    PatternError,
    normalize_host,
    parse_ip,
    parse_pattern,
)

__all__ = [
    "DEFAULT_BLOCKED",
    "LOCAL_REFRESH_INTERVAL",
    "Decision",
    "EgressPolicy",
    "PolicyError",
    "read_interface_addresses",
]

log = logging.getLogger("fastrelay.agent.policy")

LOCAL_REFRESH_INTERVAL = 60.0  # seconds between re-reads of the host's interface addresses

_N = ipaddress.ip_network

# From the IANA IPv4 and IPv6 special-purpose address registries (every block that is not
# globally reachable, or N/A), plus multicast and the deprecated IPv6 blocks (site-local,
# IPv4-compatible).  The first range that matches names the refusal reason, so the more specific
# ranges come first (255.255.255.255 before 240.0.0.0/4, :: and ::1 before ::/96).
# IPv4-mapped IPv6 needs no entry: parse_ip() unmaps it, so ::ffff:127.0.0.1 hits 127.0.0.0/8.
# The other embedded forms (IPv4-compatible, NAT64 64:ff9b::/96, 6to4) are blocked as ranges,
# and their embedded IPv4 address is judged as well (see _embedded_ipv4).
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
    (_N("192.0.0.0/24"), "IETF protocol assignments"),
    (_N("192.0.2.0/24"), "documentation (TEST-NET-1)"),
    (_N("192.88.99.0/24"), "deprecated 6to4 relay anycast"),
    (_N("198.18.0.0/15"), "benchmarking"),
    (_N("198.51.100.0/24"), "documentation (TEST-NET-2)"),
    (_N("203.0.113.0/24"), "documentation (TEST-NET-3)"),
    (_N("224.0.0.0/4"), "multicast"),
    (_N("255.255.255.255/32"), "limited broadcast"),
    (_N("240.0.0.0/4"), "reserved"),
    (_N("ff00::/8"), "multicast"),
    (_N("::/128"), "unspecified"),
    (_N("::/96"), "IPv4-compatible"),
    (_N("64:ff9b::/96"), "NAT64"),
    (_N("64:ff9b:1::/48"), "local-use NAT64"),
    (_N("100::/64"), "discard-only"),
    (_N("2001::/32"), "Teredo"),
    (_N("2001:2::/48"), "benchmarking"),
    (_N("2001:10::/28"), "deprecated ORCHID"),
    (_N("2001:db8::/32"), "documentation"),
    (_N("2002::/16"), "6to4"),
    (_N("3fff::/20"), "documentation"),
    (_N("5f00::/16"), "segment routing SID"),
    (_N("fec0::/10"), "deprecated site-local"),
)

# DEFAULT_BLOCKED as (version, netmask, network address, label) ints, so a check compares
# ints instead of calling ipaddress properties per range (33 ranges per dialled address).
_BLOCKED_INTS: tuple[tuple[int, int, int, str], ...] = tuple(
    (net.version, int(net.netmask), int(net.network_address), label)
    for net, label in DEFAULT_BLOCKED
)

_V4_MASK = 0xFFFFFFFF
_NAT64_WKP = int(ipaddress.IPv6Address("64:ff9b::")) >> 32  # the well-known prefix, /96


def _embedded_ipv4(value: int) -> int | None:
    """The IPv4 address an IPv6 address (as an int) stands for, or None.

    IPv4-compatible ``::a.b.c.d`` with ``a`` >= 1 (so not ``::``, ``::1`` or other ``::/104``
    addresses, which no IPv4-compatible address ever was), NAT64 ``64:ff9b::a.b.c.d`` and 6to4
    ``2002:AABB:CCDD::/48``.  IPv4-mapped ``::ffff:a.b.c.d`` never gets here: parse_ip() unmaps it.
    """
    high = value >> 32
    if high == 0:
        return value if value >> 24 else None
    if high == _NAT64_WKP:
        return value & _V4_MASK
    if value >> 112 == 0x2002:
        return (value >> 80) & _V4_MASK
    return None


def _read_fib_trie(text: str) -> set[str]:
    """The IPv4 addresses of the host's interfaces: the ``/32 host LOCAL`` leaves of fib_trie."""
    found: set[str] = set()
    leaf = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|-- "):
            leaf = stripped[4:]
        elif leaf and stripped.startswith("/32 ") and stripped.endswith(" LOCAL"):
            found.add(leaf)
    return found


def _read_if_inet6(text: str) -> set[str]:
    """The IPv6 addresses in ``/proc/net/if_inet6`` (32 hex digits first on each line)."""
    found: set[str] = set()
    for line in text.splitlines():
        digits = line.split(maxsplit=1)[0] if line.strip() else ""
        if len(digits) == 32:
            found.add(str(ipaddress.IPv6Address(int(digits, 16))))
    return found


def _read_ip_json(text: str) -> set[str]:
    """The addresses in ``ip -j addr show`` output."""
    return {
        info["local"]
        for link in json.loads(text)
        for info in link.get("addr_info", ())
        if isinstance(info, dict) and "local" in info
    }


def read_interface_addresses() -> frozenset[str]:
    """The addresses of this host's interfaces (its network namespace); never raises.

    Linux: ``/proc/net/fib_trie`` and ``/proc/net/if_inet6``; otherwise ``ip -j addr show``;
    otherwise (logged) no addresses, so the default blocklist still applies but not this part.
    """
    found: set[str] = set()
    complete = True
    for path, parse in (
        ("/proc/net/fib_trie", _read_fib_trie),
        ("/proc/net/if_inet6", _read_if_inet6),  # absent when IPv6 is off: ip then fills in
    ):
        try:
            found |= parse(Path(path).read_text())
        except (OSError, ValueError) as exc:
            complete = False
            log.debug("cannot read %s: %s", path, exc)
    if complete:
        return frozenset(found)
    ip = shutil.which("ip")
    if ip is not None:
        try:
            out = subprocess.run(
                [ip, "-j", "addr", "show"], capture_output=True, check=True, timeout=5, text=True
            )
            return frozenset(found | _read_ip_json(out.stdout))
        except (OSError, ValueError, TypeError, AttributeError, subprocess.SubprocessError) as exc:
            log.debug("ip -j addr show failed: %s", exc)
    if not found:
        log.warning("cannot read this host's interface addresses; they are not blocked")
    return frozenset(found)


def _parse_addresses(addresses: Iterable[str]) -> frozenset[tuple[int, int]]:
    parsed = (parse_ip(normalize_host(a)) for a in addresses)
    return frozenset(a for a in parsed if a is not None)


class PolicyError(ValueError):
    """An ``--allow``/``--deny`` spec is malformed; the message names the spec."""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str


_PUBLIC = Decision(True, "public address")


@dataclass(frozen=True, slots=True)
class _Spec:
    text: str  # as given on the command line, for reasons
    pattern: Pattern
    port: int | None
    # A network pattern as (version, netmask, network address) ints, else None (a host).
    network: tuple[int, int, int] | None = field(init=False, compare=False, repr=False)
    allowed: Decision = field(init=False, compare=False, repr=False)  # its allow decision

    def __post_init__(self) -> None:
        pattern = self.pattern
        network = None
        if not isinstance(pattern, HostPattern):
            network = (pattern.version, int(pattern.netmask), int(pattern.network_address))
        object.__setattr__(self, "network", network)
        object.__setattr__(self, "allowed", Decision(True, f"allowed by {self.text}"))

    def matches(self, name: str | None, ip: tuple[int, int], port: int) -> bool:
        """``name`` is the normalized hostname, or None when the host is an IP literal."""
        if self.port is not None and self.port != port:
            return False
        network = self.network
        if network is None:
            return name is not None and self.pattern.matches(name)  # type: ignore[union-attr]
        version, value = ip
        return version == network[0] and value & network[1] == network[2]


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
    """Deny specs, then allow specs, then the default-blocked ranges and the host's own
    interface addresses; otherwise permit.

    An IPv6 address that embeds an IPv4 address (IPv4-compatible, NAT64 ``64:ff9b::/96``,
    6to4) is judged twice, as itself and as the IPv4 address: a deny of either refuses it, and
    it passes only if each is allowed explicitly or not blocked by default.  So
    ``--allow 2002::/16`` opens 6to4 but not ``2002:7f00:1::`` (127.0.0.1) or
    ``2002:a9fe:a9fe::`` (169.254.169.254) unless their IPv4 range is allowed too.

    ``local_addresses`` is the set of the host's interface addresses, as data: a policy given
    one keeps it; with None (the agent's default) the policy reads them now and, once
    :meth:`watch_interfaces` is called from the agent's loop, re-reads them every
    ``refresh_interval`` seconds in a worker thread.
    """

    def __init__(
        self,
        allow: Sequence[str] = (),
        deny: Sequence[str] = (),
        local_addresses: Iterable[str] | None = None,
        *,
        refresh_interval: float = LOCAL_REFRESH_INTERVAL,
        reader: Callable[[], Iterable[str]] = read_interface_addresses,
    ) -> None:
        # A bare str is a Sequence[str] too; iterating it per character would be a silent bug.
        if isinstance(allow, str) or isinstance(deny, str) or isinstance(local_addresses, str):
            raise TypeError("allow, deny and local_addresses must be sequences, not a string")
        self._allow = tuple(_parse_spec("--allow", spec) for spec in allow)
        self._deny = tuple(_parse_spec("--deny", spec) for spec in deny)
        self._reader: Callable[[], Iterable[str]] | None = None
        if local_addresses is None:
            self._reader = reader
            local_addresses = self._read_local() or ()
        self._local = _parse_addresses(local_addresses)
        self._refresh_interval = refresh_interval
        self._watching: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        allow = [s.text.removeprefix("--allow ") for s in self._allow]
        deny = [s.text.removeprefix("--deny ") for s in self._deny]
        return f"EgressPolicy(allow={allow!r}, deny={deny!r})"

    @property
    def local_addresses(self) -> frozenset[str]:
        """The host interface addresses the policy refuses now (normalised spellings)."""
        return frozenset(
            str(ipaddress.IPv4Address(v) if ver == 4 else ipaddress.IPv6Address(v))
            for ver, v in self._local
        )

    def set_local_addresses(self, addresses: Iterable[str]) -> None:
        self._local = _parse_addresses(addresses)

    def _read_local(self) -> tuple[str, ...] | None:
        """The reader's answer, or None (logged) if it failed: a reader never stops the agent."""
        assert self._reader is not None
        try:
            return tuple(self._reader())
        except Exception:
            log.exception("reading this host's interface addresses failed; keeping the last set")
            return None

    def watch_interfaces(self) -> None:
        """Keep the interface addresses fresh; call it from the agent's loop (the dialer does).

        The first call on a loop starts a timer there: every ``refresh_interval`` seconds the
        addresses are re-read in the default executor, so the loop never waits on the read.
        Cheap to call on every dial; a no-op for a policy given its addresses.
        """
        if self._reader is None:
            return
        loop = asyncio.get_running_loop()
        if self._watching is loop:
            return
        self._watching = loop
        loop.call_later(self._refresh_interval, self._refresh, loop)

    def _refresh(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._watching is not loop or loop.is_closed():
            return
        try:
            future = loop.run_in_executor(None, self._read_local)
        except RuntimeError:  # the executor is shutting down with the loop
            return
        future.add_done_callback(lambda f: self._refreshed(loop, f))

    def _refreshed(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future) -> None:
        if not future.cancelled() and future.exception() is None and future.result() is not None:
            self.set_local_addresses(future.result())
        if self._watching is loop and not loop.is_closed():
            loop.call_later(self._refresh_interval, self._refresh, loop)

    def check_name(self, host: str, port: int) -> Decision | None:
        """The refusal a name deny gives ``host`` whatever it resolves to, else None.

        The dialer asks this before resolving, so a denied name is never looked up.
        """
        try:
            name = normalize_hostname(host)
        except HostnameError as exc:
            return Decision(False, str(exc))
        return self.check_normalized_name(name, port)

    def check_normalized_name(self, name: str, port: int) -> Decision | None:
        """:meth:`check_name` for a host already passed through normalize_hostname (the
        dialer's), so the name is not normalised again on every open."""
        if parse_ip(name) is not None:
            return None
        for spec in self._deny:
            if isinstance(spec.pattern, HostPattern) and spec.matches(name, (0, 0), port):
                return Decision(False, f"denied by {spec.text}")
        return None

    def _default_label(self, addr: tuple[int, int]) -> str | None:
        version, value = addr
        for net_version, netmask, network, label in _BLOCKED_INTS:
            if version == net_version and value & netmask == network:
                return label
        if addr in self._local:
            return "local interface"
        return None

    def check(self, host: str, ip: str, port: int) -> Decision:
        """Pure: the decision depends only on the specs and the current interface set."""
        if parse_ip(normalize_host(ip)) is None:
            # Fail closed: the caller should only pass resolver output, so this is a bug upstream.
            return Decision(False, f"resolved address {ip!r} is not a valid IP address")
        try:
            name = normalize_hostname(host)  # idempotent: the dialer passes it normalised
        except HostnameError as exc:
            return Decision(False, str(exc))  # fail closed, as the dialer does
        return self.check_normalized(name, ip, port)

    def check_normalized(self, name: str, ip: str, port: int) -> Decision:
        """:meth:`check` for a host already passed through normalize_hostname (the dialer
        normalises once per open; normalising again per address cost as much as the rest)."""
        addr = parse_ip(normalize_host(ip))
        if addr is None:
            return Decision(False, f"resolved address {ip!r} is not a valid IP address")
        # IP literal hosts are judged only by CIDR specs, as in the client's rules.
        name_or_none = None if parse_ip(name) is not None else name
        candidates = [(addr, ip)]
        embedded = _embedded_ipv4(addr[1]) if addr[0] == 6 else None
        if embedded is not None:
            candidates.append(((4, embedded), f"{ipaddress.IPv4Address(embedded)} (in {ip})"))
        for spec in self._deny:
            if any(spec.matches(name_or_none, cand, port) for cand, _ in candidates):
                return Decision(False, f"denied by {spec.text}")
        allowed_by: _Spec | None = None
        for cand, shown in candidates:
            match = next((s for s in self._allow if s.matches(name_or_none, cand, port)), None)
            if match is not None:
                allowed_by = allowed_by or match
                continue
            label = self._default_label(cand)
            if label is not None:
                return Decision(
                    False, f"{label} address {shown} is blocked by default (allow it with --allow)"
                )
        if allowed_by is not None:
            return allowed_by.allowed
        return _PUBLIC
