"""client_a's choice of carrier (fastrelay/io/pool.py CarrierPool.pick)."""

from __future__ import annotations

import asyncio
from collections import Counter
from types import SimpleNamespace

from fastrelay.io.carrier import CarrierStats, RelayLink
from fastrelay.io.pool import CarrierPool


def fake_carrier(instance: str, streams: int = 0, ready: bool = True) -> SimpleNamespace:
    return SimpleNamespace(
        instance_id=instance, streams=dict.fromkeys(range(streams)), ready=ready, full=False
    )


def make_pool(carriers: list[SimpleNamespace]) -> CarrierPool:
    async def build() -> CarrierPool:
        link = RelayLink("ws://127.0.0.1:1/v1/client", "client", "t", None, 20, 1 << 20, 1, 1 << 20)
        pool = CarrierPool(link, handler=None, stats=CarrierStats(), size=len(carriers))  # type: ignore[arg-type]
        pool.carriers = carriers  # type: ignore[assignment]
        return pool

    return asyncio.run(build())


def test_sequential_opens_spread_over_instances_not_carriers() -> None:
    # 7 carriers landed on w0 and 1 on w1 (SO_REUSEPORT's hash does that).
    carriers = [fake_carrier("w0") for _ in range(7)] + [fake_carrier("w1")]
    pool = make_pool(carriers)
    picks = Counter(pool.pick().instance_id for _ in range(100))  # type: ignore[union-attr]
    assert picks == {"w0": 50, "w1": 50}


def test_the_less_loaded_instance_wins() -> None:
    carriers = [fake_carrier("a", 3), fake_carrier("a", 0), fake_carrier("b", 2)]
    pool = make_pool(carriers)
    assert pool.pick() is carriers[2]  # instance b has 2 streams, a has 3


def test_avoid_prefers_another_instance_then_another_carrier() -> None:
    a1, a2, b = fake_carrier("a"), fake_carrier("a"), fake_carrier("b", 9)
    pool = make_pool([a1, a2, b])
    assert pool.pick(avoid=a1) is b
    only_a = make_pool([a1, a2])
    assert only_a.pick(avoid=a1) is a2
    assert make_pool([a1]).pick(avoid=a1) is None


def test_carriers_that_are_not_ready_are_never_picked() -> None:
    pool = make_pool([fake_carrier("a", ready=False), fake_carrier("b", 5)])
    assert pool.pick().instance_id == "b"  # type: ignore[union-attr]
    assert make_pool([fake_carrier("a", ready=False)]).pick() is None


def _reference_pick(pool: CarrierPool, avoid: SimpleNamespace | None) -> SimpleNamespace | None:
    """pick() as first written (sorted and rotated copies, a min per level): the
    single-pass version must choose exactly the same carrier, turn by turn."""

    def rotated(items: list, turn: int) -> list:
        start = turn % len(items)
        return items[start:] + items[:start]

    ready = [c for c in pool.carriers if c.ready and not c.full]
    if avoid is not None:
        elsewhere = [c for c in ready if c.instance_id != avoid.instance_id]
        ready = elsewhere or [c for c in ready if c is not avoid]
    if not ready:
        return None
    by_instance: dict[str, list] = {}
    for carrier in ready:
        by_instance.setdefault(carrier.instance_id, []).append(carrier)
    turn = pool.turn + 1
    instances = rotated(sorted(by_instance), turn)
    least = min(instances, key=lambda i: sum(len(c.streams) for c in by_instance[i]))
    return min(rotated(by_instance[least], turn), key=lambda c: len(c.streams))  # type: ignore[no-any-return]


def test_pick_chooses_as_the_reference_does() -> None:
    import random

    rng = random.Random(12)
    for _ in range(300):
        carriers = [
            fake_carrier(rng.choice("ab" if rng.random() < 0.5 else "a"), rng.randrange(4))
            for _ in range(rng.randrange(1, 6))
        ]
        for carrier in carriers:
            carrier.ready = rng.random() < 0.9
            carrier.full = rng.random() < 0.1
        pool = make_pool(carriers)  # type: ignore[arg-type]
        for _ in range(7):
            avoid = rng.choice([None, *carriers])
            want = _reference_pick(pool, avoid)
            assert pool.pick(avoid) is want  # type: ignore[arg-type]
            if want is not None:  # the pick's open lands on it
                want.streams[len(want.streams)] = None


class FakeSession:
    def __init__(self, carrier: SimpleNamespace) -> None:
        self.carrier = carrier
        self.retired: str | None = None

    def retire(self, reason: str) -> None:
        self.retired = reason
        self.carrier.ready = False  # a leaving session takes no new streams


def retirable(instance: str, streams: int = 0) -> SimpleNamespace:
    carrier = fake_carrier(instance, streams)
    carrier.session = FakeSession(carrier)
    carrier.closed = False
    carrier.close_if_idle = lambda: setattr(carrier, "closed", not carrier.streams)
    return carrier


def test_goaway_on_one_carrier_retires_every_carrier_to_that_relay() -> None:
    # a1 got its GOAWAY; a2 and a3 are on the same relay, theirs still in flight.
    a1, a2, a3, b = retirable("a"), retirable("a", 2), retirable("a"), retirable("b", 9)
    a1.ready = False
    pool = make_pool([a1, a2, a3, b])
    pool.changed.clear()
    pool.carrier_goaway(a1)  # type: ignore[arg-type]
    assert pool.changed.is_set()  # the slots dial replacements, waiting opens look again
    assert a1.session.retired is None  # its own GOAWAY already stops it
    assert a2.session.retired and a3.session.retired and b.session.retired is None
    assert (a2.closed, a3.closed, b.closed) == (False, True, False)  # only idle ones close
    assert [pool.pick() for _ in range(4)] == [b] * 4
    assert pool.pick(avoid=a1) is b  # type: ignore[arg-type]
    # The relay restarted under the same instance id: its new carrier takes opens.
    a4 = retirable("a")
    pool.carriers.append(a4)  # type: ignore[arg-type]
    assert pool.pick() is a4  # the least busy instance again


def test_an_open_refused_as_draining_retires_its_own_carrier_too() -> None:
    # The refusal came before (or without) the carrier's GOAWAY.
    a1, a2 = retirable("a", 1), retirable("a")
    pool = make_pool([a1, a2])
    pool.relay_draining(a1)  # type: ignore[arg-type]
    assert a1.session.retired and a2.session.retired
    assert pool.pick() is None and pool.pick(avoid=a1) is None  # type: ignore[arg-type]
