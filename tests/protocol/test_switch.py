"""The relay's switch, in memory: every isolation property as a millisecond test.

`Pair` (fastrelay/protocol/pair.py) joins in-memory client_a and agent
endpoints to a real `Switch`; nothing here opens a socket or reads a clock.
"""

from __future__ import annotations

import pytest

from fastrelay.protocol.errors import (
    CLOSE_GOING_AWAY,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_POLICY_VIOLATION,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_TRY_AGAIN_LATER,
)
from fastrelay.protocol.frames import (
    FrameType,
    decode_probe_answer,
    encode_frame,
    encode_probe,
    encode_probe_answer,
    encode_window_update,
    iter_frames,
)
from fastrelay.protocol.messages import ConnectResponse, GoAway, OpenStream
from fastrelay.protocol.pair import Endpoint, Pair
from fastrelay.protocol.state import State
from fastrelay.protocol.switch import SLOT_COUNT, SLOT_SIZE, Limits
from tests.protocol.test_vectors import MALFORMED, VALID, Vector

MiB = 1024 * 1024


def tunnel(pair: Pair, client: Endpoint) -> int:
    """An open stream, answered by whichever agent the switch picked."""
    sid = client.open()
    pair.run()
    response = client.streams[sid].response
    assert response is not None and response.ok, response
    return sid


def download(pair: Pair, agent: Endpoint, sid: int, n: int) -> None:
    """The agent sends `n` bytes, as fast as credit allows, while everyone reads."""
    sent = 0
    for _ in range(10_000):
        sent += agent.write(sid, n - sent)
        pair.run()
        if sent == n:
            return
    raise AssertionError(f"stuck after {sent} of {n} bytes")


def agent_of(pair: Pair, sid: int) -> Endpoint:
    return next(e for e in pair.endpoints if not e.is_client and sid in e.streams)


# --- the wire format: every vector of docs/PROTOCOL.md, through the switch ---


# What only the relay sends, and the relay refuses to receive (a probe's answer).
RELAY_ONLY = {"probe_answer"}


@pytest.mark.parametrize(
    "vector", [v for v in VALID if v.name not in RELAY_ONLY], ids=lambda v: v.name
)
def test_valid_vectors_never_close_the_sender(vector: Vector) -> None:
    pair = Pair()
    client = pair.client()
    assert client.hello is not None and client.hello.stream_id_base == SLOT_SIZE  # as the vectors
    client.send(vector.data)
    assert client.closed is None
    assert not pair.switch.stats.protocol_errors


@pytest.mark.parametrize("vector", MALFORMED, ids=lambda v: v.name)
def test_malformed_vectors_close_the_sender_with_their_code(vector: Vector) -> None:
    pair = Pair()
    client, agent = pair.client(), pair.agent()
    client.send(vector.data)
    assert client.closed is not None
    code, reason = client.closed
    assert code == vector.expected["closeCode"]
    assert vector.expected["reason"] in reason
    assert agent.closed is None  # the agent it shares a relay with is untouched
    assert sum(pair.switch.stats.protocol_errors.values()) == 1


def test_the_relay_answers_a_probe_behind_what_it_queued_with_its_clock() -> None:
    """docs/PROTOCOL.md §10: the answer crosses the relay's queue for the prober,
    so its arrival times that queue, and the stamp says when the probe was read."""
    pair = Pair()
    client, agent = pair.client(), pair.agent()
    sid = tunnel(pair, client)
    assert client.hello is not None and client.hello.probe and agent.hello is not None
    assert agent.hello.probe
    agent.wire.queue.clear()
    data = encode_frame(FrameType.TUNNEL_DATA, sid, b"x" * 100)
    client.send(data)  # queued for the agent, not read yet
    pair.now += 0.25
    agent.send(encode_probe(7))
    first, second = agent.wire.queue
    assert first == data
    assert decode_probe_answer(memoryview(second)[10:]) == (7, int(pair.now * 1_000_000))
    heard = [f[0] for m in client.wire.queue if m is not None for f in iter_frames(m)]
    assert FrameType.PROBE not in heard  # nobody else hears it
    assert agent.closed is None and not pair.switch.stats.protocol_errors


