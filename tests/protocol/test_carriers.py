"""The endpoints' decisions about their relay connections (fastrelay/protocol/carriers.py):
redial pacing, the relay's availability, client_a's choice of carrier, the agent's mesh.

Pure code: no loop, no sockets, no clock (each test passes `now`)."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from fastrelay.protocol.carriers import (
    FAILING_GRACE,
    RECOVERY,
    Backoff,
    CarrierChoice,
    DialHealth,
    Membership,
)
from fastrelay.protocol.pair import Pair
from fastrelay.protocol.session import Session

INITIAL = 0.1
CAP = 10.0
NOW = 1000.0

# --- Backoff ---


def failures(backoff: Backoff, n: int, now: float = NOW) -> list[float]:
    """Drive `n` failed dials at `now`; the bound each delay was drawn from."""
    bounds = []
    for _ in range(n):
        bound = backoff.bound(now)
        delay = backoff.next_delay(now)
        assert 0 <= delay <= bound
        bounds.append(bound)
    return bounds


def test_failures_double_the_bound_up_to_the_cap() -> None:
    backoff = Backoff(INITIAL, CAP)
    assert failures(backoff, 9) == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0]


def test_hello_resets_the_backoff() -> None:
    backoff = Backoff(INITIAL, CAP)
    failures(backoff, 7)  # a long outage
    backoff.connected()
    assert backoff.bound(NOW) == INITIAL


def test_the_first_redial_after_a_healthy_connection_is_lost_is_prompt() -> None:
    backoff = Backoff(INITIAL, CAP)
    failures(backoff, 7)
    backoff.connected()
    backoff.ended(lived=3.0, now=NOW)  # well under the old 10 s, over `settle`
    assert failures(backoff, 1) == [INITIAL]  # jittered in [0, 100 ms]
    # ... and an outage after it grows from there again
    assert failures(backoff, 3) == [0.2, 0.4, 0.8]


def test_a_restarting_relay_is_redialled_within_a_second_for_a_while() -> None:
    backoff = Backoff(INITIAL, CAP)
    backoff.connected()
    backoff.ended(lived=60.0, now=NOW)  # a healthy connection lost: most likely a restart
    assert failures(backoff, 8) == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0]
    # A restart does not take this long: back to doubling.
    assert failures(backoff, 2, now=NOW + RECOVERY) == [10.0, 10.0]


def test_a_flap_gets_no_short_delays() -> None:
    backoff = Backoff(INITIAL, CAP)
    backoff.connected()
    backoff.ended(lived=60.0, now=NOW)
    backoff.connected()
    backoff.ended(lived=0.01, now=NOW)  # then a relay that drops at once
    assert failures(backoff, 6) == [0.2, 0.4, 0.8, 1.6, 3.2, 6.4]


def test_flaps_in_a_row_grow_the_delay_to_the_cap() -> None:
    backoff = Backoff(INITIAL, CAP)
    bounds = []
    for _ in range(10):
        backoff.connected()  # HELLO came...
        backoff.ended(lived=0.01, now=NOW)  # ... and the connection ended at once
        bounds += failures(backoff, 1)
    assert bounds == [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0, 10.0, 10.0]


def test_dial_failures_between_flaps_grow_the_delay_and_hello_keeps_the_flaps() -> None:
    backoff = Backoff(INITIAL, CAP)
    for _ in range(3):
        backoff.connected()
        backoff.ended(lived=0.0, now=NOW)
    failures(backoff, 4)  # then the relay is down for a while
    backoff.connected()  # back: the reset goes down to the flaps, not to zero
    assert backoff.bound(NOW) == INITIAL * 2**3


def test_a_connection_that_settles_clears_the_flaps() -> None:
    backoff = Backoff(INITIAL, CAP, settle=1.0)
    for _ in range(5):
        backoff.connected()
        backoff.ended(lived=0.5, now=NOW)
    backoff.connected()
    backoff.ended(lived=1.0, now=NOW)
    assert backoff.flaps == 0
    assert failures(backoff, 1) == [INITIAL]


def test_settle_boundary_counts_as_healthy() -> None:
    short, long = Backoff(INITIAL, CAP, settle=2.0), Backoff(INITIAL, CAP, settle=2.0)
    short.ended(lived=1.999, now=NOW)
    long.ended(lived=2.0, now=NOW)
    assert short.flaps == 1 and long.flaps == 0


def test_a_seeded_rng_gives_the_same_delays() -> None:
    first = Backoff(INITIAL, CAP, rng=random.Random(7))
    second = Backoff(INITIAL, CAP, rng=random.Random(7))
    delays = [first.next_delay(NOW) for _ in range(6)]
    assert delays == [second.next_delay(NOW) for _ in range(6)]
    assert len(set(delays)) == 6  # jittered, not fixed


_EVENTS = st.lists(
    st.one_of(
        st.tuples(st.just("fail"), st.floats(0, 100)),
        st.tuples(st.just("connected"), st.just(0.0)),
        st.tuples(st.just("ended"), st.floats(0, 100)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(events=_EVENTS, initial=st.floats(0.01, 1), cap=st.floats(1, 60))
def test_every_delay_is_within_the_cap_and_a_settled_connection_resets_it(
    events: list[tuple[str, float]], initial: float, cap: float
) -> None:
    """Whatever happens (failures, HELLOs, connections ending, with the clock
    moving forward between them), a delay is never negative and never over the
    cap, and the bound after a settled connection is `initial` again."""
    backoff = Backoff(initial, cap, rng=random.Random(1))
    now = NOW
    for event, value in events:
        now += 0.5
        if event == "fail":
            now += value
            delay = backoff.next_delay(now)
            assert 0 <= delay <= cap
        elif event == "connected":
            backoff.connected()
        else:
            backoff.ended(value, now)
            if value >= backoff.settle:
                assert backoff.bound(now) == min(cap, initial)


# --- DialHealth ---


def test_one_failed_dial_is_not_unavailable_until_the_grace_has_passed() -> None:
    health = DialHealth()
    assert not health.unavailable(NOW)
    health.failed(NOW, "connection refused", rejected=False)
    assert not health.unavailable(NOW + FAILING_GRACE / 2)
    health.failed(NOW + 1.5, "connection refused", rejected=False)
    # The grace runs from the first failure since a success, not the last one.
    assert health.unavailable(NOW + FAILING_GRACE)
    assert health.last_failure == "connection refused"


def test_a_refused_token_is_unavailable_at_once_and_a_success_clears_everything() -> None:
    health = DialHealth()
    health.failed(NOW, "HTTP 401: bad token", rejected=True)
    assert health.unavailable(NOW)
    health.succeeded()
    assert not health.unavailable(NOW + 100)
    assert (health.last_failure, health.failing_since, health.rejected) == (None, None, False)
    health.failed(NOW + 200, "timed out", rejected=False)  # a new outage starts its own grace
    assert not health.unavailable(NOW + 200 + FAILING_GRACE / 2)


# --- CarrierChoice ---


@dataclass(eq=False)
class Fake:
    instance_id: str
    streams: list[int] = field(default_factory=list)
    ready: bool = True
    full: bool = False

    def load(self, n: int) -> Fake:
        self.streams = list(range(n))
        return self


def test_sequential_opens_spread_over_instances_not_carriers() -> None:
    # 7 carriers landed on w0 and 1 on w1 (SO_REUSEPORT's hash does that).
    carriers = [Fake("w0") for _ in range(7)] + [Fake("w1")]
    choice: CarrierChoice[Fake] = CarrierChoice()
    picks = Counter(choice.pick(carriers).instance_id for _ in range(100))  # type: ignore[union-attr]
    assert picks == {"w0": 50, "w1": 50}


def test_the_less_loaded_instance_wins() -> None:
    carriers = [Fake("a").load(3), Fake("a"), Fake("b").load(2)]
    assert CarrierChoice().pick(carriers) is carriers[2]  # instance b has 2 streams, a has 3


def test_avoid_prefers_another_instance_then_another_carrier() -> None:
    a1, a2, b = Fake("a"), Fake("a"), Fake("b").load(9)
    choice: CarrierChoice[Fake] = CarrierChoice()
    assert choice.pick([a1, a2, b], avoid=a1) is b
    assert choice.pick([a1, a2], avoid=a1) is a2
    assert choice.pick([a1], avoid=a1) is None


def test_carriers_that_are_not_ready_or_full_are_never_picked() -> None:
    choice: CarrierChoice[Fake] = CarrierChoice()
    assert choice.pick([Fake("a", ready=False), Fake("b").load(5)]).instance_id == "b"  # type: ignore[union-attr]
    assert choice.pick([Fake("a", full=True), Fake("b").load(5)]).instance_id == "b"  # type: ignore[union-attr]
    assert choice.pick([Fake("a", ready=False), Fake("a", full=True)]) is None


def test_a_draining_relay_takes_every_ready_carrier_to_it_out() -> None:
    # a1 got its GOAWAY (no longer ready); a2 and a3 are on the same relay, theirs in flight.
    a1, a2, a3, b = Fake("a", ready=False), Fake("a").load(2), Fake("a"), Fake("b").load(9)
    assert CarrierChoice.draining([a1, a2, a3, b], a1) == [a2, a3]
    # A refusal as "draining" can come before the carrier's own GOAWAY: it goes too.
    assert CarrierChoice.draining([a2, a3, b], a2) == [a2, a3]


_CARRIERS = st.lists(
    st.builds(
        Fake,
        instance_id=st.sampled_from(["a", "b", "c"]),
        streams=st.lists(st.just(0), max_size=5),
        ready=st.booleans(),
        full=st.booleans(),
    ),
    max_size=8,
)


def _reference_pick(carriers: list[Fake], avoid: Fake | None, turn: int) -> Fake | None:
    """pick() as first written (sorted and rotated copies, a min per level): the
    single-pass version must choose exactly the same carrier, turn by turn."""

    def rotated(items: list, turn: int) -> list:
        start = turn % len(items)
        return items[start:] + items[:start]

    ready = list(filter(lambda c: c.ready and not c.full, carriers))
    if avoid is not None:
        others = [c for c in ready if c.instance_id != avoid.instance_id]
        ready = others if others else [c for c in ready if c is not avoid]
    if not ready:
        return None
    by_instance: dict[str, list[Fake]] = {}
    for carrier in ready:
        by_instance.setdefault(carrier.instance_id, []).append(carrier)
    instances = rotated(sorted(by_instance), turn)
    least = min(instances, key=lambda i: sum(len(c.streams) for c in by_instance[i]))
    return min(rotated(by_instance[least], turn), key=lambda c: len(c.streams))  # type: ignore[no-any-return]


@settings(max_examples=400, deadline=None)
@given(carriers=_CARRIERS, avoids=st.lists(st.integers(-1, 7), min_size=1, max_size=6))
def test_pick_takes_the_least_loaded_instance_then_carrier(
    carriers: list[Fake], avoids: list[int]
) -> None:
    """Whatever the carriers' states and loads, each pick (each open landing on
    its carrier) is a ready carrier with room, never the avoided one, on
    another instance than the avoided one's when there is one, on the least
    loaded instance and the least loaded carrier there, and exactly the one
    the first version of pick chose."""
    choice: CarrierChoice[Fake] = CarrierChoice()
    for index in avoids:
        avoid = carriers[index] if 0 <= index < len(carriers) else None
        open_ = [c for c in carriers if c.ready and not c.full and c is not avoid]
        want = _reference_pick(carriers, avoid, choice.turn + 1)
        got = choice.pick(carriers, avoid)
        assert got is want
        if not open_:
            assert got is None
            continue
        assert got is not None and got in open_
        if avoid is not None and any(c.instance_id != avoid.instance_id for c in open_):
            assert got.instance_id != avoid.instance_id
            open_ = [c for c in open_ if c.instance_id != avoid.instance_id]
        totals = Counter[str]()
        for c in open_:
            totals[c.instance_id] += len(c.streams)
        assert totals[got.instance_id] == min(totals.values())
        same = [c for c in open_ if c.instance_id == got.instance_id]
        assert len(got.streams) == min(len(c.streams) for c in same)
        got.streams.append(0)  # the open lands on it


@settings(max_examples=200, deadline=None)
@given(
    layout=st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=8),
    opens=st.integers(1, 60),
)
def test_opens_from_nothing_stay_balanced_over_instances_and_their_carriers(
    layout: list[str], opens: int
) -> None:
    """Starting with no streams, however unevenly the carriers landed, each
    relay instance ends up with its share of the opens (within one) and so
    does each carrier of an instance."""
    carriers = [Fake(instance) for instance in layout]
    choice: CarrierChoice[Fake] = CarrierChoice()
    for _ in range(opens):
        picked = choice.pick(carriers)
        assert picked is not None
        picked.streams.append(0)
    totals = Counter[str]()
    for c in carriers:
        totals[c.instance_id] += len(c.streams)
    assert max(totals.values()) - min(totals.values()) <= 1
    for instance in totals:
        loads = [len(c.streams) for c in carriers if c.instance_id == instance]
        assert max(loads) - min(loads) <= 1


@settings(max_examples=200, deadline=None)
@given(carriers=_CARRIERS.filter(bool), data=st.data())
def test_after_draining_nothing_lands_on_that_relay(
    carriers: list[Fake], data: st.DataObject
) -> None:
    """Once the carriers `draining` names are retired (no longer ready), no
    pick, first try or retry, lands on the draining relay."""
    sign = data.draw(st.sampled_from(carriers))
    retire = CarrierChoice.draining(carriers, sign)
    assert {id(c) for c in retire} == {
        id(c) for c in carriers if c.ready and c.instance_id == sign.instance_id
    }
    for carrier in retire:
        carrier.ready = False
    choice: CarrierChoice[Fake] = CarrierChoice()
    for avoid in (None, sign):
        for _ in range(3):
            got = choice.pick(carriers, avoid)
            assert got is None or got.instance_id != sign.instance_id


# --- Membership ---


def test_before_any_members_one_relay_any_relay_will_do() -> None:
    membership: Membership[str] = Membership()
    assert membership.missing({}) == ["any"]
    assert membership.missing({"r1": "c1"}) == []
    assert membership.wanted({"r1": "c1"}) is None


def test_members_name_the_instances_to_dial_and_to_drop() -> None:
    membership: Membership[str] = Membership()
    held = {"r1": "c1"}
    assert membership.members(held, "c1", ["r1", "r2", "r3"]) == []
    assert membership.missing(held) == ["r2", "r3"]
    held["r2"] = "c2"
    assert membership.members(held, "c2", ["r2", "r3"]) == []  # r1 still listed by c1
    assert membership.members(held, "c1", ["r2", "r3"]) == ["r1"]  # now nobody lists r1
    del held["r1"]
    membership.forget("c1")
    assert membership.missing(held) == ["r3"]
    assert membership.wanted(held) == {"r2", "r3"}


@settings(max_examples=300, deadline=None)
@given(
    views=st.dictionaries(
        st.sampled_from(["c1", "c2", "c3"]),
        st.lists(st.sampled_from(["r1", "r2", "r3", "r4"]), max_size=4),
    ),
    update=st.tuples(
        st.sampled_from(["c1", "c2", "c3"]),
        st.lists(st.sampled_from(["r1", "r2", "r3", "r4"]), max_size=4),
    ),
)
def test_an_instance_is_dropped_exactly_when_no_held_relay_lists_it(
    views: dict[str, list[str]], update: tuple[str, list[str]]
) -> None:
    held = {f"r{n}": f"c{n}" for n in (1, 2, 3)}
    membership: Membership[str] = Membership()
    for key, instances in views.items():
        membership.views[key] = tuple(instances)
    key, instances = update
    dropped = membership.members(held, key, instances)
    listed = set(instances).union(*(v for k, v in views.items() if k != key))
    assert set(dropped) == {i for i in held if i not in listed}
    assert membership.missing(held) == sorted(listed - set(held))


# --- the choice against real sessions and relays, in memory (fastrelay/protocol/pair.py) ---


def test_a_retry_after_draining_waits_for_another_relay_not_a_sibling_still_unaware() -> None:
    """The CI failure behind `draining`, in memory: client_a holds two carriers
    to relay A and none (yet) to relay B. Relay A starts draining; an open sent
    on a1 crosses the GOAWAY and is refused as draining, while a2's GOAWAY is
    still on the wire. The retry must not go to a2 (it would be refused too):
    once the relay's carriers are retired it waits, and lands on relay B's
    carrier as soon as one is there."""
    relay_a, relay_b = Pair(instance="relay-a"), Pair(instance="relay-b")
    a1, a2 = relay_a.client(), relay_a.client()
    relay_a.agent()
    relay_b.agent()
    for pair in (relay_a, relay_b):
        pair.run()
    choice: CarrierChoice[Session] = CarrierChoice()
    carriers = [a1.session, a2.session]
    assert {s.instance_id for s in carriers} == {"relay-a"} and all(s.ready for s in carriers)

    relay_a.switch.start_draining()
    a2.reading = False  # its GOAWAY is still on its way
    sid = a1.open()  # sent before a1 read its GOAWAY: the relay refuses it
    first_try = a1.streams[sid]
    relay_a.run()
    assert first_try.ended and a1.ended == [first_try] and first_try.response is not None
    assert (first_try.response.status_code, first_try.response.reason) == (503, "draining")
    assert not a1.session.ready and a2.session.ready

    # Without the retirements the retry would pick the sibling, on the same relay.
    assert CarrierChoice[Session]().pick(carriers, avoid=a1.session) is a2.session
    for session in choice.draining(carriers, a1.session):
        session.retire("the relay is draining")
    assert not a2.session.ready
    assert choice.pick(carriers, avoid=a1.session) is None  # wait for a carrier

    b = relay_b.client()  # the slot's replacement lands on relay B
    relay_b.run()
    carriers.append(b.session)
    retry_on = choice.pick(carriers, avoid=a1.session)
    assert retry_on is b.session
    retry = b.open()
    relay_b.run()
    assert b.streams[retry].response is not None and b.streams[retry].response.ok
    assert b.streams[retry].stream.opened
    # a2 hears its GOAWAY late, and nothing else: it never carried an open.
    a2.reading = True
    relay_a.run()
    assert not a2.streams and not a2.ended and not a2.errors
