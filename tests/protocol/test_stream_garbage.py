"""An ended stream is freed by reference counting, not left to the garbage collector.

Each program raises the collector's gen0 threshold to 20,000 (lifecycle.tune_gc), so
cyclic garbage waits long for a collection and the peak memory rises with it
(bench/README.md, "Setup"). The relay's switch used to leave its `Stream` and both
of its per-direction credit objects in a cycle for every ended stream (a stream held
them, each held its stream): three objects per open. A stream and its connections
still point at each other (`Conn.streams`) until the stream ends. Here the switch and
both endpoints' sessions open and end streams, in every way a stream can end, with the
collector off; a collection afterwards must find (almost) nothing, whatever the number
of streams.
"""

from __future__ import annotations

import gc
from collections.abc import Callable

import pytest

from fastrelay.protocol.frames import FrameType, encode_frame
from fastrelay.protocol.messages import ConnectResponse, OpenStream
from fastrelay.protocol.output import Output
from fastrelay.protocol.pair import Endpoint, Pair
from fastrelay.protocol.switch import Conn, Limits, Switch

OPENS = 60
# Objects a collection may find after OPENS streams: fewer than one per ten
# streams, so a cycle per stream (or per every few) fails.
SLACK = OPENS // 10


def _finished(pair: Pair, client: Endpoint, agent: Endpoint) -> None:
    sid = client.open()
    pair.run()
    client.write(sid, 100)
    agent.write(sid, 100)
    pair.run()
    client.fin(sid)
    agent.fin(sid)
    pair.run()
    assert pair.switch.active_streams == 0


def _aborted(pair: Pair, client: Endpoint, agent: Endpoint) -> None:
    sid = client.open()
    pair.run()
    client.abort(sid)
    pair.run()


def _violated(pair: Pair, client: Endpoint, agent: Endpoint) -> None:
    """Data before the open was answered: the switch aborts the stream."""
    sid = client.open()
    client.send(encode_frame(FrameType.TUNNEL_DATA, sid, b"x"))
    pair.run()
    assert sid not in client.streams


def _refused(pair: Pair, client: Endpoint, agent: Endpoint) -> None:
    agent.refuse_with = 502
    sid = client.open()
    pair.run()
    response = client.streams.get(sid) or client.ended[-1]
    assert response.response is not None and response.response.status_code == 502
    agent.refuse_with = None


def _timed_out(pair: Pair, client: Endpoint, agent: Endpoint) -> None:
    agent.answers = False
    client.open()
    pair.run()
    pair.advance(pair.limits.connect_timeout + 0.5)
    agent.answers = True


def _client_lost(pair: Pair, client: Endpoint, agent: Endpoint) -> None:
    """A client_a connection goes with an open stream and an unanswered open."""
    other = pair.client()
    other.open()
    pair.run()
    agent.answers = False
    other.open()
    pair.run()
    agent.answers = True
    pair.disconnect(other)
    pair.run()


def _agent_lost(pair: Pair, client: Endpoint, agent: Endpoint) -> None:
    """An agent goes with an open stream and an unanswered open (no agent takes it)."""
    agent.conn.draining = True  # the switch gives the new agent every open
    other = pair.agent()
    client.open()
    pair.run()
    other.answers = False
    client.open()
    pair.run()
    pair.disconnect(other)
    pair.run()
    agent.conn.draining = False


def _open_moved(pair: Pair, client: Endpoint, agent: Endpoint) -> None:
    """An agent goes with an unanswered open, which moves to `agent`, then ends."""
    agent.conn.draining = True
    other = pair.agent()
    other.answers = False
    sid = client.open()
    pair.run()
    agent.conn.draining = False
    pair.disconnect(other)
    pair.run()
    assert sid in agent.streams and pair.switch.stats.open_retries
    client.abort(sid)
    pair.run()


ENDINGS: dict[str, Callable[[Pair, Endpoint, Endpoint], None]] = {
    "finished": _finished,
    "aborted": _aborted,
    "data_before_answer": _violated,
    "refused": _refused,
    "timed_out": _timed_out,
    "client_lost": _client_lost,
    "agent_lost": _agent_lost,
    "open_moved": _open_moved,
}


@pytest.mark.parametrize("ending", list(ENDINGS))
def test_ended_streams_leave_no_cycles(no_collector: None, ending: str) -> None:
    pair = Pair()
    client, agent = pair.client(), pair.agent()
    run = ENDINGS[ending]
    run(pair, client, agent)  # the first of its kind may create lasting objects
    for endpoint in pair.endpoints:
        endpoint.ended.clear()
    gc.collect()
    for _ in range(OPENS):
        run(pair, client, agent)
        for endpoint in pair.endpoints:
            endpoint.ended.clear()  # the pair's own record of ended streams
    assert pair.switch.active_streams == 0
    found = gc.collect()
    assert found <= SLACK, f"{found} objects in cycles after {OPENS} streams {ending}"


class _Cuts(Output):
    """Output and Link of one connection; writing to `victim` cuts it off (as the
    relay's pause_writing does, within the write, when a queue passes the budget)."""

    def __init__(self) -> None:
        self.switch: Switch | None = None
        self.victim: Conn | None = None
        self.closed = False

    def write(self, frames: bytes | bytearray | memoryview) -> None:
        if self.switch is not None and self.victim is not None:
            victim, self.victim = self.victim, None
            self.switch.over_budget(victim, 1 << 40, 1.0)

    def close(self, code: int, reason: str) -> None:
        self.closed = True

    def ping(self) -> None:
        pass


def test_streams_ended_while_their_connection_is_released_end_once() -> None:
    """Releasing a client's streams tells their agent; that write cuts the agent off,
    which ends the same streams first. The release then skips them: each stream
    ends once (its halves no longer point at it), and none moves to another agent
    afterwards."""
    ended: list[object] = []

    class Observer:
        def open_answered(self, stream: object, seconds: float) -> None:
            pass

        def stream_ended(self, stream: object, result: str, seconds: float) -> None:
            ended.append(stream)

        def open_refused(self, client: object, request: object, result: str) -> None:
            pass

        def conn_failed(self, conn: object, exc: Exception) -> None:
            pass

    switch = Switch(Limits(), "relay-test", Observer())  # type: ignore[arg-type]
    agent_io, client_io = _Cuts(), _Cuts()
    agent = Conn("agent", agent_io, agent_io)
    client = Conn("client", client_io, client_io)
    switch.attach(agent, 1.0)
    switch.attach(client, 1.0)
    for i in range(1, 4):
        sid = client.id_base + i
        request = OpenStream(FrameType.CONNECT, f"s{i}", "t", 1)
        switch.receive(client, memoryview(request.encode(sid)), 1.0)
        switch.receive(agent, memoryview(ConnectResponse(f"s{i}", 200).encode(sid)), 1.0)
    assert len(client.streams) == 3 and agent.carried == 3
    agent_io.switch, agent_io.victim = switch, agent
    switch.detach(client, 1.0)
    assert agent.failed and not client.streams and not agent.carried
    assert len(ended) == 3 and len(set(map(id, ended))) == 3
    spare = Conn("agent", _Cuts(), _Cuts())
    switch.attach(spare, 1.0)
    assert not any(switch._move(stream, 1.0) for stream in ended)  # type: ignore[arg-type]
    assert not spare.carried and not spare.opening