def test_a_stamped_probe_sent_to_the_relay_closes_that_connection_only() -> None:
    pair = Pair()
    client, agent = pair.client(), pair.agent()
    tunnel(pair, client)
    client.send(encode_probe_answer((1).to_bytes(8, "big"), 5))  # only the relay answers
    assert client.closed is not None
    assert client.closed[0] == CLOSE_PROTOCOL_ERROR
    assert "PROBE to the relay must carry 8 bytes, got 16" in client.closed[1]
    pair.run()
    assert agent.closed is None and agent.ended[-1].error is not None  # its tunnel only
    other = pair.client(token=2)
    tunnel(pair, other)
    assert other.closed is None and agent.closed is None


def test_data_on_stream_0_closes_with_1002() -> None:
    pair = Pair()
    client = pair.client()
    client.send(encode_frame(FrameType.TUNNEL_DATA, 0, b"hi"))
    assert client.closed is not None and client.closed[0] == CLOSE_PROTOCOL_ERROR


def test_frames_before_a_malformed_one_are_forwarded_and_nothing_after() -> None:
    pair = Pair()
    client, agent = pair.client(), pair.agent()
    sid = tunnel(pair, client)
    data = encode_frame(FrameType.TUNNEL_DATA, sid, b"x" * 100)
    client.send(data + b"\x7f" + bytes(9) + data)
    pair.run()
    assert client.closed is not None
    assert agent.ended[-1].received == 100  # the frame before arrived, then the abort
    assert agent.ended[-1].error is not None


# --- isolation ---


def test_oversized_message_closes_only_its_sender_and_reaches_nobody() -> None:
    pair = Pair(Limits(max_message=64 * 1024))
    hostile, other = pair.client(), pair.client()
    agent = pair.agent()
    sid, kept = tunnel(pair, hostile), tunnel(pair, other)
    received = agent.streams[sid].received
    hostile.send(encode_frame(FrameType.TUNNEL_DATA, sid, bytes(2 * MiB)))  # over the limit
    pair.run()
    assert hostile.closed is not None and hostile.closed[0] == CLOSE_MESSAGE_TOO_BIG
    assert agent.closed is None
    assert sid not in agent.streams and agent.ended[-1].received == received
    assert agent.ended[-1].error is not None  # told the stream is gone
    assert other.write(kept, 1000) == 1000
    pair.run()
    assert agent.streams[kept].received == 1000
    hostile.send(encode_frame(FrameType.TUNNEL_DATA, sid, b"late"))  # nothing after failing
    assert pair.switch.stats.dropped_unknown_stream == 0


def test_stalled_client_costs_only_its_own_streams() -> None:
    pair = Pair(Limits(connection_buffer=8 * MiB))
    sleeper, other = pair.client(), pair.client()
    agent = pair.agent()
    stalled = [tunnel(pair, sleeper) for _ in range(8)]
    kept = tunnel(pair, other)
    sleeper.reading = False  # the laptop sleeps: reads nothing, answers no ping
    for sid in stalled:
        agent.write(sid, 100 * MiB)  # as much as its credit allows, then the agent waits
    pair.run()
    download(pair, agent, kept, 50 * MiB)  # the neighbour's download completes
    assert other.streams[kept].received == 50 * MiB
    fresh = tunnel(pair, other)  # and its opens succeed
    assert other.streams[fresh].state.state is State.TUNNELING
    # What the relay holds for the sleeper is what it granted: never over the budget.
    assert sleeper.closed is None
    assert sleeper.wire.peak <= pair.limits.connection_buffer
    assert agent.closed is None and other.closed is None


