"""Windows that follow the path: one tenant's upload to an agent behind a slow link.

The relay writes everything for one agent to that agent's one connection, in
order. What an upload has queued there (at most the credit the agent granted
it) is ahead of every other tenant's next open to that agent. The agent times
the path with probes that queue behind the same bytes (`Session.probe`, the
relay's pong) and cuts its windows when the round trip rises, so the queue
stays a few tens of milliseconds deep and the upload keeps the link's rate.

The link is modelled in the pair: the agent reads what the relay queued for it
at `RATE` bytes per second, in whole messages, on a millisecond clock.
"""

from __future__ import annotations

from collections import deque

from fastrelay.protocol.flow import MIN_WINDOW, PathDelay
from fastrelay.protocol.pair import Endpoint, Pair
from fastrelay.protocol.switch import Limits

MiB = 1024 * 1024
RATE = 20_000_000  # bytes per second, relay to agent (bench.hol_probe's link)
STEP = 0.001  # seconds


class SlowLink:
    """The relay's queue to `agent`, drained at RATE; everyone else reads at once."""

    def __init__(self, pair: Pair, agent: Endpoint) -> None:
        self.pair = pair
        self.agent = agent
        self.tokens = 0
        self.moved = 0  # bytes the agent read

    def step(self) -> None:
        pair, agent = self.pair, self.agent
        pair.now += STEP
        pair.switch.tick(pair.now)
        for endpoint in pair.endpoints:
            if endpoint is not agent:
                endpoint.read()
        self.tokens += int(RATE * STEP)
        queue = agent.wire.queue
        # A pong (None) takes no time; a message goes once the link has carried it.
        while queue and (queue[0] is None or len(queue[0]) <= self.tokens):
            head = queue[0]
            if head is not None:
                self.tokens -= len(head)
            self.moved += agent.read(limit=1)
        if not queue:
            self.tokens = min(self.tokens, int(RATE * STEP))  # an idle link saves nothing up


class SlowUplink:
    """The agent's own link to the relay, carrying RATE; the relay's writes are
    read at once (everyone reads in `pair.run`)."""

    def __init__(self, pair: Pair, agent: Endpoint) -> None:
        self.pair = pair
        self.agent = agent
        self.tokens = 0
        self.moved = 0  # bytes the relay read from the agent
        agent.slow_link_out()

    def step(self) -> None:
        pair, agent = self.pair, self.agent
        pair.now += STEP
        pair.switch.tick(pair.now)
        pair.run()
        self.tokens += int(RATE * STEP)
        took = agent.deliver(self.tokens)
        self.tokens -= took
        self.moved += took
        if not agent.outbox:
            self.tokens = min(self.tokens, int(RATE * STEP))  # an idle link saves nothing up


def upload(pair: Pair, client: Endpoint, sid: int) -> None:
    """Keep the stream's sender busy: it sends whenever it has credit, flagged
    BLOCKED when it runs out (as client_a's pump does with a fast socket)."""
    stream = client.streams[sid].stream
    if stream.backlog is None:
        stream.send(bytes(256 * 1024))


