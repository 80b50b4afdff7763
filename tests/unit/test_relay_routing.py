"""The relay's routing state: stream-id ranges per client_a, agent choice."""

from __future__ import annotations

from collections import Counter

from fastrelay.relay.routing import SLOT_BITS, SLOT_COUNT, SLOT_SIZE, AgentPool, StreamIdSlots


class FakeAgent:
    def __init__(self, name: str, streams: int = 0, draining: bool = False) -> None:
        self.name = name
        self.streams = {i: object() for i in range(streams)}
        self.draining = draining

    def __repr__(self) -> str:
        return self.name


def test_every_range_is_unique_and_never_slot_zero() -> None:
    slots = StreamIdSlots()
    bases = []
    while (base := slots.acquire()) is not None:
        bases.append(base)
    assert len(bases) == SLOT_COUNT - 1
    assert len(set(bases)) == len(bases)
    assert 0 not in bases
    assert all(base % SLOT_SIZE == 0 for base in bases)
    assert max(bases) + SLOT_SIZE - 1 == 2**32 - 1  # the last id still fits in a u32
    assert slots.acquire() is None


def test_exhaustion_then_release_then_acquire() -> None:
    slots = StreamIdSlots(count=4)  # slots 1..3
    bases = [slots.acquire() for _ in range(3)]
    assert bases == [1 << SLOT_BITS, 2 << SLOT_BITS, 3 << SLOT_BITS]
    assert slots.acquire() is None
    slots.release(bases[1])
    assert slots.acquire() == bases[1]
    assert slots.acquire() is None


def test_released_range_is_reused_as_late_as_possible() -> None:
    slots = StreamIdSlots(count=6)  # slots 1..5
    first = slots.acquire()
    second = slots.acquire()
    assert (first, second) == (1 << SLOT_BITS, 2 << SLOT_BITS)
    slots.release(first)
    # Slot 1 is free again, but the never-used 3, 4 and 5 come first.
    assert [slots.acquire() for _ in range(3)] == [s << SLOT_BITS for s in (3, 4, 5)]
    assert slots.acquire() == first  # wrapped round, skipping 0
    slots.release(second)
    slots.release(4 << SLOT_BITS)
    assert slots.acquire() == second
    assert slots.acquire() == 4 << SLOT_BITS
    assert slots.acquire() is None


def test_release_of_unknown_range_is_harmless() -> None:
    slots = StreamIdSlots(count=3)
    slots.release(2 << SLOT_BITS)
    assert slots.acquire() == 1 << SLOT_BITS
    assert slots.acquire() == 2 << SLOT_BITS
    assert slots.acquire() is None


def test_pick_from_empty_pool_is_none() -> None:
    pool: AgentPool[FakeAgent] = AgentPool()
    assert pool.pick() is None
    assert len(pool) == 0


def test_least_loaded_agent_wins() -> None:
    pool: AgentPool[FakeAgent] = AgentPool()
    busy, idle, mid = FakeAgent("busy", 5), FakeAgent("idle", 1), FakeAgent("mid", 3)
    for agent in (busy, idle, mid):
        pool.add(agent)
    for _ in range(5):  # whatever the rotation, the least loaded one wins
        assert pool.pick() is idle
    idle.streams.update({i: object() for i in range(10, 14)})  # now 5 streams
    assert pool.pick() is mid


def test_draining_agents_are_skipped() -> None:
    pool: AgentPool[FakeAgent] = AgentPool()
    draining = FakeAgent("draining", 0, draining=True)
    loaded = FakeAgent("loaded", 7)
    pool.add(draining)
    pool.add(loaded)
    for _ in range(4):
        assert pool.pick() is loaded
    loaded.draining = True
    assert pool.pick() is None


def test_ties_rotate() -> None:
    pool: AgentPool[FakeAgent] = AgentPool()
    agents = [FakeAgent(name) for name in "abc"]
    for agent in agents:
        pool.add(agent)
    picks = [pool.pick() for _ in range(30)]
    assert Counter(picks) == {agent: 10 for agent in agents}
    assert all(picks[i] is not picks[i + 1] for i in range(len(picks) - 1))


def test_ties_rotate_among_the_least_loaded_only() -> None:
    pool: AgentPool[FakeAgent] = AgentPool()
    a, b, heavy = FakeAgent("a", 2), FakeAgent("b", 2), FakeAgent("heavy", 9)
    for agent in (a, heavy, b):
        pool.add(agent)
    picks = Counter(pool.pick() for _ in range(20))
    assert picks == {a: 10, b: 10}


def test_removed_agent_is_never_picked() -> None:
    pool: AgentPool[FakeAgent] = AgentPool()
    a, b = FakeAgent("a"), FakeAgent("b")
    pool.add(a)
    pool.add(b)
    pool.remove(a)
    pool.remove(a)  # twice is harmless
    assert [pool.pick() for _ in range(3)] == [b, b, b]
    assert len(pool) == 1