def test_a_client_that_grants_more_than_it_reads_is_cut_off_alone() -> None:
    pair = Pair(Limits(connection_buffer=4 * MiB))
    hostile, other = pair.client(), pair.client()
    agent = pair.agent()
    kept = tunnel(pair, other)
    hostile.pool.budget = hostile.pool.want = 64 * MiB  # type: ignore[union-attr]
    sids = [tunnel(pair, hostile) for _ in range(4)]
    hostile.reading = False
    for sid in sids:
        agent.write(sid, 8 * MiB)
    assert hostile.closed is not None and hostile.closed[0] == CLOSE_POLICY_VIOLATION
    assert "budget" in hostile.closed[1]
    assert pair.switch.stats.limits["connection_buffer"] == 1
    pair.run()
    assert all(sid not in agent.streams for sid in sids)  # its streams were aborted
    download(pair, agent, kept, 10 * MiB)
    assert other.streams[kept].received == 10 * MiB
    assert agent.closed is None and other.closed is None


def test_a_stalled_agent_holds_uploads_within_its_credit() -> None:
    pair = Pair(Limits(connection_buffer=4 * MiB))
    uploader, other = pair.client(), pair.client()
    slow, quick = pair.agent(), pair.agent()
    sids = [tunnel(pair, uploader) for _ in range(4)]
    slow.reading = False
    for sid in sids:
        uploader.write(sid, 50 * MiB)
    pair.run()
    assert slow.closed is None and slow.wire.peak <= pair.limits.connection_buffer
    kept = tunnel(pair, other)  # new opens avoid the stalled agent once it is found out
    assert agent_of(pair, kept) is quick or pair.switch.stats.open_retries


def test_sending_past_the_receivers_credit_aborts_that_stream_only() -> None:
    pair = Pair()
    client = pair.client()
    agent = pair.agent(want=64 * 1024)
    greedy, kept = tunnel(pair, client), tunnel(pair, client)
    credit = client.streams[greedy].send.available
    client.send(encode_frame(FrameType.TUNNEL_DATA, greedy, bytes(credit + 1)))
    pair.run()
    assert client.closed is None
    assert greedy not in client.streams and client.ended[-1].error is not None
    assert "credit" in client.ended[-1].error
    assert pair.switch.stats.protocol_errors["flow_control"] == 1
    assert client.write(kept, 5000) == 5000
    pair.run()
    assert agent.streams[kept].received == 5000


def test_data_before_the_open_succeeded_aborts_the_stream() -> None:
    pair = Pair()
    client, agent = pair.client(), pair.agent()
    agent.answers = False
    sid = client.open()
    client.send(encode_frame(FrameType.TUNNEL_DATA, sid, b"early"))
    pair.run()
    assert client.closed is None
    assert client.ended[-1].error is not None and "DATA_UP" in client.ended[-1].error
    assert pair.switch.stats.protocol_errors["illegal_transition"] == 1


# --- limits ---


def test_streams_per_connection_limit_refuses_with_503_and_a_reason() -> None:
    pair = Pair(Limits(streams_per_connection=3))
    client, agent = pair.client(), pair.agent()
    for _ in range(3):
        tunnel(pair, client)
    client.pool.max_streams += 1  # type: ignore[union-attr]  # a client that does not listen
    sid = client.open()
    pair.run()
    response = client.ended[-1].response
    assert response is not None and (response.status_code, response.reason) == (503, "stream_limit")
    assert "limit 3" in (response.error or "")
    assert pair.switch.stats.limits["streams_per_connection"] == 1
    assert sid not in agent.streams and len(agent.streams) == 3


def test_opens_in_flight_per_agent_limit_refuses_with_agent_busy() -> None:
    pair = Pair(Limits(opens_per_agent=2, token_share=1))
    client, agent = pair.client(), pair.agent()
    agent.answers = False
    client.open(), client.open()
    sid = client.open()
    pair.run()
    response = client.ended[-1].response
    assert client.ended[-1].sid == sid
    assert response is not None and (response.status_code, response.reason) == (503, "agent_busy")
    assert pair.switch.stats.limits["opens_per_agent"] == 1


def test_no_agent_is_a_retryable_503() -> None:
    pair = Pair()
    client = pair.client()
    client.open()
    pair.run()
    response = client.ended[-1].response
    assert response is not None and (response.status_code, response.reason) == (503, "no_agent")


