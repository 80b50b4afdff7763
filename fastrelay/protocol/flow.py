"""Per-stream credit windows, one pair per stream per endpoint.

The sender of a direction may have at most `window` bytes of TUNNEL_DATA
outstanding. The receiver returns credit with WINDOW_UPDATE only after it has
written the bytes to its TCP socket *and* that socket's write buffer is below
its low-water mark (the adapter decides when that is and calls `release`), so
a slow reader stops its own stream's sender and nobody else's.
"""

from __future__ import annotations

from fastrelay.protocol.errors import FlowControlError

# The most drained credit a receiver holds back before it announces it. A
# quarter of the window (as h2 batches) is 8 MiB of a window grown to 32 MiB for
# a long path, held back on every round trip; 2 MiB steps moved one tunnel
# across 50 ms 8 % faster (bench/README.md, scenario 11) and change nothing for
# windows up to 8 MiB (the default is 4 MiB).
UPDATE_STEP = 2 * 1024 * 1024


def update_threshold(window: int) -> int:
    """How much drained credit a receiver with this window batches into one
    WINDOW_UPDATE: a quarter of it, at least 1 byte, at most UPDATE_STEP."""
    return max(1, min(window // 4, UPDATE_STEP))


class SendWindow:
    """Credit this endpoint may still spend on one stream's outgoing data.

    `available` is what may be sent now. With a send cap (`limit`, from the
    connection's `CreditPool.send_cap`), credit that would take the stream's
    unacknowledged bytes past the cap is `held` instead, until credit comes
    back or the cap rises: the receiver's window still bounds the stream, the
    cap bounds what it puts on a slow path at once."""

    __slots__ = ("available", "held", "unacked")

    def __init__(self, initial: int) -> None:
        self.available = initial
        self.held = 0
        # Bytes sent whose credit has not come back. Senders add to it where
        # they take from `available`; a grant takes its increment off (a
        # receiver's growth too, so it errs low).
        self.unacked = 0

    def consume(self, n: int) -> None:
        # The adapter never sends more than `available`; a bug here would
        # silently let memory grow at the relay, so fail loudly instead.
        if n > self.available:
            raise FlowControlError(f"sending {n} bytes with {self.available} bytes of credit")
        self.available -= n
        self.unacked += n

    def grant(self, increment: int, cap: int = 0) -> None:
        total = self.available + self.held + increment
        if total > 2**31 - 1:
            raise FlowControlError("WINDOW_UPDATE overflows the send window")
        unacked = self.unacked - increment
        self.unacked = unacked if unacked > 0 else 0
        self.available = total
        self.held = 0
        if cap:
            self.limit(cap)

    def limit(self, cap: int) -> bool:
        """Hold back the credit that would take the unacknowledged bytes past
        `cap` (0: no cap, all of it usable). Returns whether any is usable."""
        total = self.available + self.held
        room = total
        if cap:
            room = cap - self.unacked
            if room < 0:
                room = 0
            elif room > total:
                room = total
        self.available = room
        self.held = total - room
        return room > 0


class RecvWindow:
    """Credit the peer still holds for data towards this endpoint, and the
    bytes this endpoint has delivered but not yet returned as credit."""

    __slots__ = ("outstanding", "target", "unreturned", "update_threshold", "window")

    def __init__(self, window: int) -> None:
        self.window = window  # the stream's whole window: outstanding, in flight and undrained
        self.outstanding = window  # bytes the peer may still send
        self.unreturned = 0  # delivered and drained, not yet announced
        # The window this stream would like (see `grow`); the pool grants it
        # as far as the connection's budget and fairness allow.
        self.target = window
        # Batch updates (as h2 does) so a bulk stream sends one WINDOW_UPDATE
        # per quarter window (at most UPDATE_STEP) rather than one per chunk.
        self.update_threshold = update_threshold(window)

    def received(self, n: int) -> None:
        if n > self.outstanding:
            raise FlowControlError(
                f"peer sent {n} bytes with only {self.outstanding} bytes of credit"
            )
        self.outstanding -= n

    def release(self, n: int, pool: CreditPool | None = None, now: bool = False) -> int:
        """Record `n` bytes drained to the socket; return the increment to
        announce now, or 0 while it is below the batching threshold. With a
        `pool`, the window moves towards the connection's fair share here:
        it grows while there is spare credit, and shrinks by returning less
        than was drained (never to 0: the peer always gets some credit)."""
        self.unreturned += n
        if self.unreturned < self.update_threshold and not now:
            return 0
        if pool is not None:
            change = pool.adjust(self.window, self.unreturned - 1, self.target)
            if change:
                self.window += change
                self.unreturned += change
                self.update_threshold = update_threshold(self.window)
        return self.flush()

    def grow(self, pool: CreditPool | None) -> None:
        """The sender ran out of credit while this end kept up: the window is
        below the path's bandwidth-delay product. Aim at twice it (up to the
        pool's `max_window`), unless the path's round trip says a queue is
        building (`CreditPool.pace`); releases move the window there as the
        budget allows, and back towards the fair share when other streams
        need it. A doubling sets the pool's `growing`: the session times the
        path again at once, not a PROBE_INTERVAL later, so a queue the growth
        builds is seen within a round trip."""
        if pool is None or not pool.calm:  # growing into a queue would only lengthen it
            return
        largest = max(self.target, self.window)
        if largest < pool.max_window:
            self.target = min(pool.max_window, largest * 2)
            pool.growing = True

    def flush(self) -> int:
        """Return all unannounced credit (for when the batch must go now)."""
        increment, self.unreturned = self.unreturned, 0
        self.outstanding += increment
        return increment


MIN_WINDOW = 16 * 1024  # the smallest window a stream opens with, budget allowing


class CreditPool:
    """The credit one endpoint grants across all streams of one relay connection.

    The relay holds at most a budget per connection (announced in HELLO) and
    cuts off a connection that makes it hold more. Data towards an endpoint
    can only be what that endpoint granted, so keeping the sum of its stream
    windows within the budget means an honest endpoint, however slow or
    stalled, is never cut off. Invariant:

        granted + floor * (max_streams - streams) <= budget

    so every stream, up to `max_streams`, can always open with at least
    `floor` bytes. Within that, each stream's window moves towards the fair
    share (the budget not kept in reserve, split evenly over the open
    streams, at most `want`): a new stream opens with what is spare up to
    that share, and `adjust` grows or shrinks windows as streams come and go,
    so 100 busy streams on one connection move at about the same rate.
    """

    __slots__ = (
        "budget",
        "calm",
        "cap",
        "floor",
        "granted",
        "growing",
        "max_streams",
        "max_window",
        "peak",
        "send_cap",
        "streams",
        "want",
    )

    def __init__(self, budget: int, max_streams: int, want: int, max_window: int = 0) -> None:
        if budget < 1 or max_streams < 1 or want < 1:
            raise ValueError("budget, max_streams and want must be positive")
        self.budget = budget
        self.max_streams = max_streams
        self.want = want  # the window a stream opens with (--window)
        # The most a stream's window may grow to when its path needs it (--max-window).
        self.max_window = max(want, max_window)
        self.floor = max(1, min(MIN_WINDOW, want, budget // (2 * max_streams)))
        self.granted = 0  # the sum of the live streams' windows
        self.streams = 0
        # What the path's queueing delay allows (`pace`): the largest window
        # any stream may have (below `want` too; 0: no cut), and whether
        # windows may grow.
        self.cap = 0
        self.calm = True
        self.growing = False  # a window doubled since the last probe's answer
        self.peak = 0  # the largest window `adjust` saw since the last `pace`
        # The most any stream may have unacknowledged on this connection
        # (`pace_send`; 0: no cap): the sender's side of the same rule.
        self.send_cap = 0

    @classmethod
    def for_relay(cls, budget: int, max_streams: int, want: int, max_window: int = 0) -> CreditPool:
        """The pool for a relay connection whose HELLO announced `budget` and
        `max_streams` (0: not announced, so only `want` per stream bounds it).
        A quarter of the budget is left for control frames."""
        streams = max_streams or 1024
        return cls(budget * 3 // 4 if budget else want * streams, streams, want, max_window)

    @property
    def full(self) -> bool:
        return self.streams >= self.max_streams

    def _spare(self) -> int:
        return self.budget - self.granted - self.floor * (self.max_streams - self.streams)

    def _share(self, streams: int, cap: int = 0) -> int:
        usable = self.budget - self.floor * (self.max_streams - streams)
        return max(self.floor, min(cap or self.want, usable // max(1, streams)))

    def open(self) -> int:
        """The window for a new stream, or 0 when `max_streams` are open."""
        if self.full:
            return 0
        # The floor kept in reserve for this stream is spare to it too.
        cap = self.cap
        share = self._share(self.streams + 1, cap if 0 < cap < self.want else self.want)
        window = max(self.floor, min(share, self._spare() + self.floor))
        self.streams += 1
        self.granted += window
        return window

    def close(self, window: int) -> None:
        """A stream with this (current) window ended."""
        self.streams -= 1
        self.granted -= window

    def adjust(self, window: int, withheld: int, target: int = 0) -> int:
        """How a stream's `window` changes now, towards its fair share (at
        most `want`, or its `target` if it grew past that): more while credit is spare, less (by
        at most `withheld`, credit it has not returned yet) when over the
        share. 0: it stays."""
        if window > self.peak:
            self.peak = window
        limit = max(self.want, min(target, self.max_window))
        if 0 < self.cap < limit:
            limit = self.cap
        share = self._share(self.streams, limit)
        if window > share:
            change = -min(window - share, withheld)
        else:
            change = min(share - window, max(0, self._spare()))
        if change:
            self.granted += change
            return change
        return 0

    def pace(self, queueing: float, base: float = 0.0) -> bool:
        """The path to the relay and back queued for `queueing` seconds over
        its least round trip `base` (`PathDelay`). Above QUEUE_HIGH this
        connection's own data is building the queue, and every window
        shrinks: the cap drops to the largest window times (base +
        QUEUE_LOW) / (base + queueing), the share of it that would leave a
        QUEUE_LOW queue, but at most 3/4 and at least half of it (as far as
        MIN_WINDOW: a cut to a quarter left a 20 MB/s link 10 % idle in
        bench.hol_probe); releases withhold credit until windows are under it.
        Below QUEUE_LOW windows may grow again, and the cap doubles until
        `max_window` (no cut). In between, nothing changes. Returns whether
        the cap dropped."""
        peak, cap = self.peak, self.cap or self.max_window
        self.peak = 0
        if queueing > QUEUE_HIGH:
            self.calm = False
            cut = max(
                MIN_WINDOW, int((peak if 0 < peak < cap else cap) * cut_factor(queueing, base))
            )
            if cut < cap:
                self.cap = cut
                return True
            return False
        if queueing < QUEUE_LOW:
            self.calm = True
            if self.cap:
                self.cap = 0 if self.cap * 2 >= self.max_window else self.cap * 2
        return False

    def pace_send(self, queueing: float, base: float, largest: int) -> bool:
        """`pace` for what this end sends: above QUEUE_HIGH, cap every
        stream's unacknowledged bytes at the same share of the `largest`
        any stream has now (nothing to cut with nothing in flight); below
        QUEUE_LOW, double the cap until `max_window` (no cap). Returns
        whether the cap changed (the session re-limits its streams)."""
        if queueing > QUEUE_HIGH:
            cap = self.send_cap
            if not largest:
                return False
            cut = max(
                MIN_WINDOW,
                int((largest if not cap or largest < cap else cap) * cut_factor(queueing, base)),
            )
            if not cap or cut < cap:
                self.send_cap = cut
                return True
            return False
        if queueing < QUEUE_LOW and self.send_cap:
            self.send_cap = 0 if self.send_cap * 2 >= self.max_window else self.send_cap * 2
            return True
        return False


def cut_factor(queueing: float, base: float) -> float:
    """The share of a window that would leave a QUEUE_LOW queue on a path
    whose least round trip is `base` and whose queue is `queueing`: at most
    3/4, at least half (a cut to a quarter left a 20 MB/s link 10 % idle)."""
    factor = (base + QUEUE_LOW) / (base + queueing)
    return 0.75 if factor > 0.75 else 0.5 if factor < 0.5 else factor


# How often a connection whose windows are growing or shrinking times the path
# (a WebSocket ping to the relay and its pong, which queue behind the data).
PROBE_INTERVAL = 0.1
# The queueing delay (the round trip above the least one seen) under which the
# path has no standing queue, so windows may grow, and over which this
# connection's data is queueing (on a slow link, in the relay's write buffer to
# it) and windows shrink. Loopback and long fat paths stay far below both.
QUEUE_LOW = 0.005
QUEUE_HIGH = 0.020
# The least round trip is the least of BASE_BUCKETS buckets of BASE_BUCKET
# seconds: long enough that a queue kept at a few ms does not become the base,
# short enough to follow a path that became longer (a new route).
BASE_BUCKET = 30.0
BASE_BUCKETS = 4
_NONE = float("inf")


class PathDelay:
    """The round trip from an endpoint to the relay and back, from timed
    probes, as queueing delay: the latest round trip above the least one
    seen in the last two minutes, as LEDBAT and BBR read delay. A probe in
    flight is `late` by how long it has been out past the least. The caller
    sends probes (`sent`, then `answered`) and passes `now` in.

    A probe the relay stamps with its clock (a PROBE frame) also splits the
    queueing by direction, `queue_out` (to the relay) and `queue_in` (back),
    from the one-way times: each one's rise over its least of the last two
    minutes. The two clocks' offset cancels there; their drift over two
    minutes does not, so a split that does not add up to the round trip's
    queueing is not trusted, and both directions get the whole of it, as an
    answer without a stamp (a WebSocket pong) gives them."""

    __slots__ = (
        "base",
        "bucket_end",
        "cut",
        "last",
        "mins",
        "next_probe",
        "queue_in",
        "queue_out",
        "sent_at",
        "token",
        "ways",
        "ways_end",
    )

    def __init__(self) -> None:
        self.mins: list[float] = []  # each bucket's least round trip, newest last
        self.bucket_end = 0.0
        self.base = _NONE
        self.last = _NONE  # the latest answered round trip
        self.sent_at = -1.0  # when the probe in flight left (-1: none in flight)
        # The probe in flight was late enough to cut windows already: its
        # answer must not cut them again (once per round trip, as TCP does).
        self.cut = False
        self.next_probe = 0.0
        self.token = 0  # the PROBE frame in flight carries it; its answer echoes it
        # Per bucket of stamped answers: its start, the least time out and back.
        self.ways: list[float] = []
        self.ways_end = 0.0
        self.queue_out = 0.0  # the latest answer's queueing, to the relay
        self.queue_in = 0.0  # and back from it

    @property
    def in_flight(self) -> bool:
        return self.sent_at >= 0.0

    def sent(self, now: float) -> None:
        """A probe left now. Until it is answered, `next_probe` is when it
        would be late: past the least round trip by QUEUE_LOW."""
        self.sent_at = now
        self.cut = False
        base = self.base
        self.next_probe = now + (base + QUEUE_LOW if base != _NONE else PROBE_INTERVAL)

    def late(self, now: float) -> float:
        """How far the probe in flight is already past the least round trip
        (0 without one, or without a base), and when to look again: as it
        passes QUEUE_HIGH, then every PROBE_INTERVAL. Its answer will be at
        least this late, so a long queue is seen before the answer comes."""
        if self.sent_at < 0.0 or self.base == _NONE:
            self.next_probe = now + PROBE_INTERVAL
            return 0.0
        late = now - self.sent_at - self.base
        if late < QUEUE_HIGH:
            self.next_probe = self.sent_at + self.base + QUEUE_HIGH + 1e-6
        else:
            self.next_probe = now + PROBE_INTERVAL
        return late if late > 0.0 else 0.0

    def answered(self, now: float) -> float:
        """The probe's answer arrived: the queueing delay now, or -1 for an
        answer to no probe (a stray pong)."""
        if self.sent_at < 0.0:
            return -1.0
        rtt = max(0.0, now - self.sent_at)
        self.sent_at = -1.0
        self.next_probe = now + PROBE_INTERVAL
        self.last = rtt
        self.observe(rtt, now)
        queueing = self.queueing(now)
        self.queue_out = self.queue_in = queueing  # no stamp: either way, as far as we know
        return queueing

    def answered_stamped(self, now: float, stamp: float) -> float:
        """The answer to a PROBE frame, which the relay stamped when it read
        the probe (`stamp`, seconds on the relay's clock): as `answered`, and
        `queue_out` and `queue_in` are each direction's share."""
        sent_at = self.sent_at
        queueing = self.answered(now)
        if queueing < 0.0:
            return queueing
        out = stamp - sent_at  # the way out, plus the clocks' offset
        back = now - stamp  # the way back, less it
        ways = self.ways
        while ways and now - ways[0] >= BASE_BUCKET * BASE_BUCKETS:
            del ways[:3]  # older than two minutes: the clocks may have drifted since
        if not ways or now >= self.ways_end:
            ways += (now, out, back)
            self.ways_end = now + BASE_BUCKET
        else:
            if out < ways[-2]:
                ways[-2] = out
            if back < ways[-1]:
                ways[-1] = back
        least_out = least_back = _NONE
        for i in range(0, len(ways), 3):
            if ways[i + 1] < least_out:
                least_out = ways[i + 1]
            if ways[i + 2] < least_back:
                least_back = ways[i + 2]
        queue_out = min(max(0.0, out - least_out), queueing)
        queue_in = min(max(0.0, back - least_back), queueing)
        if queue_out + queue_in >= queueing - QUEUE_LOW:
            self.queue_out, self.queue_in = queue_out, queue_in
        # else the split does not explain the round trip (its least times were
        # taken in a queue, or the clocks drifted): both get all of it, as above.
        return queueing

    def observe(self, rtt: float, now: float) -> None:
        """A round trip timed otherwise (a keep-alive ping, mostly on an idle
        path): it counts towards the least one only."""
        mins = self.mins
        if not mins or now >= self.bucket_end:
            mins.append(rtt)
            if len(mins) > BASE_BUCKETS:
                del mins[0]
            self.bucket_end = now + BASE_BUCKET
        elif rtt < mins[-1]:
            mins[-1] = rtt
        self.base = min(mins)

    def queueing(self, now: float) -> float:
        """How far the latest round trip is over the least: 0 until there is
        a sample."""
        if self.last == _NONE or self.base == _NONE:
            return 0.0
        return max(0.0, self.last - self.base)
