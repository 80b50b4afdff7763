"""Hypothesis: arbitrary traffic from several peers, some hostile, into the switch.

Honest endpoints follow the protocol (pair.Endpoint); hostile ones also send
arbitrary bytes and arbitrary well-formed frames. Whatever the sequence:

* no exception escapes the switch;
* a peer's bad input closes only that peer (and honest peers never see an
  illegal frame);
* for every stream, the bytes in equal the bytes out until it ends;
* every stream ends once its ends are done (or time passes);
* what the relay queues for a connection stays within the budget;
* while two client tokens are connected, neither gains a stream or an open
  at an agent where it holds its share, and the switch's count of what each
  holds is the truth.
"""

from __future__ import annotations

from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastrelay.protocol.frames import FrameType, encode_frame
from fastrelay.protocol.pair import Endpoint, Pair
from fastrelay.protocol.switch import SLOT_BITS, SLOT_SIZE, Limits

KiB = 1024
LIMITS = Limits(
    max_message=64 * KiB,
    connection_buffer=512 * KiB,
    streams_per_connection=6,
    streams_per_agent=6,  # with two tokens connected, one holds at most 3 of them,
    opens_per_agent=3,  # and 1 of the 3 opens in flight
    connect_timeout=3.0,
    open_retry_after=1.0,
)
CLIENTS, AGENTS = 3, 2
TOKENS = (1, 1, 2)  # the first two clients are one tenant's two connections

frame_types = st.sampled_from([int(t) for t in FrameType] + [0, 0x7F])
sids = st.one_of(
    st.sampled_from([0, 1, SLOT_SIZE + 1, SLOT_SIZE + 2, 2 * SLOT_SIZE + 1, 3 * SLOT_SIZE + 1]),
    st.integers(0, 2**32 - 1),
)


@st.composite
def crafted(draw: st.DrawFn) -> bytes:
    """A message of well-formed headers with whatever type, stream and payload."""
    frames = draw(
        st.lists(st.tuples(frame_types, sids, st.binary(max_size=40)), min_size=1, max_size=4)
    )
    return b"".join(encode_frame(t, s, p) for t, s, p in frames)


garbage = st.one_of(st.binary(min_size=1, max_size=80), crafted())
endpoint_ix = st.integers(0, CLIENTS + AGENTS - 1)
action = st.one_of(
    st.tuples(st.just("open"), st.integers(0, CLIENTS - 1)),
    st.tuples(st.just("write"), endpoint_ix, st.integers(0, 7), st.integers(1, 300 * KiB)),
    st.tuples(st.just("fin"), endpoint_ix, st.integers(0, 7)),
    st.tuples(st.just("abort"), endpoint_ix, st.integers(0, 7)),
    st.tuples(st.just("stall"), endpoint_ix),
    st.tuples(st.just("wake"), endpoint_ix),
    st.tuples(st.just("mute"), st.integers(0, AGENTS - 1)),
    st.tuples(st.just("advance"), st.sampled_from([0.1, 0.6, 1.2, 4.0])),
    st.tuples(
        st.just("run"),
    ),
    st.tuples(st.just("hostile"), endpoint_ix, garbage),
    st.tuples(st.just("leave"), endpoint_ix),
)


def pick_stream(endpoint: Endpoint, i: int) -> int | None:
    live = sorted(endpoint.streams)
    return live[i % len(live)] if live else None


def check_budget(pair: Pair) -> None:
    for endpoint in pair.endpoints:
        if endpoint.closed is None:
            assert endpoint.wire.peak <= LIMITS.connection_buffer + LIMITS.max_message


def check_books(pair: Pair) -> None:
    """The switch's own records agree: each agent's count of the streams it carries
    (they live in their client_a's `streams` only) and the stream-id range owners."""
    switch = pair.switch
    live = [s for c in switch.clients for s in c.streams.values()]
    for agent in switch.agents:
        assert agent.carried == sum(1 for s in live if s.agent is agent)
    assert all(s.agent in switch.agents for s in live)
    for client in switch.clients:
        assert switch.owners[client.id_base >> SLOT_BITS] is client
    for i, owner in enumerate(switch.owners):
        assert owner is None or (owner.attached and owner.id_base == i << SLOT_BITS)
    # What each token holds at each agent, as counted.
    for agent in switch.agents:
        streams = Counter(s.client.token for s in live if s.agent is agent)
        opens = Counter(s.client.token for s in agent.opening)
        held = {t: (h.streams, h.opens) for t, h in agent.shares.items() if h.streams}
        assert held == {t: (n, opens[t]) for t, n in streams.items()}
        assert all(h.opens == 0 for h in agent.shares.values() if not h.streams)
    # Client tokens with a connection the adapter has not seen close (as per_token counts).
    assert switch.client_tokens == len({t for role, t in switch.per_token if role == "client"})


