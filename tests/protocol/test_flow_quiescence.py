"""Hypothesis: how much credit a stalled sender gets back (fastrelay/protocol/flow.py).

One stream's sender always has more to send; its receiver drains in random
pieces, holds credit while its socket is backed up, and answers a frame flagged
BLOCKED by growing the window and returning what it owes at once (as
`Stream._peer_blocked` does); other streams open and close on the same
`CreditPool`, so `adjust` grows and shrinks the window as the share moves.
Once everything in flight has arrived and drained and every WINDOW_UPDATE has
arrived (quiescence):

* the sender's credit equals what the receiver thinks it is owed;
* the window never shrank below the pool's floor;
* the sender holds more than the window minus one update batch
  (`window - update_threshold`): the receiver keeps back less than a batch.

So no stream is left stalled with data waiting, and a sender that waited for a
resume threshold R before reading again would stay deadlock-free only with R at
most 3/4 of the smallest window the receiver may shrink to (its pool's floor,
which the sender does not know): bench/README.md, scenario 4's third look.
"""

from __future__ import annotations

from collections import deque

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastrelay.protocol.flow import MIN_WINDOW, CreditPool, RecvWindow, SendWindow

actions = st.one_of(
    st.tuples(st.just("send"), st.one_of(st.integers(1, 4096), st.integers(1, 300_000))),
    st.tuples(st.just("arrive"), st.booleans()),  # the bool: the receiver's socket backs up
    st.tuples(st.just("drain"), st.one_of(st.integers(1, 4096), st.integers(1, 300_000))),
    st.tuples(st.just("grant"), st.just(0)),
    st.tuples(st.just("open"), st.just(0)),  # another stream opens on the pool
    st.tuples(st.just("close"), st.just(0)),  # ... or one of them closes
    # The path's round trip was timed: this many ms over its least (CreditPool.pace).
    st.tuples(st.just("pace"), st.one_of(st.integers(0, 30), st.integers(0, 2000))),
    # The sender's own cap on its unacknowledged bytes moved (CreditPool.send_cap; 0: none).
    st.tuples(st.just("cap"), st.one_of(st.just(0), st.integers(1, 1 << 20))),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(1 << 10, 1 << 22),  # budget
    st.integers(1, 64),  # max streams
    st.integers(1 << 10, 1 << 20),  # want
    st.integers(0, 1 << 23),  # max window
    st.lists(actions, max_size=80),
)
def test_a_stalled_sender_gets_back_all_but_less_than_one_batch(
    budget: int, max_streams: int, want: int, max_window: int, script: list[tuple[str, int]]
) -> None:
    pool = CreditPool(budget, max_streams, want, max_window)
    recv = RecvWindow(pool.open())
    send = SendWindow(recv.window)
    plain = SendWindow(recv.window)  # the same credit with no send cap
    cap = 0
    others: list[int] = []
    in_flight: deque[tuple[int, bool]] = deque()  # data frames: bytes, BLOCKED
    updates: deque[int] = deque()  # WINDOW_UPDATEs on their way back
    undrained = 0  # delivered, not yet drained by the receiver's socket
    backed_up = False

    def release(n: int, now: bool = False) -> None:
        increment = recv.release(n, pool, now)
        assert 0 <= increment < 2**32  # a WINDOW_UPDATE's u32, sent only when not 0
        if increment:
            updates.append(increment)

    def arrive(backs_up: bool) -> None:
        nonlocal undrained, backed_up
        n, blocked = in_flight.popleft()
        recv.received(n)
        if backed_up or backs_up:
            backed_up = True  # credit waits for the drain
            undrained += n
        elif blocked:
            recv.grow(pool)
            release(n, now=True)
        else:
            release(n)

    def drain(n: int) -> None:
        nonlocal undrained, backed_up
        n = min(n, undrained)
        undrained -= n
        if undrained == 0:
            backed_up = False
        if n:
            release(n)

    for action, arg in script:
        if action == "send" and send.available:
            n = min(arg, send.available)
            send.consume(n)
            plain.consume(n)
            in_flight.append((n, send.available == 0))
        elif action == "arrive" and in_flight:
            arrive(bool(arg))
        elif action == "drain":
            drain(arg)
        elif action == "grant" and updates:
            increment = updates.popleft()
            send.grant(increment, cap)
            plain.grant(increment)
        elif action == "open" and not pool.full:
            others.append(pool.open())
        elif action == "close" and others:
            pool.close(others.pop())
        elif action == "pace":
            pool.pace(arg / 1000, 0.01)
            assert pool.cap == 0 or MIN_WINDOW <= pool.cap < pool.max_window
        elif action == "cap":
            cap = arg
            send.limit(cap)
        # The cap only holds credit back: none is lost or made up.
        assert send.available + send.held == plain.available
        assert send.unacked == plain.unacked
        assert send.available <= (max(0, cap - send.unacked) if cap else plain.available)
        assert recv.window >= pool.floor

    # Quiescence: everything arrives and drains, every update comes back.
    while in_flight or undrained or updates:
        if in_flight:
            arrive(False)
        drain(undrained)
        while updates:
            send.grant(updates.popleft(), cap)
    send.limit(0)  # the path is calm again: the cap goes, every byte of credit is usable
    assert send.available == recv.outstanding
    assert recv.window >= pool.floor
    assert recv.unreturned < recv.update_threshold or recv.update_threshold == 1
    assert send.available >= recv.window - recv.update_threshold + 1
    assert send.available > 0