def test_connections_per_token_refuse_with_429_and_other_tokens_still_get_in() -> None:
    pair = Pair(Limits(connections_per_token=3))
    for _ in range(3):
        pair.client(token=1)
    assert pair.switch.admission("client", 1) == (
        429,
        "too many connections for this token (limit 3)",
    )
    late = pair.client(token=1)  # past the upgrade check (a race): closed with 1013
    assert late.closed is not None and late.closed[0] == CLOSE_TRY_AGAIN_LATER
    assert pair.switch.admission("client", 2) is None
    other = pair.client(token=2)
    assert other.closed is None and other.hello is not None
    pair.disconnect(pair.endpoints[0])
    assert pair.switch.admission("client", 1) is None
    assert pair.switch.stats.limits["connections_per_token"] >= 2


def test_stream_id_ranges_outnumber_the_connection_limit() -> None:
    limits = Limits()
    assert limits.connections < SLOT_COUNT - 1
    with pytest.raises(ValueError, match="stream-id ranges"):
        Limits(connections=SLOT_COUNT)
    pair = Pair(Limits(connections=50, connections_per_token=50))
    bases = set()
    for _ in range(50):
        client = pair.client()
        assert client.hello is not None
        bases.add(client.hello.stream_id_base)
    assert len(bases) == 50
    assert pair.switch.admission("client", 0) == (503, "relay is at its connection limit (50)")


def test_hello_announces_the_budget_and_the_client_keeps_within_it() -> None:
    pair = Pair(Limits(connection_buffer=2 * MiB, streams_per_connection=100))
    client = pair.client(want=1 * MiB)
    assert client.hello is not None
    assert (client.hello.buffer_budget, client.hello.max_streams) == (2 * MiB, 100)
    pool = client.pool
    assert pool is not None
    for _ in range(100):
        pool.open()
    assert pool.granted <= 2 * MiB * 3 // 4
    assert pool.open() == 0


# --- agent health ---


def test_a_frozen_agent_gets_no_new_opens_and_its_pending_ones_move() -> None:
    pair = Pair()
    client = pair.client()
    frozen, _alive = pair.agent(), pair.agent()
    frozen.reading = False
    sids = [client.open() for _ in range(6)]
    pair.run()
    pending = [sid for sid in sids if client.streams[sid].response is None]
    assert pending  # some went to the frozen agent
    pair.advance(2.0)  # probe after 0.5 s, stalled 1 s later
    assert frozen.conn.stalled
    assert all(client.streams[sid].response.ok for sid in sids)  # type: ignore[union-attr]
    assert pair.switch.stats.open_retries == len(pending)
    before = len(frozen.wire.queue)
    for _ in range(10):
        tunnel(pair, client)
    assert len(frozen.wire.queue) == before  # nothing new went its way
    frozen.reading = True  # it wakes up: answers the probe and is eligible again
    pair.advance(0.3)
    assert not frozen.conn.stalled


def test_a_rogue_agent_that_never_answers_attracts_few_opens() -> None:
    pair = Pair(Limits(open_retry_after=1.0))
    client = pair.client()
    rogue, honest = pair.agent(), pair.agent()
    rogue.answers = False  # reads and pongs, never answers an open
    sids = []
    for _ in range(40):
        sids.append(client.open())
        pair.advance(0.2)
    pair.advance(2.0)
    assert all(client.streams[sid].response.ok for sid in sids)  # type: ignore[union-attr]
    opened_at_rogue = pair.switch.stats.open_retries
    assert opened_at_rogue <= 10, opened_at_rogue  # most never went there
    assert len(honest.streams) == 40


def test_an_open_nobody_answers_times_out_with_504() -> None:
    pair = Pair(Limits(connect_timeout=3.0))
    client = pair.client()
    pair.agent().answers = False
    sid = client.open()
    pair.advance(3.5)
    response = client.ended[-1].response
    assert client.ended[-1].sid == sid
    assert response is not None and response.status_code == 504
    assert pair.switch.stats.results["timeout"] == 1
    assert not pair.switch.opening


def test_an_agent_that_leaves_mid_open_hands_its_opens_to_another() -> None:
    pair = Pair()
    client = pair.client()
    leaving, staying = pair.agent(), pair.agent()
    leaving.answers = staying.answers = False
    sids = [client.open() for _ in range(4)]
    staying.answers = True
    first = pair.switch.agents[0]
    mine = [sid for sid in sids if client.conn.streams[sid].agent is first]
    pair.disconnect(leaving)
    pair.run()
    assert mine
    assert all(client.streams[sid].response.ok for sid in mine)  # type: ignore[union-attr]