def test_an_upload_on_a_slow_agent_link_keeps_the_queue_short_and_the_rate() -> None:
    pair = Pair(Limits(connection_buffer=64 * MiB))
    uploader, other = pair.client(token=1), pair.client(token=2)
    agent = pair.agent(want=4 * MiB)  # the defaults: --window 4MiB --max-window 32MiB
    agent.session.credit.max_window = 32 * MiB
    link = SlowLink(pair, agent)
    sid = uploader.open()
    pair.run()
    queued: list[int] = []
    seconds = 6.0
    for _ in range(int(seconds / STEP)):
        upload(pair, uploader, sid)
        link.step()
        queued.append(agent.wire.queued)
    settled = queued[len(queued) // 2 :]
    # Without the probes, the window grows to 16 MiB (FLAG_BLOCKED: "the path
    # is long") and the relay holds that much for the agent: 0.8 s of this link.
    assert max(settled) < 2 * MiB  # 100 ms of the link at most
    assert sum(settled) / len(settled) < 1 * MiB
    assert link.moved / seconds > 0.9 * RATE  # and the upload still fills the link
    assert agent.session.stats.window_backoffs >= 1
    assert MIN_WINDOW <= agent.session.credit.cap < 4 * MiB

    # Another tenant's open, behind the upload in the relay's queue to the agent:
    # answered within a few tens of milliseconds, not the 0.8 s of a grown window.
    opened_at = pair.now
    other_sid = other.open()
    waited = 0.0
    while other.streams[other_sid].response is None and waited < 5.0:
        upload(pair, uploader, sid)
        link.step()
        waited = pair.now - opened_at
    response = other.streams[other_sid].response
    assert response is not None and response.ok
    assert waited < 0.1
    assert not (uploader.errors or other.errors or agent.errors)
    assert agent.closed is None and uploader.closed is None


def test_every_byte_of_a_paced_upload_arrives_and_the_windows_grow_back_when_the_link_is_free() -> (
    None
):
    pair = Pair(Limits(connection_buffer=64 * MiB))
    client, agent = pair.client(), pair.agent(want=1 * MiB)
    agent.session.credit.max_window = 8 * MiB
    link = SlowLink(pair, agent)
    sid = client.open()
    pair.run()
    total = 40 * MiB
    stream = client.streams[sid].stream
    sent = 0
    for _ in range(20_000):
        if stream.backlog is None and sent < total:
            n = min(256 * 1024, total - sent)
            stream.send(bytes(n))
            sent += n
        link.step()
        if agent.streams[sid].received == total:
            break
    assert agent.streams[sid].received == total  # nothing lost, nothing extra
    assert agent.session.stats.window_backoffs >= 1
    assert agent.session.credit.cap  # cut while the link was full

    # The link is free now (the agent reads at once): the sender, blocked on the
    # cut window, gets the probes going, and calm answers lift the cap.
    for _ in range(40):
        if stream.backlog is None:
            stream.send(bytes(16 * MiB))
        pair.advance(0.1, step=0.1)
    assert agent.session.credit.cap == 0 and agent.session.credit.calm
    assert agent.streams[sid].stream.recv_window.window > 1 * MiB  # and grow past --window
    assert not client.errors and not agent.errors


def test_a_download_from_an_agent_behind_a_slow_link_keeps_its_queue_short_and_the_rate() -> None:
    """The other direction: the agent sends, and what it sent waits on its own slow
    link to the relay. Its probes queue behind it too, so it caps what each of its
    streams has unacknowledged, and another tenant's open (answered by the agent,
    behind that queue) is quick again."""
    pair = Pair(Limits(connection_buffer=64 * MiB))
    downloader, other = pair.client(token=1), pair.client(token=2)
    for client in (downloader, other):
        client.session.credit.max_window = 32 * MiB  # client_a's defaults
    agent = pair.agent()
    link = SlowUplink(pair, agent)
    sid = downloader.open()
    for _ in range(100):
        pair.now += STEP
        agent.deliver(1 << 30)  # the open's answer
        pair.run()
        if downloader.streams[sid].response is not None:
            break
    stream = agent.streams[sid].stream
    unsent: list[int] = []
    seconds = 6.0

    def step() -> None:
        if stream.backlog is None:
            stream.send(bytes(256 * 1024))  # the target always has more
        link.step()

    for _ in range(int(seconds / STEP)):
        step()
        unsent.append(agent.unsent)
    settled = unsent[len(unsent) // 2 :]
    # Without the send cap the agent sends whatever client_a's window allows (grown
    # towards 32 MiB: client_a's own path is fast), all of it queued on the link.
    assert max(settled) < 2 * MiB
    assert link.moved / seconds > 0.9 * RATE
    assert agent.session.stats.send_backoffs >= 1
    assert MIN_WINDOW <= agent.session.credit.send_cap < 4 * MiB

    opened_at = pair.now
    other_sid = other.open()
    while other.streams[other_sid].response is None and pair.now - opened_at < 5.0:
        step()
    response = other.streams[other_sid].response
    assert response is not None and response.ok
    assert pair.now - opened_at < 0.1
    assert downloader.streams[sid].received > 0.9 * RATE * seconds
    assert not (downloader.errors or other.errors or agent.errors)


def test_a_download_queued_on_the_agents_link_does_not_cut_another_tenants_upload() -> None:
    """The two directions apart: one tenant downloads from an agent whose own link
    to the relay is slow, so the agent's probes leave behind a queue. Their
    answers, stamped by the relay, put that queue on the way out: the agent caps
    what its download has unacknowledged, and leaves alone the windows it grants
    another tenant's upload, whose bytes come in over a free path. Timed by the
    round trip alone, the agent cut those windows to an eighth (512 KiB) and the
    upload moved ~26 MB/s, its cut window per round trip."""
    pair = Pair(Limits(connection_buffer=64 * MiB))
    downloader, uploader = pair.client(token=1), pair.client(token=2)
    for client in (downloader, uploader):
        client.session.credit.max_window = 32 * MiB
    agent = pair.agent()
    agent.session.credit.max_window = 32 * MiB
    link = SlowUplink(pair, agent)
    down_sid, up_sid = downloader.open(), uploader.open()
    for _ in range(100):
        pair.now += STEP
        agent.deliver(1 << 30)  # the opens' answers
        pair.run()
    assert downloader.streams[down_sid].response is not None
    assert uploader.streams[up_sid].response is not None
    sending = agent.streams[down_sid].stream
    unsent, caps = [], []
    seconds = 4.0
    for _ in range(int(seconds / STEP)):
        if sending.backlog is None:
            sending.send(bytes(256 * 1024))  # the target always has more
        upload(pair, uploader, up_sid)
        link.step()
        unsent.append(agent.unsent)
        caps.append(agent.session.credit.cap)
    settled = len(unsent) // 2
    # The way out is paced as before ...
    assert max(unsent[settled:]) < 2 * MiB
    assert link.moved / seconds > 0.9 * RATE
    assert agent.session.stats.send_backoffs >= 1
    # ... and the way in is not: no cut windows once settled, and the upload
    # moves many times the slow link's rate (its window per round trip).
    assert set(caps[settled:]) == {0}
    assert agent.session.path.queue_in < 0.005 < agent.session.path.queue_out
    assert agent.streams[up_sid].received > 5 * RATE * seconds
    assert not (downloader.errors or uploader.errors or agent.errors)


class AsymmetricLink:
    """The agent's link to the relay: `out` bytes per second from the agent,
    `into` to it, and `one_way` seconds of propagation each way."""

    def __init__(
        self, pair: Pair, agent: Endpoint, out: float, into: float, one_way: float
    ) -> None:
        self.pair, self.agent = pair, agent
        self.rate = {"in": into, "out": out}
        self.tokens = {"in": 0.0, "out": 0.0}
        self.one_way = one_way
        self.flying_in: deque[tuple[float, bytes | None]] = deque()
        self.flying_out: deque[tuple[float, bytes | None]] = deque()
        agent.slow_link_out()
        agent.reading = False  # it reads what crosses the link, below
        # It joined on an instant path: time the modelled one from scratch.
        agent.session.path = PathDelay()
        agent.session.probing = True

    def _send(
        self, way: str, queue: deque[bytes | None], flying: deque[tuple[float, bytes | None]]
    ) -> int:
        """Put what the link's rate allows of `queue` on the wire; bytes taken."""
        rate = self.rate[way]
        self.tokens[way] += rate * STEP
        taken = 0
        while queue and (queue[0] is None or len(queue[0]) <= self.tokens[way]):
            message = queue.popleft()
            if message is not None:
                self.tokens[way] -= len(message)
                taken += len(message)
            flying.append((self.pair.now + self.one_way, message))
        if not queue:
            self.tokens[way] = min(self.tokens[way], rate * STEP)  # an idle link saves nothing
        return taken

    def step(self) -> None:
        pair, agent, now = self.pair, self.agent, self.pair.now + STEP
        pair.now = now
        pair.switch.tick(now)
        for endpoint in pair.endpoints:
            if endpoint is not agent:
                endpoint.read()
        agent.wire.queued -= self._send("in", agent.wire.queue, self.flying_in)
        while self.flying_in and self.flying_in[0][0] <= now:
            message = self.flying_in.popleft()[1]
            if message is None:
                agent.session.probe_answered(now)
            else:
                agent.session.receive(memoryview(message), now)
        assert agent.outbox is not None
        self._send("out", agent.outbox, self.flying_out)
        while self.flying_out and self.flying_out[0][0] <= now:
            message = self.flying_out.popleft()[1]
            if message is None:
                agent.wire.pong()
            else:
                pair.switch.receive(agent.conn, memoryview(message), now)


class Tenants:
    """An agent behind an `AsymmetricLink` (5 ms each way), a downloader, an
    uploader and another tenant whose opens go one at a time, driven a
    millisecond at a time (`python -m bench.pair_links` measures the same)."""

    def __init__(self, out: float, into: float, one_way: float = 0.005) -> None:
        self.pair = pair = Pair(Limits(connection_buffer=64 * MiB))
        self.downloader, self.uploader, self.other = (pair.client(token=n) for n in (1, 2, 3))
        for client in (self.downloader, self.uploader, self.other):
            client.session.credit.max_window = 32 * MiB
        self.agent = agent = pair.agent()
        agent.session.credit.max_window = 32 * MiB
        self.link = AsymmetricLink(pair, agent, out=out, into=into, one_way=one_way)
        self.down_sid, self.up_sid = self.downloader.open(), self.uploader.open()
        for _ in range(100):
            self.link.step()
        self.sending = agent.streams[self.down_sid].stream
        self.opens: list[float] = []  # seconds from each open to its answer
        self.waiting: tuple[int, float] | None = None
        self.relay_queue: list[int] = []  # what the relay held for the agent, per step
        self.started = pair.now
        self.down_from = self.downloader.streams[self.down_sid].received
        self.up_from = agent.streams[self.up_sid].received

    def step(self, down: bool, up: bool, open_one: bool) -> None:
        """A millisecond: the bulk streams asked for send as their credit allows, and
        with `open_one` the other tenant opens a stream unless one is still waiting."""
        if down and self.sending.backlog is None:
            self.sending.send(bytes(256 * 1024))  # the target always has more
        if up:
            upload(self.pair, self.uploader, self.up_sid)
        other, waiting = self.other, self.waiting
        if open_one and waiting is None:
            self.waiting = (other.open(), self.pair.now)
        elif waiting is not None and (response := other.streams[waiting[0]].response) is not None:
            assert response.ok
            self.opens.append(self.pair.now - waiting[1])
            other.abort(waiting[0])
            self.waiting = None
        self.link.step()
        self.relay_queue.append(self.agent.wire.queued)

    def rates(self) -> tuple[float, float]:
        """Bytes per second since the start, down and up."""
        seconds = self.pair.now - self.started
        down = self.downloader.streams[self.down_sid].received - self.down_from
        up = self.agent.streams[self.up_sid].received - self.up_from
        return down / seconds, up / seconds

    @property
    def errors(self) -> bool:
        return any(e.errors for e in (self.downloader, self.uploader, self.other, self.agent))


def test_on_an_asymmetric_link_a_download_an_upload_and_the_others_opens_all_go() -> None:
    """5 MB/s out of the agent, 20 MB/s into it, 5 ms each way (bench.hol_probe
    --direction both --rate 5MB --rate-to-agent 20MB). Timed by the round trip
    alone, the download's queue on the way out held the upload's windows down:
    3.4 MB/s of its 20. Split by the relay's stamp, the upload moves 13 MB/s and
    the download keeps most of its link; the others' opens cross both ways' queues."""
    tenants = Tenants(out=5e6, into=20e6)
    for i in range(6000):
        tenants.step(down=True, up=True, open_one=i >= 2000 and i % 200 == 0)  # once settled
    down, up = tenants.rates()
    # The way out stays well used (its credit now returns behind the upload's
    # queue, ~4 MB/s), and the way in is used, not held down by the other's queue.
    assert down > 0.7 * 5e6
    assert up > 0.5 * 20e6
    assert len(tenants.opens) >= 15 and max(tenants.opens) < 0.1
    assert max(tenants.relay_queue[2000:]) < 2 * MiB
    assert not tenants.errors


def test_the_start_of_an_upload_on_a_slow_link_does_not_queue_a_second_ahead_of_the_others() -> (
    None
):
    """20 MB/s into the agent, 5 ms each way, an upload from its first byte. The agent
    used to time the path only once a sender was out of credit: the upload's first
    window queued unseen, and the BLOCKED at its end doubled the window on a calm
    reading from before it, again and again, until 12 MB (0.6 s of the link) waited in
    the relay ahead of the others' opens. A bulk message now times the path as it
    arrives, so the queue is seen, and the window cut, within a round trip of it."""
    tenants = Tenants(out=20e6, into=20e6)
    for i in range(3000):
        tenants.step(down=False, up=True, open_one=i % 50 == 20)
    _, up = tenants.rates()
    assert up > 0.9 * 20e6  # the upload still fills the link from its start
    assert max(tenants.relay_queue) < 2 * MiB  # 12 MB before
    assert len(tenants.opens) >= 40 and max(tenants.opens) < 0.15  # 0.6 s before
    assert tenants.agent.session.stats.window_backoffs >= 1
    assert not tenants.errors
