"""Per-stream credit windows: SendWindow and RecvWindow accounting."""

from __future__ import annotations

from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastrelay.protocol.errors import FlowControlError
from fastrelay.protocol.flow import (
    BASE_BUCKET,
    BASE_BUCKETS,
    MIN_WINDOW,
    PROBE_INTERVAL,
    QUEUE_HIGH,
    QUEUE_LOW,
    UPDATE_STEP,
    CreditPool,
    PathDelay,
    RecvWindow,
    SendWindow,
    update_threshold,
)
from fastrelay.protocol.frames import FrameType, encode_frame
from fastrelay.protocol.messages import DEFAULT_WINDOW
from fastrelay.protocol.pair import Pair

MAX_WINDOW = 2**31 - 1

# --------------------------------------------------------------------------- SendWindow


def test_send_window_consumes_up_to_its_credit() -> None:
    window = SendWindow(100)
    window.consume(60)
    window.consume(40)
    assert window.available == 0
    window.consume(0)
    assert window.available == 0


@pytest.mark.parametrize(("credit", "spent", "attempt"), [(100, 0, 101), (100, 60, 41), (1, 1, 1)])
def test_send_window_refuses_beyond_credit(credit: int, spent: int, attempt: int) -> None:
    window = SendWindow(credit)
    window.consume(spent)
    with pytest.raises(FlowControlError, match="bytes of credit"):
        window.consume(attempt)
    assert window.available == credit - spent  # unchanged by the refused send


def test_send_window_grant_adds_credit() -> None:
    window = SendWindow(10)
    window.consume(10)
    window.grant(4)
    assert window.available == 4
    window.grant(MAX_WINDOW - 4)
    assert window.available == MAX_WINDOW


@pytest.mark.parametrize(
    ("initial", "increment"), [(MAX_WINDOW, 1), (1, MAX_WINDOW), (0, 2**32 - 1)]
)
def test_send_window_grant_overflow(initial: int, increment: int) -> None:
    window = SendWindow(initial)
    with pytest.raises(FlowControlError, match="overflows"):
        window.grant(increment)
    assert window.available == initial


# --------------------------------------------------------------------------- RecvWindow


def test_recv_window_starts_full() -> None:
    window = RecvWindow(DEFAULT_WINDOW)
    assert window.outstanding == DEFAULT_WINDOW
    assert window.unreturned == 0
    assert window.update_threshold == DEFAULT_WINDOW // 4


@pytest.mark.parametrize(("size", "threshold"), [(1, 1), (3, 1), (4, 1), (7, 1), (8, 2), (100, 25)])
def test_recv_window_threshold_is_a_quarter_at_least_one(size: int, threshold: int) -> None:
    assert RecvWindow(size).update_threshold == threshold


