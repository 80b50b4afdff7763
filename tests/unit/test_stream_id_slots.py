"""The relay's stream-id ranges per client_a connection.

Agent choice is the switch's: tests/protocol/test_switch.py."""

from __future__ import annotations

from fastrelay.protocol.switch import SLOT_BITS, SLOT_COUNT, SLOT_SIZE, StreamIdSlots


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
