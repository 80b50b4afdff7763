"""The agent's mesh: one carrier to every live relay instance.

Every relay of a deployment sits behind the same load-balanced URL, and a
client_a may land on any of them, so the agent must be on all of them
(Teleport's reverse-tunnel agent mesh). The relays tell the agent who is
alive (MEMBERS); the agent dials the URL again and again until it holds one
connection per instance. A dial that lands on an instance already held is
closed, and the next one waits a full-jitter backoff. An instance that leaves
the set is dropped once its open tunnels have finished.

Dial errors wait a full-jitter backoff that HELLO resets, so when a held relay
is lost (a restart) the redial comes within 100 ms (jittered), and a relay
back up is joined again promptly. A connection that ends within a second of
its HELLO counts as a failure (see `Backoff`): a relay that accepts and drops
at once is redialled with a growing delay, not in a loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

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
from fastrelay.protocol.carriers import REJECTED_BACKOFF, Backoff, Membership
from fastrelay.protocol.messages import Members

log = logging.getLogger("fastrelay.mesh")
ERROR_BACKOFF = 0.1  # first pause after a failed dial, or after a held relay is lost
DUPLICATE_BACKOFF = 0.05  # first pause after landing on an instance already held
RETIRE_GRACE = 1.0  # an idle retired carrier waits this long for opens already sent
DIAL_RESULTS = ("ok", "duplicate", "error")


class AgentMesh:
    def __init__(self, link: RelayLink, handler: CarrierHandler, stats: CarrierStats) -> None:
        self.link = link
        self.handler = handler
        self.stats = stats
        self.held: dict[str, Carrier] = {}  # instance id -> its carrier
        self.leaving: list[Carrier] = []  # dropped from the set, finishing their tunnels
        self.membership: Membership[Carrier] = Membership()  # who is alive, from MEMBERS
        self.dials: Counter[str] = Counter({r: 0 for r in DIAL_RESULTS})
        self.backoff = Backoff(ERROR_BACKOFF, link.reconnect_max)  # errors, losses, flaps
        self.joined_at: dict[Carrier, float] = {}  # held carriers: when their HELLO came
        self.redial_pause = False  # a held relay ended: wait the backoff before dialling
        self.changed = asyncio.Event()
        self.dial_log = RateLimitedLog(log, period=10.0, burst=3)

    @property
    def carriers(self) -> list[Carrier]:
        return [*self.held.values(), *self.leaving]

    @property
    def ready(self) -> bool:
        return any(c.ready for c in self.held.values())

    def wanted(self) -> set[str] | None:
        return self.membership.wanted(self.held)

    def missing(self) -> list[str]:
        return self.membership.missing(self.held)

    async def run(self, stop: asyncio.Event) -> None:
        dialing = asyncio.ensure_future(self._dial_loop(stop))
        try:
            await stop.wait()
        finally:
            dialing.cancel()  # a dial in progress must not hold up shutdown
            await asyncio.gather(dialing, return_exceptions=True)
            await asyncio.gather(*(c.aclose() for c in self.carriers))

    async def _dial_loop(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        backoff = self.backoff
        duplicate_backoff = Backoff(DUPLICATE_BACKOFF, min(2.0, self.link.reconnect_max))
        while not stop.is_set():
            if not self.missing():
                self.changed.clear()
                await first_of(stop.wait(), self.changed.wait())
                continue
            if self.redial_pause:
                self.redial_pause = False
                await pause(stop, backoff.next_delay(loop.time()))
                continue  # the set may have changed meanwhile
            carrier = Carrier(self.link, self.handler, self, self.stats)
            try:
                hello = await carrier.open()
            except (TimeoutError, OSError, WSError, ConnectionError) as exc:
                self.dials["error"] += 1
                self.stats.reconnects += 1  # the next dial is a redial
                delay = backoff.next_delay(loop.time())
                if dial_rejected(exc):
                    self.dial_log.warning(
                        "the relay rejected the token: check --token-file or FASTRELAY_TOKEN",
                        url=self.link.url,
                        error=describe_dial_error(exc, "the agent"),
                    )
                    delay = max(delay, min(self.link.reconnect_max, REJECTED_BACKOFF))
                else:
                    self.dial_log.warning(
                        "cannot reach relay", url=self.link.url, error=describe_dial_error(exc)
                    )
                carrier.close()
                await pause(stop, delay)
                continue
            backoff.connected()
            if carrier.lost:  # gone right after HELLO: a flap
                backoff.ended(0.0, loop.time())
                await pause(stop, backoff.next_delay(loop.time()))
                continue
            instance = hello.instance_id
            if instance in self.held:
                self.dials["duplicate"] += 1
                # The relay may already have routed an open to it: retire it
                # with GOAWAY (no new streams), never by closing under them.
                self._retire(carrier, "duplicate: the agent holds this instance")
                await pause(stop, duplicate_backoff.next_delay(loop.time()))
                continue
            self.dials["ok"] += 1
            duplicate_backoff.reset()
            self.held[instance] = carrier
            self.joined_at[carrier] = loop.time()
            log.info("mesh: joined relay %s (%d held)", instance, len(self.held))

    # --- CarrierOwner ---

    def carrier_members(self, carrier: Carrier, members: Members) -> None:
        for instance in self.membership.members(self.held, carrier, members.instances):
            self._drop(instance, self.held[instance])
        self.changed.set()

    def carrier_goaway(self, carrier: Carrier) -> None:
        # The relay is draining: it is leaving the set. Keep serving its open
        # tunnels; a fresh dial will not land on it (it stopped listening).
        instance = carrier.instance_id
        if self.held.get(instance) is carrier:
            self._ended(carrier)
            self._drop(instance, carrier)
        self.changed.set()

    def carrier_lost(self, carrier: Carrier) -> None:
        instance = carrier.instance_id
        if self.held.get(instance) is carrier:
            del self.held[instance]
            self._ended(carrier)
            if not carrier.closing:  # not our own shutdown
                self.stats.reconnects += 1  # it is dialled again while still wanted
                log.info("mesh: lost relay %s", instance)
        if carrier in self.leaving:
            self.leaving.remove(carrier)
        self.membership.forget(carrier)
        self.changed.set()

    def _ended(self, carrier: Carrier) -> None:
        """A held carrier is lost or draining: the next dial waits the
        backoff, short after a healthy connection, growing after flaps."""
        joined_at = self.joined_at.pop(carrier, None)
        if joined_at is not None:
            now = asyncio.get_running_loop().time()
            self.backoff.ended(now - joined_at, now)
        self.redial_pause = True

    def _drop(self, instance: str, carrier: Carrier) -> None:
        del self.held[instance]
        self.membership.forget(carrier)
        self.joined_at.pop(carrier, None)
        log.info("mesh: relay %s left the set", instance)
        self._retire(carrier, "instance left the set")

    def _retire(self, carrier: Carrier, why: str) -> None:
        """No new streams here: GOAWAY tells the relay so. Open tunnels run
        on; the carrier closes when the last one ends (the session sees to
        it), or after a grace for opens already on their way when it is idle."""
        carrier.session.retire(why)
        self.leaving.append(carrier)
        asyncio.get_running_loop().call_later(RETIRE_GRACE, carrier.close_if_idle)