def test_goaway_from_an_agent_stops_new_opens_to_it() -> None:
    pair = Pair()
    client = pair.client()
    draining, other = pair.agent(), pair.agent()
    draining.send(GoAway("bye").encode())
    for _ in range(6):
        sid = tunnel(pair, client)
        assert agent_of(pair, sid) is other
    assert draining.closed is None


def test_detach_ends_every_stream_and_frees_the_range() -> None:
    pair = Pair()
    client, agent = pair.client(), pair.agent()
    sids = [tunnel(pair, client) for _ in range(3)]
    pair.disconnect(client)
    pair.run()
    assert not agent.streams and all(s.error == "client_a disconnected" for s in agent.ended)
    assert pair.switch.active_streams == 0
    assert sids and not pair.switch.slots.used


def test_window_update_and_fin_reach_the_other_side() -> None:
    pair = Pair()
    client, agent = pair.client(), pair.agent()
    sid = tunnel(pair, client)
    download(pair, agent, sid, 3 * MiB)  # needs WINDOW_UPDATEs from client_a
    client.write(sid, 10)
    client.fin(sid)
    agent.fin(sid)
    pair.run()
    assert client.ended[-1].received == 3 * MiB and agent.ended[-1].received == 10
    assert pair.switch.active_streams == 0
    assert pair.switch.stats.results["ok"] == 1


def test_open_refused_after_draining() -> None:
    pair = Pair()
    client = pair.client()
    pair.agent()
    kept = tunnel(pair, client)  # a tunnel keeps the connection open through the GOAWAY
    pair.switch.start_draining()
    pair.run()
    assert client.session.goaway and client.closed is None
    client.open()  # an open that crossed the GOAWAY on the wire
    pair.run()
    response = client.ended[-1].response
    assert response is not None and (response.status_code, response.reason) == (503, "draining")
    assert client.streams[kept].state.state is State.TUNNELING  # the tunnel runs on


def test_an_idle_client_closes_its_connection_on_goaway() -> None:
    pair = Pair()
    client = pair.client()
    pair.agent()
    pair.switch.start_draining()
    pair.run()
    assert client.closed is not None and client.closed[0] == CLOSE_GOING_AWAY
    assert not pair.switch.clients


def test_an_agent_may_not_open_streams() -> None:
    pair = Pair()
    agent = pair.agent()
    agent.send(OpenStream(FrameType.CONNECT, "s", "t.test", 443).encode(SLOT_SIZE + 1))
    assert agent.closed is not None and "agents do not open" in agent.closed[1]


def test_client_a_may_not_answer_opens() -> None:
    pair = Pair()
    client, _agent = pair.client(), pair.agent()
    sid = client.open()
    client.send(ConnectResponse("s", 200).encode(sid))
    pair.run()
    assert client.closed is None
    assert client.ended[-1].error is not None


def test_window_update_overflow_aborts_the_stream() -> None:
    pair = Pair()
    client, agent = pair.client(), pair.agent()
    sid = tunnel(pair, client)
    client.send(encode_window_update(sid, 2**31 - 1))
    pair.run()
    assert sid not in agent.streams and pair.switch.stats.protocol_errors["flow_control"] == 1


def test_opens_go_to_the_least_loaded_agent_and_ties_rotate() -> None:
    pair = Pair()
    client = pair.client()
    agents = [pair.agent() for _ in range(3)]
    for _ in range(30):
        tunnel(pair, client)
    assert [len(a.streams) for a in agents] == [10, 10, 10]
    busy = agents[0]
    for sid in list(busy.streams)[:5]:
        busy.abort(sid)
    pair.run()
    for _ in range(5):
        assert agent_of(pair, tunnel(pair, client)) is busy  # the least loaded wins