def holdings(pair: Pair) -> dict[tuple[int, object], tuple[int, int]]:
    return {
        (id(agent), token): (share.streams, share.opens)
        for agent in pair.switch.agents
        for token, share in agent.shares.items()
    }


def check_shares(pair: Pair, before: dict[tuple[int, object], tuple[int, int]]) -> None:
    """With two tokens connected, no token gained a stream or an open at an agent
    where it already held its share (what it held before the other token came
    may stay above it)."""
    if pair.switch.client_tokens < 2:
        return  # alone (connections only leave during a step): every agent is its own
    for key, (streams, opens) in holdings(pair).items():
        was_streams, was_opens = before.get(key, (0, 0))
        assert streams <= max(was_streams, LIMITS.token_streams), (key, was_streams, streams)
        assert opens <= max(was_opens, LIMITS.token_opens), (key, was_opens, opens)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(action, max_size=40))
def test_arbitrary_traffic_keeps_every_promise(actions: list[tuple]) -> None:
    pair = Pair(LIMITS)
    ends = [pair.client(want=128 * KiB, token=token) for token in TOKENS]
    ends += [pair.agent(want=128 * KiB) for _ in range(AGENTS)]
    hostile: set[int] = set()
    left: set[int] = set()

    for act in actions:
        before = holdings(pair)
        kind = act[0]
        if kind == "open":
            client = ends[act[1]]
            if client.closed is None and client.reading and not client.pool.full:  # type: ignore[union-attr]
                client.open()
        elif kind in ("write", "fin", "abort"):
            endpoint = ends[act[1]]
            if endpoint.closed is not None or not endpoint.reading:
                continue  # a stalled process sends nothing either
            sid = pick_stream(endpoint, act[2])
            if sid is None or endpoint.streams[sid].state.opening:
                continue
            state = endpoint.streams[sid].state
            if kind == "write":
                if state.state in (
                    (state.state.TUNNELING, state.state.HALF_CLOSED_DOWN)
                    if endpoint.is_client
                    else (state.state.TUNNELING, state.state.HALF_CLOSED_UP)
                ):
                    endpoint.write(sid, act[3])
            elif kind == "fin":
                if state.state in (
                    (state.state.TUNNELING, state.state.HALF_CLOSED_DOWN)
                    if endpoint.is_client
                    else (state.state.TUNNELING, state.state.HALF_CLOSED_UP)
                ):
                    endpoint.fin(sid)
            else:
                endpoint.abort(sid)
        elif kind == "stall":
            ends[act[1]].reading = False
        elif kind == "wake":
            ends[act[1]].reading = True
        elif kind == "mute":
            ends[CLIENTS + act[1]].answers = False
        elif kind == "advance":
            pair.advance(act[1])
        elif kind == "run":
            pair.run()
        elif kind == "hostile":
            hostile.add(act[1])
            ends[act[1]].send(act[2])
        elif kind == "leave" and ends[act[1]].closed is None:
            left.add(act[1])
            pair.disconnect(ends[act[1]])
        check_budget(pair)
        check_books(pair)
        check_shares(pair, before)

    # A peer's bad input closes only that peer.
    for i, endpoint in enumerate(ends):
        if i not in hostile and i not in left:
            assert endpoint.closed is None, (i, endpoint.closed)
            assert not endpoint.errors, endpoint.errors  # never sent anything illegal

    # Everyone wakes and reads: bytes in equal bytes out on every live stream.
    for endpoint in ends:
        endpoint.reading = True
    pair.run(rounds=1000)
    check_budget(pair)
    honest_clients = [e for i, e in enumerate(ends[:CLIENTS]) if i not in hostile | left]
    honest_agents = [e for i, e in enumerate(ends[CLIENTS:], CLIENTS) if i not in hostile | left]
    for client in honest_clients:
        for sid, stream in client.streams.items():
            for agent in honest_agents:
                theirs = agent.streams.get(sid)
                if theirs is not None and theirs.session_id == stream.session_id:
                    assert stream.sent == theirs.received
                    assert theirs.sent == stream.received

    # Every stream ends: the live ends finish theirs, time passes, nothing is left.
    for _ in range(3):  # an open answered meanwhile (a retry) is finished next round
        for endpoint in ends:
            if endpoint.closed is None:
                for sid in list(endpoint.streams):
                    if sid in endpoint.streams and not endpoint.streams[sid].state.opening:
                        endpoint.abort(sid)
        pair.run(rounds=1000)
        pair.advance(LIMITS.connect_timeout + 0.5)
    assert pair.switch.active_streams == 0
    assert not pair.switch.opening
    for conn in pair.switch.agents:
        assert not conn.carried and not conn.opening
        assert all(h.streams == h.opens == 0 for h in conn.shares.values())
    check_books(pair)
    for endpoint in ends:
        if endpoint.closed is None and not endpoint.is_client:
            assert not endpoint.streams
