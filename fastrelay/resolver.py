"""Name look-ups for the agent's dials and client_a's direct ones.

The default resolver is c-ares (pycares, on the event loop): every look-up is a query on a socket
the event loop watches, so a name whose authority never answers costs one query and its timer,
and nothing else. The system resolver (``--resolver system``, getaddrinfo) runs on libuv's
thread pool, where two names that stall take every thread slow look-ups may use: each
later look-up of every tenant waits behind them (glibc: 5 s per attempt, 2 attempts). It
stays an option for hosts whose names come from NSS sources other than DNS and the hosts
file (mDNS, LDAP).

With c-ares, answers are cached for their TTL (``NameCache``: at most ``--dns-cache`` names,
never over 300 s), and one look-up per name is in flight: the dozens of opens a page makes
to one host share its query. Both resolvers answer an IP literal without a look-up.

How many look-ups are in flight is bounded by the opens: at the agent each is a dial, and the
relay keeps at most ``--max-opens-per-agent`` dials in flight per agent connection; at client_a
each is a browser connection (``--max-connections``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import pycares
import pycares.errno
from prometheus_client.core import Metric

from fastrelay import metrics
from fastrelay.protocol.namecache import MAX_NAMES, NameCache

# fastrelay_dns_lookups_total{result}: a cache hit, a shared query, an answer, and why not.
LOOKUP_RESULTS = ("cached", "joined", "ok", "not_found", "timeout", "error")
_NOT_FOUND = (pycares.errno.ARES_ENODATA, pycares.errno.ARES_ENOTFOUND)


class LookupFailure(Exception):
    """A name that gave no address: the dial answers it with a 502, reason ``dns``."""


def ip_literal(host: str) -> str | None:
    """``host`` as the address it spells, or None for a name."""
    try:
        # A strict dotted quad (inet_pton's form) is what ipaddress would print back; the
        # ipaddress round trip costs ~10 µs per open, inet_pton well under one.
        socket.inet_pton(socket.AF_INET, host)
        return host
    except (OSError, ValueError):
        pass
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


class Resolver(Protocol):
    counts: Counter[str]

    async def resolve(self, host: str) -> list[str]:
        """The addresses to dial for a normalised host name, in the order to try them."""

    def cached_names(self) -> int: ...

    async def close(self) -> None: ...


class SystemResolver:
    """getaddrinfo on the event loop's executor (libuv's thread pool under uvloop)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter(dict.fromkeys(LOOKUP_RESULTS, 0))

    async def resolve(self, host: str) -> list[str]:
        address = ip_literal(host)
        if address is not None:
            return [address]
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            self.counts["not_found" if exc.errno == socket.EAI_NONAME else "error"] += 1
            raise LookupFailure(f"DNS lookup of {host} failed: {exc.strerror}") from None
        self.counts["ok"] += 1
        return _unique(str(info[4][0]) for info in infos)

    def cached_names(self) -> int:
        return 0

    async def close(self) -> None:
        pass


class _Channel:
    """One c-ares channel on the event loop: its sockets are the loop's readers and writers
    (``sock_state_cb``) and one timer drives its timeouts, so a query costs no thread.

    c-ares keeps its own cache of answers (and of negative answers), bounded only by their
    TTL, up to an hour; pycares cannot bound it. So a channel takes ``ROTATE_AFTER`` queries
    and then retires: it answers what it has in flight and is closed, cache and all."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, servers: Sequence[str], options: dict[str, Any]
    ) -> None:
        self._bad = pycares.ARES_SOCKET_BAD
        self.loop = loop
        self.fds: set[int] = set()
        self.timer: asyncio.TimerHandle | None = None
        self.pending = 0  # queries in flight
        self.queries = 0  # queries sent, ever
        self.retired = False
        self.closed = False
        self.channel = pycares.Channel(
            sock_state_cb=self._sock_state, servers=list(servers) or None, **options
        )

    def getaddrinfo(self, host: str, done: Any) -> None:
        def answered(result: Any, error: int | None) -> None:
            self.pending -= 1
            done(result, error)
            if self.retired and self.pending == 0:
                self.loop.call_soon(self.close)

        self.pending += 1
        self.queries += 1
        self.channel.getaddrinfo(host, None, type=socket.SOCK_STREAM, callback=answered)
        self._arm()

    def _sock_state(self, fd: int, readable: bool, writable: bool) -> None:
        if self.closed:  # pycares destroys a closed channel on a thread of its own
            return
        loop = self.loop
        if fd in self.fds:
            loop.remove_reader(fd)
            loop.remove_writer(fd)
            self.fds.discard(fd)
        if readable:
            loop.add_reader(fd, self._process, fd, self._bad)
        if writable:
            loop.add_writer(fd, self._process, self._bad, fd)
        if readable or writable:
            self.fds.add(fd)

    def _process(self, read_fd: int, write_fd: int) -> None:
        self.channel.process_fd(read_fd, write_fd)
        self._arm()

    def _arm(self) -> None:
        """The timer, due at c-ares' next timeout while a query is in flight."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.pending:
            delay = max(self.channel.timeout(1.0), 0.001)  # at most 1 s: none due is 1 s
            self.timer = self.loop.call_later(delay, self._process, self._bad, self._bad)

    def close(self) -> None:
        """End every query here, on the loop's thread (each waiter gets its failure), then let
        pycares destroy the channel: it does that on a thread of its own, so from here on
        nothing it reports may touch the loop."""
        if self.closed:
            return
        if self.pending:
            self.channel.cancel()
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for fd in self.fds:
            self.loop.remove_reader(fd)
            self.loop.remove_writer(fd)
        self.fds.clear()
        self.channel.close()