def test_an_agent_connection_carries_more_streams_than_one_client_connection() -> None:
    pair = Pair(Limits(streams_per_connection=3, streams_per_agent=7))
    clients = [pair.client(token=token) for token in range(3)]  # three tenants
    agent = pair.agent()
    assert agent.hello is not None and agent.hello.max_streams == 7
    for client in clients[:2]:
        for _ in range(3):
            tunnel(pair, client)
    assert len(agent.streams) == 6  # two clients at their own limit, the agent is not
    tunnel(pair, clients[2])
    sid = clients[2].open()
    pair.run()
    response = clients[2].ended[-1].response
    assert clients[2].ended[-1].sid == sid and response is not None
    assert (response.status_code, response.reason) == (503, "agent_busy")  # the agent is full
    assert pair.switch.stats.limits["streams_per_agent"] == 1
    with pytest.raises(ValueError, match="streams_per_agent"):
        Limits(streams_per_connection=8, streams_per_agent=4)


def test_one_client_connection_cannot_hold_every_dial_of_an_agent() -> None:
    pair = Pair(Limits(opens_per_connection=2, opens_per_agent=8))
    greedy, other = pair.client(), pair.client()
    agent = pair.agent()
    agent.answers = False  # dials that hang
    greedy.open(), greedy.open()
    sid = greedy.open()
    pair.run()
    response = greedy.ended[-1].response
    assert greedy.ended[-1].sid == sid and response is not None
    assert (response.status_code, response.reason) == (503, "open_limit")
    assert "limit 2" in (response.error or "")
    assert pair.switch.stats.limits["opens_per_connection"] == 1
    agent.answers = True
    kept = tunnel(pair, other)  # another client still gets through to the same agent
    assert other.streams[kept].state.state is State.TUNNELING


# --- tenants: a client token's share of each agent ---


def refused(client: Endpoint, sid: int) -> ConnectResponse:
    end = client.ended[-1]
    assert end.sid == sid and end.response is not None, end
    return end.response


def test_one_token_cannot_hold_every_dial_of_an_agent_however_many_connections() -> None:
    pair = Pair(Limits(opens_per_agent=8, opens_per_connection=8))
    greedy = [pair.client(token=1) for _ in range(3)]  # one tenant, three connections
    other = pair.client(token=2)
    agent = pair.agent()
    agent.answers = False  # dials that hang
    for i in range(4):
        greedy[i % 3].open()
    sid = greedy[1].open()
    pair.run()
    response = refused(greedy[1], sid)
    assert (response.status_code, response.reason) == (503, "token_share")
    assert response.error == (
        "this token holds its share of every agent that could take the open: "
        "4 of each agent's 8 opens in flight (--max-token-share 0.5)"
    )
    assert pair.switch.stats.limits == {"token_opens": 1}
    assert len(agent.streams) == 4  # the refused open never reached the agent
    # The other tenant gets the room that is left: its own share, all of it.
    for _ in range(4):
        other.open()
    pair.run()
    assert len(agent.streams) == 8 and not other.ended
    # Opens that end (here: 504 after --connect-timeout) are the tenant's share again.
    pair.advance(11.0)
    assert [e.response.reason for e in other.ended if e.response] == ["open_timeout"] * 4
    agent.answers = True
    kept = tunnel(pair, greedy[2])
    assert greedy[2].streams[kept].state.state is State.TUNNELING


def test_one_token_cannot_hold_every_stream_of_an_agent() -> None:
    pair = Pair(Limits(streams_per_connection=4, streams_per_agent=8, token_share=0.75))
    greedy = [pair.client(token=1) for _ in range(2)]
    other = pair.client(token=2)
    agent = pair.agent()
    for i in range(6):
        tunnel(pair, greedy[i % 2])
    sid = greedy[0].open()
    pair.run()
    response = refused(greedy[0], sid)
    assert (response.status_code, response.reason) == (503, "token_share")
    assert "6 of each agent's 8 streams (--max-token-share 0.75)" in (response.error or "")
    assert pair.switch.stats.limits == {"token_streams": 1}
    tunnel(pair, other), tunnel(pair, other)
    assert len(agent.streams) == 8
    # A stream that ends gives its place back to its tenant.
    greedy[1].abort(next(iter(greedy[1].streams)))
    pair.run()
    tunnel(pair, greedy[0])


