"""client_a's pool carries out the choice of carrier (fastrelay/io/pool.py; the choice
itself, `CarrierChoice`, is tested in tests/protocol/test_carriers.py): a draining
relay's carriers are retired, the idle ones closed, and opens go elsewhere."""

from __future__ import annotations

import asyncio
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