@given(st.integers(min_value=1, max_value=2**31 - 1))
def test_recv_window_batches_a_quarter_of_its_window_up_to_the_step(size: int) -> None:
    """A receiver holds back at most a quarter of its window, and never more than
    UPDATE_STEP however far the window grew (a quarter of 32 MiB is 8 MiB held back on
    every round trip of a long path)."""
    threshold = RecvWindow(size).update_threshold
    assert 1 <= threshold <= max(1, size // 4)
    assert threshold <= UPDATE_STEP
    assert threshold == update_threshold(size)
    if size // 4 <= UPDATE_STEP:
        assert threshold == max(1, size // 4)


def test_a_grown_window_returns_credit_in_steps() -> None:
    """A window grown to 32 MiB (the default --max-window) announces credit every 2 MiB
    drained, not every 8 MiB."""
    pool = CreditPool(budget=64 << 20, max_streams=1, want=4 << 20, max_window=32 << 20)
    window = RecvWindow(pool.open())
    assert window.update_threshold == 1 << 20  # a quarter of the 4 MiB it opened with
    for _ in range(3):  # the sender ran out three times while this end kept up: 4 -> 32 MiB
        sent = window.outstanding
        window.received(sent)
        window.grow(pool)
        window.release(sent, pool, now=True)  # the pool lets it grow to its target
    assert window.window == 32 << 20
    assert window.update_threshold == UPDATE_STEP
    window.received(UPDATE_STEP - 1)
    assert window.release(UPDATE_STEP - 1, pool) == 0  # below the step: held
    window.received(1)
    assert window.release(1, pool) >= UPDATE_STEP  # the step reached: announced


def test_recv_window_counts_received_bytes() -> None:
    window = RecvWindow(100)
    window.received(30)
    window.received(70)
    assert window.outstanding == 0


@pytest.mark.parametrize(("size", "first", "second"), [(100, 0, 101), (100, 90, 11), (1, 1, 1)])
def test_recv_window_refuses_beyond_outstanding(size: int, first: int, second: int) -> None:
    window = RecvWindow(size)
    window.received(first)
    with pytest.raises(FlowControlError, match="peer sent"):
        window.received(second)
    assert window.outstanding == size - first


def test_release_batches_until_a_quarter_window() -> None:
    window = RecvWindow(100)  # threshold 25
    window.received(100)
    assert window.release(10) == 0
    assert window.release(14) == 0
    assert (window.unreturned, window.outstanding) == (24, 0)
    assert window.release(1) == 25  # the whole batch at once
    assert (window.unreturned, window.outstanding) == (0, 25)
    assert window.release(60) == 60  # one release above the threshold goes at once
    assert (window.unreturned, window.outstanding) == (0, 85)


def test_release_with_threshold_one_returns_every_byte() -> None:
    window = RecvWindow(3)
    window.received(3)
    assert [window.release(1) for _ in range(3)] == [1, 1, 1]
    assert window.outstanding == 3


def test_flush_returns_a_partial_batch() -> None:
    window = RecvWindow(100)
    window.received(50)
    assert window.release(7) == 0
    assert window.flush() == 7
    assert (window.unreturned, window.outstanding) == (0, 57)
    assert window.flush() == 0  # nothing left: a caller must not send a zero WINDOW_UPDATE
    assert window.outstanding == 57


def test_flow_control_error_aborts_one_stream_only() -> None:
    """Data past the receiver's credit ends that stream (TUNNEL_ERROR at both ends); the
    connections stay up and the stream beside it keeps moving bytes."""
    pair = Pair()
    client, agent = pair.client(), pair.agent(want=64 * 1024)
    greedy, kept = client.open(), client.open()
    pair.run()
    credit = client.streams[greedy].send.available
    client.send(encode_frame(FrameType.TUNNEL_DATA, greedy, bytes(credit + 1)))
    pair.run()
    assert client.closed is None and agent.closed is None
    assert greedy not in client.streams and "credit" in (client.ended[-1].error or "")
    assert greedy not in agent.streams
    assert pair.switch.stats.protocol_errors["flow_control"] == 1
    assert client.write(kept, 5000) == 5000
    pair.run()
    assert agent.streams[kept].received == 5000


def test_a_peer_that_ignores_credit_is_caught() -> None:
    sender, receiver = SendWindow(10), RecvWindow(10)
    sender.consume(10)
    receiver.received(10)
    # The sender's own window would refuse; a cheating peer skips it and the receiver notices.
    with pytest.raises(FlowControlError):
        sender.consume(1)
    with pytest.raises(FlowControlError):
        receiver.received(1)


# --------------------------------------------------------------------------- property

OPS = st.lists(
    st.tuples(
        st.sampled_from(["send", "deliver", "drain", "flush", "credit"]),
        st.integers(min_value=0, max_value=5000),
    ),
    max_size=120,
)


@given(st.integers(min_value=1, max_value=4096), OPS)
def test_bytes_in_flight_never_exceed_the_window(size: int, ops: list[tuple[str, int]]) -> None:
    """One direction of one stream, end to end: a sender that obeys its SendWindow, the
    network in between (data one way, WINDOW_UPDATEs the other), and a receiver that drains
    bytes to its socket in arbitrary amounts and returns credit when RecvWindow says so."""
    sender, receiver = SendWindow(size), RecvWindow(size)
    data_on_wire: deque[int] = deque()  # TUNNEL_DATA sizes, in order
    updates_on_wire: deque[int] = deque()  # WINDOW_UPDATE increments, in order
    buffered = 0  # received, not yet written to the socket

    for op, amount in ops:
        if op == "send":
            n = min(amount, sender.available)
            if n:
                sender.consume(n)
                data_on_wire.append(n)
        elif op == "deliver" and data_on_wire:
            n = data_on_wire.popleft()
            receiver.received(n)  # never raises: the sender obeyed its credit
            buffered += n
        elif op == "drain":
            n = min(amount, buffered)
            buffered -= n
            increment = receiver.release(n)
            assert increment == 0 or increment >= receiver.update_threshold
            if increment:
                updates_on_wire.append(increment)
        elif op == "flush":
            increment = receiver.flush()
            if increment:
                updates_on_wire.append(increment)
        elif op == "credit" and updates_on_wire:
            sender.grant(updates_on_wire.popleft())

        in_flight = size - sender.available  # sent and not yet credited back
        assert 0 <= in_flight <= size
        # Every byte of credit is in exactly one place.
        assert (
            sender.available
            + sum(data_on_wire)
            + buffered
            + receiver.unreturned
            + sum(updates_on_wire)
            == size
        )
        # The receiver's view of the peer's credit lags by what is still on the wire.
        assert receiver.outstanding == sender.available + sum(data_on_wire) + sum(updates_on_wire)
        assert receiver.unreturned < receiver.update_threshold


# --- CreditPool: the windows of one connection within the relay's budget ---


@settings(max_examples=300, deadline=None)
@given(
    budget=st.integers(1, 1 << 26),
    max_streams=st.integers(1, 64),
    want=st.integers(1, 1 << 22),
    ops=st.lists(
        st.tuples(
            st.sampled_from(["open", "close", "adjust", "pace"]), st.integers(0, 63), st.booleans()
        )
    ),
)
def test_credit_pool_never_grants_past_its_budget(
    budget: int, max_streams: int, want: int, ops: list[tuple[str, int, bool]]
) -> None:
    pool = CreditPool(budget, max_streams, want)
    windows: list[int] = []
    for op, i, all_withheld in ops:
        if op == "open":
            window = pool.open()
            if len(windows) == max_streams:
                assert window == 0
            else:
                limit = min(want, pool.cap) if pool.cap else want
                assert pool.floor <= window <= max(limit, pool.floor)
                windows.append(window)
        elif op == "pace":  # the path queued for i ms over its least round trip of 10 ms
            pool.pace(i / 1000, 0.01)
        elif windows and op == "close":
            pool.close(windows.pop(i % len(windows)))
        elif windows:
            j = i % len(windows)
            cap = pool.cap
            share = pool._share(pool.streams, cap if 0 < cap < want else want)
            withheld = windows[j] if all_withheld else 1
            change = pool.adjust(windows[j], withheld)
            assert abs(windows[j] + change - share) <= abs(windows[j] - share)  # towards it
            assert -withheld <= change
            windows[j] += change
            assert windows[j] >= pool.floor
        assert pool.granted == sum(windows)
        assert pool.granted + pool.floor * (max_streams - len(windows)) <= max(
            budget, pool.floor * max_streams
        )


def test_credit_pool_windows_converge_on_a_fair_share() -> None:
    MiB = 1024 * 1024
    pool = CreditPool(budget=48 * MiB, max_streams=64, want=4 * MiB)
    assert pool.floor == 16 * 1024
    assert pool.open() == 4 * MiB  # alone, a stream gets all it asks for
    windows = [4 * MiB] + [pool.open() for _ in range(63)]
    assert windows[1] == 4 * MiB and min(windows) < max(windows)  # first come, first served
    assert sum(windows) == pool.granted <= 48 * MiB
    assert pool.open() == 0  # max_streams
    for _ in range(20):  # each stream returns credit a few times: the windows even out
        for j, window in enumerate(windows):
            windows[j] += pool.adjust(window, withheld=window)
    assert windows == [48 * MiB // 64] * 64
    assert pool.granted == 48 * MiB
    for window in windows[:32]:  # half the streams end: the rest grow back
        pool.close(window)
    rest = windows[32:]
    for _ in range(20):
        for j, window in enumerate(rest):
            rest[j] += pool.adjust(window, withheld=window)
    assert rest == [pool._share(32)] * 32
    assert pool._share(32) == (48 * MiB - 32 * pool.floor) // 32


def test_recv_window_moves_towards_the_share_when_it_returns_credit() -> None:
    pool = CreditPool(budget=3 << 18, max_streams=4, want=1 << 18)
    window = RecvWindow(pool.open())
    assert window.window == 1 << 18
    small = RecvWindow(1 << 16)  # a stream that opened when the connection was busy
    pool.granted += 1 << 16
    pool.streams += 1
    small.received(1 << 16)
    increment = small.release(1 << 16, pool)
    assert increment == 1 << 18  # what was read plus the growth to its share
    assert small.window == 1 << 18 and small.outstanding == 1 << 18
    for _ in range(2):
        pool.open()  # four streams now: the share is a quarter of the budget less reserve
    share = pool._share(4)
    assert share < 1 << 18
    small.received(1 << 17)
    increment = small.release(1 << 17, pool)
    assert small.window == share
    assert increment == (1 << 17) - ((1 << 18) - share)  # it returned less than it read


def test_credit_pool_for_a_relay_that_announced_nothing_bounds_only_per_stream() -> None:
    pool = CreditPool.for_relay(0, 0, want=1 << 20)
    assert pool.open() == 1 << 20
    announced = CreditPool.for_relay(64 << 20, 1024, want=4 << 20)
    assert (announced.budget, announced.max_streams) == (48 << 20, 1024)


@pytest.mark.parametrize(
    ("budget_mib", "max_streams", "cap_mib"),
    [
        (64, 1024, 32),  # the relay's defaults, client_a's connection: docs/OPERATIONS.md
        (64, 16384, 24),  # an agent's connection
        (128, 1024, 80),
        (128, 16384, 48),
    ],
)
def test_one_streams_window_grows_to_what_the_relays_budget_leaves_it(
    budget_mib: int, max_streams: int, cap_mib: int
) -> None:
    """A lone stream whose sender keeps running out of credit (`grow`) while this end
    keeps up: its window doubles until the budget stops it, at the cap OPERATIONS
    ("Tuning", --max-window) names, however high --max-window is."""
    mib = 1024 * 1024
    pool = CreditPool.for_relay(budget_mib * mib, max_streams, 4 * mib, 1024 * mib)
    window = RecvWindow(pool.open())
    sizes = []
    for _ in range(20):  # a doubling per round: from 4 MiB, 20 is far past any cap here
        window.grow(pool)
        window.received(window.outstanding)  # the sender used all its credit
        window.release(window.window - window.outstanding, pool, now=True)
        sizes.append(window.window)
    assert sizes[-1] == sizes[-2]  # it stopped growing
    assert abs(window.window - cap_mib * mib) < mib // 8
    assert pool.granted <= pool.budget


# --- PathDelay and CreditPool.pace: windows that follow the path's queue ---


def test_path_delay_reads_queueing_over_the_least_round_trip() -> None:
    path = PathDelay()
    assert path.queueing(0.0) == 0.0 and path.late(0.0) == 0.0  # nothing known yet
    assert path.answered(1.0) == -1.0  # a pong to no probe is ignored
    path.sent(1.0)
    assert path.in_flight and path.next_probe == 1.0 + PROBE_INTERVAL  # no base yet
    assert path.answered(1.010) == 0.0  # the first answer is the base
    assert not path.in_flight and path.base == pytest.approx(0.010)
    path.sent(2.0)
    assert path.answered(2.050) == pytest.approx(0.040)  # 50 ms now, 10 at least
    path.sent(3.0)
    assert path.answered(3.008) == 0.0 and path.base == pytest.approx(0.008)


def test_a_probe_in_flight_is_late_by_how_long_it_has_been_out() -> None:
    path = PathDelay()
    path.observe(0.010, 0.0)  # a keep-alive ping on the idle path: the base
    path.sent(1.0)
    # It would be late once past the base by QUEUE_LOW: look again then.
    assert path.next_probe == pytest.approx(1.0 + 0.010 + QUEUE_LOW)
    assert path.late(1.012) == pytest.approx(0.002)
    assert path.next_probe == pytest.approx(1.0 + 0.010 + QUEUE_HIGH, abs=1e-5)
    assert path.late(1.5) == pytest.approx(0.490)  # far past: every interval from now
    assert path.next_probe == pytest.approx(1.5 + PROBE_INTERVAL)
    assert path.answered(1.6) == pytest.approx(0.590)
    assert path.late(1.7) == 0.0  # nothing in flight


def test_the_least_round_trip_is_forgotten_after_the_buckets_pass() -> None:
    """A path that became longer (a new route) is learned within
    BASE_BUCKETS x BASE_BUCKET seconds; a queue held for less is not."""
    path = PathDelay()
    path.observe(0.010, 0.0)
    now = 0.0
    while now < BASE_BUCKET * (BASE_BUCKETS - 1):
        now += 1.0
        path.observe(0.030, now)
        assert path.base == pytest.approx(0.010)
    for _ in range(int(BASE_BUCKET) * 2):
        now += 1.0
        path.observe(0.030, now)
    assert path.base == pytest.approx(0.030)


def test_a_stamped_answer_splits_the_queueing_by_direction_whatever_the_clocks_offset() -> None:
    path = PathDelay()
    offset = -123_456.789  # the relay's clock against ours: it cancels
    assert path.answered_stamped(1.0, 0.5 + offset) == -1.0  # an answer to no probe

    def probe(at: float, out: float, back: float) -> float:
        path.sent(at)
        return path.answered_stamped(at + out + back, at + out + offset)

    assert probe(1.0, 0.004, 0.006) == 0.0  # the first: the least times
    assert probe(2.0, 0.034, 0.006) == pytest.approx(0.030)
    assert (path.queue_out, path.queue_in) == pytest.approx((0.030, 0.0))
    assert probe(3.0, 0.004, 0.026) == pytest.approx(0.020)
    assert (path.queue_out, path.queue_in) == pytest.approx((0.0, 0.020))
    assert probe(4.0, 0.014, 0.016) == pytest.approx(0.020)
    assert (path.queue_out, path.queue_in) == pytest.approx((0.010, 0.010))
    # An answer without a stamp (a pong) cannot tell: both ways get the rise.
    path.sent(5.0)
    assert path.answered(5.030) == pytest.approx(0.020)
    assert (path.queue_out, path.queue_in) == pytest.approx((0.020, 0.020))


def test_one_way_times_older_than_the_buckets_are_dropped() -> None:
    """Two clocks drift apart (NTP slews each at up to 500 ppm): a least one-way
    time from long ago would read the drift as queueing. The round trip has no
    such problem, so its rise bounds each direction, and a split that does not
    add up to it is not used."""
    path = PathDelay()
    path.sent(0.0)
    path.answered_stamped(0.010, 0.005)
    drift = 0.015  # the relay's clock runs this much faster, some minutes on
    at = BASE_BUCKET * BASE_BUCKETS + 1.0
    path.sent(at)
    path.answered_stamped(at + 0.010, at + 0.005 + drift)
    assert (path.queue_out, path.queue_in) == pytest.approx((0.0, 0.0), abs=1e-9)  # old: gone
    assert len(path.ways) == 3
    # Within the buckets the same drift again reads as 15 ms out and -15 back:
    # each direction is clamped to what the round trip rose by, none here.
    path.sent(at + 1.0)
    path.answered_stamped(at + 1.010, at + 1.005 + 2 * drift)
    assert (path.queue_out, path.queue_in) == pytest.approx((0.0, 0.0), abs=1e-9)


def test_a_queue_on_the_path_cuts_the_windows_and_a_calm_one_lets_them_back() -> None:
    pool = CreditPool(budget=256 << 20, max_streams=8, want=4 << 20, max_window=32 << 20)
    window = pool.open()
    assert window == 4 << 20 and pool.cap == 0 and pool.calm
    assert not pool.pace(QUEUE_HIGH / 2, 0.010)  # between the marks: nothing changes
    assert pool.cap == 0 and pool.calm
    pool.adjust(window, 0, window)  # a release: the largest window is 4 MiB
    # 200 ms over a 10 ms base: (10 + 5) / (10 + 200) of it would do, but half at least.
    assert pool.pace(0.200, 0.010)
    assert pool.cap == 2 << 20 and not pool.calm
    withheld = 3 << 20
    change = pool.adjust(window, withheld, window)
    assert window + change == 2 << 20  # the release withholds the cut
    window += change
    assert pool.open() == 2 << 20  # a new stream opens within the cap, below --window
    # A queue just over the mark on a longer path cuts less: (30 + 5) / (30 + 21).
    pool.adjust(window, 0, window)
    assert pool.pace(0.021, 0.030)
    assert pool.cap == int((2 << 20) * 35 / 51)
    # Calm again: growth is allowed, and the cap doubles until no cut is left.
    caps = []
    while pool.cap:
        assert not pool.pace(0.001, 0.010)
        assert pool.calm
        caps.append(pool.cap)
    assert caps[:3] == [int((2 << 20) * 35 / 51) * 2**k for k in (1, 2, 3)]
    assert len(caps) < 8


def test_cuts_stop_at_the_least_window_and_growth_waits_for_calm() -> None:
    pool = CreditPool(budget=64 << 20, max_streams=4, want=1 << 20, max_window=8 << 20)
    recv = RecvWindow(pool.open())
    for _ in range(20):
        pool.pace(5.0, 0.010)
    assert pool.cap == MIN_WINDOW
    assert not pool.pace(5.0, 0.010)  # nothing left to cut: not counted
    recv.grow(pool)
    assert recv.target == 1 << 20  # not calm: the window does not aim higher
    pool.pace(0.0, 0.010)
    recv.grow(pool)
    assert recv.target == 2 << 20


def test_a_doubling_marks_the_pool_growing_and_a_refused_one_does_not() -> None:
    pool = CreditPool(budget=64 << 20, max_streams=4, want=1 << 20, max_window=2 << 20)
    recv = RecvWindow(pool.open())
    pool.pace(5.0, 0.010)  # a queue: no growth
    recv.grow(pool)
    assert recv.target == 1 << 20 and not pool.growing
    pool.pace(0.0, 0.010)
    recv.grow(pool)
    assert recv.target == 2 << 20 and pool.growing  # the session times the path at once
    pool.growing = False
    recv.grow(pool)
    assert recv.target == 2 << 20 and not pool.growing  # at max_window: nothing to time


def test_a_send_cap_holds_credit_back_and_gives_it_all_back() -> None:
    window = SendWindow(100_000)
    window.consume(60_000)
    assert window.unacked == 60_000 and window.available == 40_000
    assert window.limit(70_000)  # 10,000 more may go out
    assert (window.available, window.held) == (10_000, 30_000)
    assert not window.limit(50_000)  # over the cap already: nothing usable
    assert (window.available, window.held) == (0, 40_000)
    window.grant(30_000, 50_000)  # 30,000 came back: 30,000 unacknowledged, 20,000 usable
    assert (window.unacked, window.available, window.held) == (30_000, 20_000, 50_000)
    assert window.limit(0)  # no cap: all of it
    assert (window.available, window.held) == (70_000, 0)
    window.grant(100_000)  # a receiver's growth takes unacked no lower than 0
    assert window.unacked == 0 and window.available == 170_000
    with pytest.raises(FlowControlError):
        window.grant(2**31 - 170_000, 1)  # held credit counts towards the overflow


def test_the_send_cap_follows_the_queue_like_the_windows() -> None:
    pool = CreditPool(budget=64 << 20, max_streams=8, want=4 << 20, max_window=32 << 20)
    assert not pool.pace_send(0.5, 0.010, 0)  # a queue, but nothing of ours in flight
    assert pool.send_cap == 0
    assert pool.pace_send(0.200, 0.010, 8 << 20)  # half of the 8 MiB in flight
    assert pool.send_cap == 4 << 20
    assert pool.pace_send(0.021, 0.030, 8 << 20)  # no more than the cap itself, cut again
    assert pool.send_cap == int((4 << 20) * 35 / 51)
    assert not pool.pace_send(0.010, 0.030, 8 << 20)  # in the band: it stays
    caps = []
    while pool.send_cap:
        assert pool.pace_send(0.001, 0.030, 0)  # calm: it doubles until it is gone
        caps.append(pool.send_cap)
    assert caps[0] == 2 * int((4 << 20) * 35 / 51) and len(caps) < 6
    for _ in range(30):
        pool.pace_send(9.0, 0.010, 1 << 30)
    assert pool.send_cap == MIN_WINDOW
