"""An endpoint's relay connections ("carriers"): the decisions, as pure code.

client_a and the agent each keep WebSockets to the relays behind one
load-balanced URL. What they decide about them lives here, with no sockets,
no asyncio and no clock reads (the caller passes `now`):

* `Backoff`: when to dial again after a failure, a loss or a flap;
* `DialHealth`: whether the relay counts as unavailable, so a request hears
  why at once instead of waiting out its open timeout;
* `CarrierChoice`: which carrier client_a sends an open on (and a retry),
  and which carriers a draining relay takes out of the choice;
* `Membership`: which relay instances the agent must hold, from the
  relays' MEMBERS.

fastrelay/io/pool.py (client_a) and agent/mesh.py carry the decisions out.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Iterable, Mapping, Sequence, Sized
from typing import Generic, Protocol, TypeVar

BACKOFF_SETTLE = 1.0  # a connection that ends sooner after HELLO is a flap (see Backoff)
RECOVERY = 15.0  # after a healthy connection is lost, redial delays stay short this long
RECOVERY_CAP = 1.0  # ... at most this (full jitter)
REJECTED_BACKOFF = 5.0  # a rejected token is redialled no sooner than this (cap allowing)
FAILING_GRACE = 2.0  # dials failing this long (no success between) mean the relay is unavailable


class Backoff:
    """Paces the dials to a relay: exponential backoff with full jitter. The
    n-th delay after a failure is uniform in [0, min(cap, initial * 2**n)], so
    a fleet redialling a restarted relay spreads out instead of arriving in
    waves.

    A completed HELLO (`connected`) resets it: the relay is up, so when that
    connection is later lost the first redial comes within `initial`
    (jittered), not after a delay grown by failures long past. But a
    connection that ends within `settle` seconds of its HELLO (`ended`) is a
    flap, not a success: a relay that accepts and drops at once, or one in a
    crash loop. Flaps in a row count as failures, and HELLO then resets only
    down to their number, so such a relay is redialled with a growing delay,
    never in a tight loop. A connection that lived `settle` seconds clears
    them.

    A healthy connection's loss is usually a relay restarting, which takes
    seconds: for `RECOVERY` seconds after it the delays stay within
    `RECOVERY_CAP`, so the restarted relay gets its peers back within about
    a second of listening again (a plain doubling backoff had grown to 3.2 s
    by then: the first tunnel came a median 2.9 s after the relay was ready,
    over 10 restarts with a 1 s outage). After that window, or for a relay
    that never held a connection, the doubling resumes up to `cap`.

    Times are the caller's monotonic clock; `rng` draws the jitter (a seeded
    `random.Random` makes the delays reproducible)."""

    def __init__(
        self,
        initial: float,
        cap: float,
        settle: float = BACKOFF_SETTLE,
        rng: random.Random | None = None,
    ) -> None:
        self.initial = initial
        self.cap = cap
        self.settle = settle
        self.rng = rng or random.Random()
        self.attempt = 0  # failures since the last reset
        self.flaps = 0  # connections in a row that ended within `settle` of HELLO
        self.recover_until = 0.0  # a healthy connection was lost: short delays until then

    def bound(self, now: float) -> float:
        """The longest the next delay can be."""
        bound = min(self.cap, self.initial * (1 << self.attempt))
        if self.recover_until and now < self.recover_until:
            return min(bound, max(self.initial, RECOVERY_CAP))
        return bound

    def next_delay(self, now: float) -> float:
        """The pause before the next dial; counts one failure."""
        delay = self.rng.uniform(0, self.bound(now))
        self.attempt = min(self.attempt + 1, 30)
        return delay

    def reset(self) -> None:
        self.attempt = 0
        self.flaps = 0

    def connected(self) -> None:
        """HELLO completed."""
        self.attempt = self.flaps

    def ended(self, lived: float, now: float) -> None:
        """A connection that had completed HELLO ended (lost, or GOAWAY)
        `lived` seconds after it, at `now`."""
        if lived >= self.settle:
            self.reset()
            self.recover_until = now + RECOVERY
        else:
            self.recover_until = 0.0
            self.flaps = min(self.flaps + 1, 30)
            self.attempt = max(self.attempt, self.flaps)


class DialHealth:
    """Whether the relay is reachable, from the outcomes of the dials to it.

    One failed dial is not enough to call it unavailable: in a rolling restart
    a dial may land on a relay that is going away while the next one succeeds.
    It is unavailable when it refused the token, or when every dial has failed
    for `grace` seconds. `last_failure` says why, for the browser's error."""

    def __init__(self, grace: float = FAILING_GRACE) -> None:
        self.grace = grace
        self.last_failure: str | None = None  # None once a dial succeeds
        self.failing_since: float | None = None  # the first failed dial since a success
        self.rejected = False  # the last failure was the relay refusing the token

    def failed(self, now: float, why: str, rejected: bool) -> None:
        self.last_failure = why
        self.rejected = rejected
        if self.failing_since is None:
            self.failing_since = now

    def succeeded(self) -> None:
        self.last_failure = None
        self.failing_since = None
        self.rejected = False

    def unavailable(self, now: float) -> bool:
        if self.last_failure is None or self.failing_since is None:
            return False
        return self.rejected or now - self.failing_since >= self.grace