# A channel's queries before it retires: its own cache then holds at most this many names'
# answers (~2 KiB each, A and AAAA). A retired channel lives until its last query ends (c-ares'
# own timeouts, seconds).
ROTATE_AFTER = 10_000


class CaresResolver:
    """c-ares queries on the event loop, a TTL cache, one query per name in flight."""

    def __init__(
        self,
        servers: Sequence[str] = (),
        cache_names: int = MAX_NAMES,
        timeout: float | None = None,
        tries: int | None = None,
        rotate_after: int = ROTATE_AFTER,
    ) -> None:
        self.servers = tuple(servers)  # HOST:PORT each; empty: /etc/resolv.conf
        self.options = {k: v for k, v in (("timeout", timeout), ("tries", tries)) if v is not None}
        self.rotate_after = rotate_after
        self.cache = NameCache(cache_names)
        self.counts: Counter[str] = Counter(dict.fromkeys(LOOKUP_RESULTS, 0))
        self.channels = 0  # channels made, ever
        self._pending: dict[str, asyncio.Future[list[str]]] = {}
        self._channel: _Channel | None = None
        self._retiring: list[_Channel] = []

    def _current(self) -> _Channel:
        channel = self._channel
        if channel is not None and channel.queries >= self.rotate_after:
            channel.retired = True
            if channel.pending:
                self._retiring.append(channel)
            else:
                channel.close()
            channel = None
        if channel is None:
            self._retiring = [c for c in self._retiring if c.pending]
            channel = _Channel(asyncio.get_running_loop(), self.servers, self.options)
            self._channel = channel
            self.channels += 1
        return channel

    async def resolve(self, host: str) -> list[str]:
        address = ip_literal(host)
        if address is not None:
            return [address]
        cached = self.cache.get(host, time.monotonic())
        if cached is not None:
            self.counts["cached"] += 1
            return list(cached)
        future = self._pending.get(host)
        if future is None:
            future = self._query(host)
        else:
            self.counts["joined"] += 1
        # A waiter that gives up (its dial timed out, its stream ended) leaves the query
        # running for the others, and for the cache.
        return list(await asyncio.shield(future))

    def _query(self, host: str) -> asyncio.Future[list[str]]:
        answer: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()

        def done(result: Any, error: int | None) -> None:
            del self._pending[host]
            if error is not None:
                if error in _NOT_FOUND:
                    self.counts["not_found"] += 1
                elif error == pycares.errno.ARES_ETIMEOUT:
                    self.counts["timeout"] += 1
                else:
                    self.counts["error"] += 1
                why = _text(pycares.errno.strerror(error))
                answer.set_exception(LookupFailure(f"DNS lookup of {host} failed: {why}"))
                answer.exception()  # retrieved: every waiter may have given up
                return
            nodes = result.nodes
            addresses = _unique(_text(node.addr[0]) for node in nodes)
            if not addresses:
                self.counts["not_found"] += 1
                answer.set_exception(LookupFailure(f"DNS lookup of {host} found no address"))
                answer.exception()
                return
            self.counts["ok"] += 1
            ttl = min(node.ttl for node in nodes)
            self.cache.put(host, addresses, ttl, time.monotonic())
            answer.set_result(addresses)

        self._pending[host] = answer
        try:
            self._current().getaddrinfo(host, done)
        except Exception as exc:  # a name c-ares refuses outright
            self._pending.pop(host, None)
            self.counts["error"] += 1
            raise LookupFailure(f"DNS lookup of {host} failed: {exc}") from None
        return answer

    def cached_names(self) -> int:
        return len(self.cache)

    async def close(self) -> None:
        for channel in (self._channel, *self._retiring):
            if channel is not None:
                channel.close()
        self._channel = None
        self._retiring = []


def _text(address: bytes | str) -> str:
    return address.decode("ascii") if isinstance(address, bytes) else address


def _unique(addresses: Any) -> list[str]:
    seen: list[str] = []
    for address in addresses:
        if address not in seen:
            seen.append(address)
    return seen


def resolver_metrics(resolver: Resolver) -> Iterator[Metric]:
    yield metrics.F_DNS_LOOKUPS.build(metrics.by_label(resolver.counts))
    yield metrics.F_DNS_CACHE.one(resolver.cached_names())


def make_resolver(kind: str, servers: Sequence[str], cache_names: int) -> Resolver:
    if kind == "system":
        return SystemResolver()
    return CaresResolver(servers, cache_names)
