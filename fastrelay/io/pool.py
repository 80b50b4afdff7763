"""client_a's carriers: a small pool of WebSockets through the load balancer.

`size` slots each keep one carrier open, redialling with backoff when theirs
is lost. HELLO resets a slot's backoff, so the first redial after a loss comes
within 100 ms (jittered); a carrier that ends within a second of its HELLO
counts as a failure instead (see `Backoff`). New streams go to the ready
carrier with the fewest streams, so a lost carrier costs only its own streams
and the next open simply lands on another one. A carrier that gets GOAWAY
(its relay is draining) keeps its open tunnels, and its slot dials a
replacement at once; the old one closes itself when its last stream ends.
A relay sends GOAWAY on all its connections at once, but each arrives in its
own time, so the first sign that a relay is draining (a GOAWAY, or an open
refused as "draining") retires every carrier to that relay: no open is sent,
or retried, on a sibling whose GOAWAY is still on its way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from picows import WSError

from fastrelay.io.carrier import (
    REJECTED_BACKOFF,
    Backoff,
    Carrier,
    CarrierHandler,
    CarrierStats,
    RelayLink,
    describe_dial_error,
    dial_rejected,
)
from fastrelay.lifecycle import first_of, pause
from fastrelay.logs import RateLimitedLog
from fastrelay.protocol.messages import Members
from fastrelay.protocol.rules import PushedRules

log = logging.getLogger("fastrelay.pool")
BACKOFF_INITIAL = 0.1
FAILING_GRACE = 2.0  # dials failing this long (no success between) mean the relay is unavailable


class CarrierPool:
    def __init__(
        self,
        link: RelayLink,
        handler: CarrierHandler,
        stats: CarrierStats,
        size: int,
        open_timeout: float = 0.0,
    ) -> None:
        self.link = link
        self.open_timeout = open_timeout  # how long an open waits for its answer
        self.handler = handler
        self.stats = stats
        self.size = size
        self.carriers: list[Carrier] = []  # every live one, draining ones included
        self.turn = 0
        self.dials = {"ok": 0, "error": 0}
        self.changed = asyncio.Event()  # a carrier became ready, was lost or got GOAWAY
        self.dial_log = RateLimitedLog(log, period=10.0, burst=3)
        # Why the last dial of the relay failed; None once one succeeds. While
        # the relay is `unavailable` and no carrier is ready, a request is
        # answered within NOT_CONNECTED_WAIT rather than after the open timeout.
        self.last_failure: str | None = None
        self.failing_since: float | None = None  # the first failed dial since a success
        self.rejected = False  # the last failure was the relay refusing the token
        # Rules a relay pushed (RULES), for whoever set this; the link must ask for them.
        self.on_rules: Callable[[Carrier, PushedRules], None] | None = None

    # --- choosing ---

    def unavailable(self, now: float) -> bool:
        """The relay refuses the token, or every dial has failed for
        FAILING_GRACE seconds: a request should hear why rather than wait.
        (One failed dial alone is not enough: in a rolling restart a dial may
        land on a relay that is going away while the next one succeeds.)"""
        if self.last_failure is None or self.failing_since is None:
            return False
        return self.rejected or now - self.failing_since >= FAILING_GRACE

    @property
    def ready(self) -> list[Carrier]:
        return [c for c in self.carriers if c.ready]

    def pick(self, avoid: Carrier | None = None) -> Carrier | None:
        """A ready carrier on the relay instance with the fewest of our
        streams, then the least busy carrier there. Balancing by instance
        first matters when carriers land unevenly (a balancer's hash, or
        SO_REUSEPORT under --workers: 7 of 8 carriers on one worker happens).
        With `avoid`, another instance if there is one, else another carrier."""
        ready = [c for c in self.carriers if c.ready and not c.full]
        if avoid is not None:
            elsewhere = [c for c in ready if c.instance_id != avoid.instance_id]
            ready = elsewhere or [c for c in ready if c is not avoid]
        if not ready:
            return None
        # Ties rotate (instances, then carriers), so short sequential
        # requests spread over every relay too.
        self.turn += 1
        turn = self.turn
        first = ready[0].instance_id
        candidates = ready
        if any(c.instance_id != first for c in ready):
            by_instance: dict[str, list[Carrier]] = {}
            for carrier in ready:
                by_instance.setdefault(carrier.instance_id, []).append(carrier)
            instances = _rotated(sorted(by_instance), turn)
            least = min(instances, key=lambda i: sum(len(c.streams) for c in by_instance[i]))
            candidates = by_instance[least]
        # The first of the fewest streams in the rotated order: one pass, no copies
        # (with a single relay instance, the usual case, this is all of pick).
        n = len(candidates)
        start = turn % n
        best = candidates[start]
        fewest = len(best.streams)
        for i in range(start + 1, start + n):
            carrier = candidates[i % n]
            if len(carrier.streams) < fewest:
                best, fewest = carrier, len(carrier.streams)
        return best

    async def wait_pick(
        self, timeout: float, avoid: Carrier | None = None, failing_wait: float | None = None
    ) -> Carrier | None:
        """pick(), waiting up to `timeout` for a carrier (after a restart or a
        GOAWAY a replacement is usually moments away). With `failing_wait`,
        once the relay is `unavailable`, wait at most that much longer."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        shortened = False
        while (carrier := self.pick(avoid)) is None:
            if failing_wait is not None and not shortened and self.unavailable(loop.time()):
                shortened = True
                deadline = min(deadline, loop.time() + failing_wait)
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)
        return carrier

    # --- keeping `size` carriers ---

    async def run(self, stop: asyncio.Event) -> None:
        slots = [asyncio.ensure_future(self._slot(stop)) for _ in range(self.size)]
        try:
            await stop.wait()
        finally:
            for slot in slots:
                slot.cancel()
            await asyncio.gather(*slots, return_exceptions=True)
            await asyncio.gather(*(c.aclose() for c in list(self.carriers)))

    async def _slot(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        backoff = Backoff(BACKOFF_INITIAL, self.link.reconnect_max)
        first = True
        while not stop.is_set():
            if not first:
                self.stats.reconnects += 1
            first = False
            carrier = Carrier(
                self.link, self.handler, self, self.stats, self.open_timeout, self.on_rules
            )
            try:
                await carrier.open()
            except (TimeoutError, OSError, WSError, ConnectionError) as exc:
                self.dials["error"] += 1
                self.last_failure = describe_dial_error(exc, "client_a")
                self.rejected = dial_rejected(exc)
                if self.failing_since is None:
                    self.failing_since = loop.time()
                delay = backoff.next_delay()
                if self.rejected:
                    self.dial_log.warning(
                        "the relay rejected the token: check --token-file or FASTRELAY_TOKEN",
                        url=self.link.url,
                        error=self.last_failure,
                    )
                    delay = max(delay, min(self.link.reconnect_max, REJECTED_BACKOFF))
                else:
                    self.dial_log.warning(
                        "cannot reach relay", url=self.link.url, error=self.last_failure
                    )
                carrier.close()
                self.changed.set()  # requests waiting for a carrier hear why there is none
                await pause(stop, delay)
                continue
            self.last_failure = None
            self.failing_since = None
            self.rejected = False
            hello_at = loop.time()
            backoff.connected()
            self.dials["ok"] += 1
            if not carrier.lost:  # it may be gone already, right after HELLO
                self.carriers.append(carrier)
                self.changed.set()
            # Until the connection is lost, or GOAWAY (or retiring it) frees the slot
            # for a replacement.
            while carrier.ready and not stop.is_set():
                self.changed.clear()
                await first_of(stop.wait(), carrier.done, self.changed.wait())
            if stop.is_set():
                return
            backoff.ended(loop.time() - hello_at)
            # A GOAWAY after a healthy life is replaced at once; a loss, or a
            # flap (ended right after HELLO), waits its jittered backoff.
            if carrier.lost or backoff.flaps:
                await pause(stop, backoff.next_delay())

    # --- CarrierOwner ---

    def relay_draining(self, carrier: Carrier) -> None:
        """`carrier`'s relay is shutting down: it sent GOAWAY, or it refused an
        open as draining. Every carrier to that relay process is retired (no new
        opens, closed once idle, its slot dials a replacement at once), so an open
        or a retry never lands on a sibling whose GOAWAY is still in flight.
        Instance ids name relay processes (a restarted relay keeps its id but
        comes back on new carriers, dialled after this)."""
        instance = carrier.instance_id
        for other in self.carriers:
            if other.ready and other.instance_id == instance:
                other.session.retire("the relay is draining")
                other.close_if_idle()
        self.changed.set()

    def carrier_goaway(self, carrier: Carrier) -> None:
        self.relay_draining(carrier)

    def carrier_members(self, carrier: Carrier, members: Members) -> None:
        pass  # the mesh is the agent's concern

    def carrier_lost(self, carrier: Carrier) -> None:
        if carrier in self.carriers:
            self.carriers.remove(carrier)
        self.changed.set()


def _rotated(items: list, turn: int) -> list:
    start = turn % len(items)
    return items[start:] + items[:start]