class Placeable(Protocol):
    """What the choice reads of a carrier."""

    @property
    def instance_id(self) -> str: ...  # the relay process it landed on

    @property
    def ready(self) -> bool: ...  # HELLO came, no GOAWAY, not retired, not lost

    @property
    def full(self) -> bool: ...  # at its relay's limit of streams

    @property
    def streams(self) -> Sized: ...  # its open streams


C = TypeVar("C", bound=Placeable)


class CarrierChoice(Generic[C]):
    """client_a's choice of carrier for an open.

    A ready carrier on the relay instance with the fewest of our streams, then
    the least busy carrier there. Balancing by instance first matters when
    carriers land unevenly (a balancer's hash, or SO_REUSEPORT under
    --workers: 7 of 8 carriers on one worker happens). Ties rotate (instances,
    then carriers), so short sequential requests spread over every relay too.
    A retry avoids the carrier of its first try: another instance if there is
    one, else another carrier.

    A relay sends GOAWAY on all its connections at once, but each arrives in
    its own time, so the first sign that a relay is draining (a GOAWAY, or an
    open refused as "draining") takes every carrier to that relay instance out
    of the choice (`draining`): no open, and no retry, lands on a sibling
    whose GOAWAY is still on its way."""

    def __init__(self) -> None:
        self.turn = 0

    def pick(self, carriers: Iterable[C], avoid: C | None = None) -> C | None:
        ready = [c for c in carriers if c.ready and not c.full]
        if avoid is not None:
            elsewhere = [c for c in ready if c.instance_id != avoid.instance_id]
            ready = elsewhere or [c for c in ready if c is not avoid]
        if not ready:
            return None
        self.turn += 1
        turn = self.turn
        first = ready[0].instance_id
        candidates = ready
        if any(c.instance_id != first for c in ready):
            by_instance: dict[str, list[C]] = {}
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

    @staticmethod
    def draining(carriers: Iterable[C], sign: C) -> list[C]:
        """`sign`'s relay is shutting down (it sent GOAWAY on `sign`, or refused
        an open on it as draining): the carriers to retire, every ready one to
        the same relay process. Instance ids name relay processes; a relay
        restarted under the same id comes back on carriers dialled later."""
        instance = sign.instance_id
        return [c for c in carriers if c.ready and c.instance_id == instance]


K = TypeVar("K", bound=Hashable)


class Membership(Generic[K]):
    """Which relay instances the agent must hold one carrier to.

    Every relay of a deployment sits behind the same URL, and a client_a may
    land on any of them, so the agent holds one carrier per live instance.
    Each held relay says who is alive (MEMBERS); an instance is wanted while
    any held relay lists it: a new relay lists itself at once, and a dead one
    drops out when the others' heartbeat TTL expires. Keys (`K`) name the
    held carriers."""

    def __init__(self) -> None:
        self.views: dict[K, tuple[str, ...]] = {}  # each held carrier's last MEMBERS

    def wanted(self, held: Mapping[str, K]) -> set[str] | None:
        """None before any held relay has said (one relay, any relay, will do)."""
        views = [self.views[k] for k in held.values() if k in self.views]
        return set().union(*views) if views else None

    def missing(self, held: Mapping[str, K]) -> list[str]:
        """The instances to dial for, in order; ["any"] before the first MEMBERS."""
        wanted = self.wanted(held)
        if wanted is None:
            return [] if held else ["any"]
        return sorted(i for i in wanted if i not in held)

    def members(self, held: Mapping[str, K], key: K, instances: Sequence[str]) -> list[str]:
        """`key`'s relay sent MEMBERS: the held instances that left the set
        (drop them: `forget` each, and finish their open tunnels)."""
        self.views[key] = tuple(instances)
        wanted = self.wanted(held)
        if wanted is None:
            return []
        return [instance for instance in held if instance not in wanted]

    def forget(self, key: K) -> None:
        self.views.pop(key, None)


def _rotated(items: list[str], turn: int) -> list[str]:
    start = turn % len(items)
    return items[start:] + items[:start]
