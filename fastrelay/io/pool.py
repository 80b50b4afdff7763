"""client_a's carriers: a small pool of WebSockets through the load balancer.

`size` slots each keep one carrier open, redialling with backoff when theirs
is lost. HELLO resets a slot's backoff, so the first redial after a loss comes
within 100 ms (jittered); a carrier that ends within a second of its HELLO
counts as a failure instead (see `Backoff`). A lost carrier costs only its own
streams, and the next open simply lands on another one. A carrier that gets
GOAWAY (its relay is draining) keeps its open tunnels, and its slot dials a
replacement at once; the old one closes itself when its last stream ends.

The decisions (which carrier an open goes on, which carriers a draining relay
retires, when to redial, when the relay counts as unavailable) are pure code
in fastrelay/protocol/carriers.py; this module carries them out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from picows import WSError

from fastrelay.io.carrier import (
    Carrier,
    CarrierHandler,
    CarrierStats,
    RelayLink,
    describe_dial_error,
    dial_rejected,
)
from fastrelay.lifecycle import first_of, pause
from fastrelay.logs import RateLimitedLog
from fastrelay.protocol.carriers import REJECTED_BACKOFF, Backoff, CarrierChoice, DialHealth
from fastrelay.protocol.messages import Members
from fastrelay.protocol.rules import PushedRules

log = logging.getLogger("fastrelay.pool")
BACKOFF_INITIAL = 0.1


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
        self.choice: CarrierChoice[Carrier] = CarrierChoice()
        self.dials = {"ok": 0, "error": 0}
        self.changed = asyncio.Event()  # a carrier became ready, was lost or got GOAWAY
        self.dial_log = RateLimitedLog(log, period=10.0, burst=3)
        # While the relay is `unavailable` and no carrier is ready, a request is
        # answered within NOT_CONNECTED_WAIT rather than after the open timeout.
        self.health = DialHealth()
        # Rules a relay pushed (RULES), for whoever set this; the link must ask for them.
        self.on_rules: Callable[[Carrier, PushedRules], None] | None = None

    # --- choosing ---

    def unavailable(self, now: float) -> bool:
        """A request should hear why rather than wait (`DialHealth`)."""
        return self.health.unavailable(now)

    @property
    def ready(self) -> list[Carrier]:
        return [c for c in self.carriers if c.ready]

    def pick(self, avoid: Carrier | None = None) -> Carrier | None:
        """The carrier for an open, or for a retry of one that went on `avoid`
        (`CarrierChoice`)."""
        return self.choice.pick(self.carriers, avoid)

    def another_relay(self, carrier: Carrier) -> bool:
        """A carrier that could take an open, on another relay than `carrier`'s."""
        return any(
            c.ready and not c.full and c.instance_id != carrier.instance_id for c in self.carriers
        )

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
                rejected = dial_rejected(exc)
                why = describe_dial_error(exc, "client_a")
                self.health.failed(loop.time(), why, rejected)
                delay = backoff.next_delay(loop.time())
                if rejected:
                    self.dial_log.warning(
                        "the relay rejected the token: check --token-file or FASTRELAY_TOKEN",
                        url=self.link.url,
                        error=why,
                    )
                    delay = max(delay, min(self.link.reconnect_max, REJECTED_BACKOFF))
                else:
                    self.dial_log.warning("cannot reach relay", url=self.link.url, error=why)
                carrier.close()
                self.changed.set()  # requests waiting for a carrier hear why there is none
                await pause(stop, delay)
                continue
            self.health.succeeded()
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
            backoff.ended(loop.time() - hello_at, loop.time())
            # A GOAWAY after a healthy life is replaced at once; a loss, or a
            # flap (ended right after HELLO), waits its jittered backoff.
            if carrier.lost or backoff.flaps:
                await pause(stop, backoff.next_delay(loop.time()))

    # --- CarrierOwner ---

    def relay_draining(self, carrier: Carrier) -> None:
        """`carrier`'s relay is shutting down: it sent GOAWAY, or it refused an
        open as draining. Every carrier to that relay process is retired (no new
        opens, closed once idle, its slot dials a replacement at once; see
        `CarrierChoice.draining`)."""
        for other in self.choice.draining(self.carriers, carrier):
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