def test_a_tokens_share_is_per_agent_and_opens_go_where_it_has_room() -> None:
    pair = Pair(Limits(opens_per_agent=4))
    client = pair.client(token=1)
    pair.client(token=2)  # another tenant, connected
    first, second = pair.agent(), pair.agent()
    first.answers = second.answers = False
    for _ in range(4):
        client.open()
    pair.run()
    assert (len(first.streams), len(second.streams)) == (2, 2)
    sid = client.open()
    pair.run()
    assert refused(client, sid).reason == "token_share"
    second.reading = False  # frozen: its opens would move, but only where the token has room
    pair.advance(2.0)
    assert second.conn.stalled and pair.switch.stats.open_retries == 0
    assert len(first.streams) == 2 and len(client.ended) == 1


def test_a_token_alone_uses_every_agent_in_full_and_is_held_at_its_share_once_another_comes() -> (
    None
):
    pair = Pair(Limits(opens_per_agent=4))
    alone = pair.client(token=1)
    agent = pair.agent()
    agent.answers = False
    for _ in range(3):
        alone.open()
    pair.run()
    assert len(agent.streams) == 3 and not alone.ended  # nobody else to leave room for
    other = pair.client(token=2)
    sid = alone.open()
    pair.run()
    assert refused(alone, sid).reason == "token_share"  # 3 held, over its 2: no more
    other.open()
    pair.run()
    assert len(agent.streams) == 4 and not other.ended  # the room left is the newcomer's
    pair.disconnect(other)  # alone again: the whole agent is its own
    pair.run()
    assert len(agent.streams) == 3
    alone.open()
    pair.run()
    assert len(agent.streams) == 4 and len(alone.ended) == 1


def test_an_agent_full_with_several_tenants_is_agent_busy_not_token_share() -> None:
    pair = Pair(Limits(opens_per_agent=4))
    a, b = pair.client(token=1), pair.client(token=2)
    agent = pair.agent()
    agent.answers = False
    a.open(), a.open(), b.open(), b.open()
    sid = b.open()
    pair.run()
    assert refused(b, sid).reason == "agent_busy"
    assert pair.switch.stats.limits == {"opens_per_agent": 1}


def test_a_token_share_of_one_is_no_cap_and_the_share_is_checked() -> None:
    pair = Pair(Limits(opens_per_agent=3, token_share=1))
    client = pair.client(token=1)
    agent = pair.agent()
    agent.answers = False
    for _ in range(3):
        client.open()
    pair.run()
    assert len(agent.streams) == 3
    assert Limits(opens_per_agent=3, token_share=0.1).token_opens == 1  # never 0
    for bad in (0, -0.5, 1.5, float("nan")):
        with pytest.raises(ValueError, match="token_share"):
            Limits(token_share=bad)


def test_hello_announces_the_largest_message_the_relay_forwards() -> None:
    pair = Pair(Limits(max_message=512 * 1024))
    client, agent = pair.client(), pair.agent()
    assert client.hello is not None and agent.hello is not None
    assert client.hello.max_frame_size == agent.hello.max_frame_size == 512 * 1024


def test_a_blocked_sender_grows_the_receivers_window_through_the_relay() -> None:
    """FLAG_BLOCKED crosses the switch unchanged; the client's window grows
    towards its max_window, within the relay's budget, and every byte arrives."""
    pair = Pair(Limits(connection_buffer=8 * MiB))
    client, agent = pair.client(want=64 * 1024), pair.agent()
    client.session.credit.max_window = 1 * MiB
    sid = tunnel(pair, client)
    start = client.streams[sid].stream.recv_window.window
    agent.streams[sid].stream.send(bytes(8 * MiB))  # more than the credit: it waits, flagged
    pair.run(rounds=10_000)
    assert client.streams[sid].received == 8 * MiB
    assert start == 64 * 1024 < client.streams[sid].stream.recv_window.window <= 1 * MiB
    assert client.session.stats.window_growths >= 4  # 64 KiB doubled up to 1 MiB
    assert not client.errors and client.closed is None
