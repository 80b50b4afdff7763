"""Agent pools in the switch: an open for pool P only ever reaches an agent of
pool P, and with no agent in P it gets 503 `no_agent_in_pool` naming P.

Unit cases for each rule, then a Hypothesis property over arbitrary joins,
leaves, mutes, opens and time (pair.py: real sessions around the real switch).
"""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastrelay.protocol.errors import CLOSE_POLICY_VIOLATION, ControlMessageError
from fastrelay.protocol.frames import FrameType, iter_frames
from fastrelay.protocol.messages import (
    DEFAULT_POOL,
    DEFAULT_WINDOW,
    Hello,
    OpenStream,
    pool_error,
)
from fastrelay.protocol.output import Output
from fastrelay.protocol.pair import Endpoint, Pair
from fastrelay.protocol.status import Failure
from fastrelay.protocol.switch import UNKNOWN_POOL, Conn, Limits


def answer(client: Endpoint, sid: int) -> tuple[int, str | None, str | None]:
    handle = client.ended[-1] if sid not in client.streams else client.streams[sid]
    response = handle.response
    assert response is not None, "the open was not answered"
    return response.status_code, response.reason, response.error


def test_an_open_goes_to_an_agent_of_its_pool() -> None:
    pair = Pair()
    client = pair.client()
    default, corp = pair.agent(), pair.agent(pool="corp")
    for _ in range(4):
        client.open("intranet.corp.example", pool="corp")
        client.open("example.com")
    pair.run()
    assert [r.host for r in corp.opened] == ["intranet.corp.example"] * 4
    assert [r.host for r in default.opened] == ["example.com"] * 4
    assert all(r.pool == "corp" for r in corp.opened)
    assert len(client.streams) == 8  # all open


def test_the_agent_hears_its_pool_in_hello() -> None:
    pair = Pair()
    assert pair.agent(pool="corp").hello == Hello(
        "relay-test",
        buffer_budget=pair.limits.connection_buffer,
        max_streams=pair.limits.streams_per_agent,
        max_frame_size=pair.limits.max_message,
        pool="corp",
        probe=True,
    )
    assert pair.agent().hello is not None and pair.agent().hello.pool == DEFAULT_POOL  # type: ignore[union-attr]


def test_no_agent_in_the_pool_is_a_503_naming_it() -> None:
    pair = Pair()
    client = pair.client()
    default = pair.agent()
    sid = client.open("intranet.corp.example", pool="corp")
    pair.run()
    status, reason, error = answer(client, sid)
    assert (status, reason) == (503, Failure.NO_POOL_AGENT.reason)
    assert error == "no agent in pool 'corp'"
    assert default.opened == []
    # Distinct from "no agent at all", which a default-pool open gets from an empty relay.
    empty = Pair()
    lone = empty.client()
    sid = lone.open()
    empty.run()
    assert answer(lone, sid) == (503, "no_agent", "no agent connected")


def test_a_default_open_with_only_other_pools_names_the_default_pool() -> None:
    pair = Pair()
    client = pair.client()
    corp = pair.agent(pool="corp")
    sid = client.open("example.com")
    pair.run()
    assert answer(client, sid) == (503, "no_agent_in_pool", "no agent in pool 'default'")
    assert corp.opened == []


def test_a_pool_whose_agent_left_answers_at_once_while_the_other_works() -> None:
    pair = Pair()
    client = pair.client()
    default, corp = pair.agent(), pair.agent(pool="corp")
    up = client.open("intranet.corp.example", pool="corp")
    pair.run()
    pair.disconnect(corp)
    pair.run()
    assert client.ended and client.ended[-1].sid == up  # its tunnel ended with the agent
    sid = client.open("intranet.corp.example", pool="corp")
    pair.run()  # no time passes: the answer is immediate
    assert answer(client, sid) == (503, "no_agent_in_pool", "no agent in pool 'corp'")
    ok = client.open("example.com")
    pair.run()
    assert answer(client, ok)[0] == 200
    assert [r.host for r in default.opened] == ["example.com"]


def test_an_unanswered_open_moves_only_within_its_pool() -> None:
    pair = Pair(Limits(open_retry_after=1.0, connect_timeout=5.0))
    client = pair.client()
    default = pair.agent()
    mute, spare = pair.agent(pool="corp"), pair.agent(pool="corp")
    mute.answers = spare.answers = False
    sid = client.open("intranet.corp.example", pool="corp")
    pair.run()
    first = mute if mute.opened else spare
    other = spare if first is mute else mute
    other.answers = True
    pair.advance(1.5)
    assert answer(client, sid)[0] == 200
    assert len(other.opened) == 1 and default.opened == []
    assert pair.switch.stats.open_retries == 1


def test_an_open_whose_agent_dies_moves_within_its_pool_or_fails() -> None:
    pair = Pair()
    client = pair.client()
    default = pair.agent()
    corp = pair.agent(pool="corp")
    corp.answers = False
    sid = client.open("intranet.corp.example", pool="corp")
    pair.run()
    pair.disconnect(corp)  # no other corp agent: the open cannot move
    pair.run()
    handle = client.ended[-1]
    assert handle.sid == sid and handle.response is None and handle.error
    assert default.opened == []


def test_the_number_of_pools_is_capped_at_the_upgrade() -> None:
    pair = Pair(Limits(max_pools=2))
    pair.agent(pool="corp")  # with "default", two pools
    assert pair.switch.admission("agent", 0, "corp") is None
    assert pair.switch.admission("agent", 0, DEFAULT_POOL) is None
    refusal = pair.switch.admission("agent", 0, "lab")
    assert refusal is not None
    status, message = refusal
    assert status == 503 and "at most 2 agent pools" in message and "'lab'" in message
    assert pair.switch.stats.limits["pools"] == 1
    # attach re-checks: a connection that raced past the upgrade is closed, not pooled.
    late = Conn("agent", _Sink(), _Sink(), pool="lab")
    assert not pair.switch.attach(late, pair.now)
    assert "lab" not in pair.switch.pools
    # Client connections never name pools at the upgrade: the cap is for agents.
    assert pair.switch.admission("client", 0, "lab") is None


class _Sink(Output):
    def __init__(self) -> None:
        self.closed: tuple[int, str] | None = None

    def write(self, frames: bytes | bytearray | memoryview) -> None:
        pass

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def ping(self) -> None:
        pass


def test_opens_are_counted_by_pool_and_result() -> None:
    pair = Pair()
    client = pair.client()
    pair.agent(pool="corp")
    for pool in ("corp", "corp", DEFAULT_POOL, "nowhere"):
        client.open(pool=pool)
    pair.run()
    results = pair.switch.stats.pool_results
    assert results["corp", "ok"] == 2
    assert results[DEFAULT_POOL, "no_agent"] == 1
    # A pool no agent joined is client_a's word only: it never becomes a label.
    assert results[UNKNOWN_POOL, "no_agent"] == 1
    assert "nowhere" not in {p for p, _ in results}
    assert set(pair.switch.pools) == {DEFAULT_POOL, "corp"}


def test_an_agent_leaving_keeps_its_pool_labelled() -> None:
    pair = Pair()
    client = pair.client()
    corp = pair.agent(pool="corp")
    pair.disconnect(corp)
    client.open(pool="corp")
    pair.run()
    assert pair.switch.pools["corp"] == []
    assert pair.switch.stats.pool_results["corp", "no_agent"] == 1


def test_an_agent_of_a_pool_hangs_up_on_a_relay_without_pools() -> None:
    pair = Pair()
    agent = Endpoint(pair, "agent", "agent-x", 0, DEFAULT_WINDOW, 0.0, pool="corp")
    agent.session.receive(memoryview(Hello("old-relay").encode()), pair.now)
    assert agent.session.hello is None
    assert agent.closed is not None and agent.closed[0] == CLOSE_POLICY_VIOLATION
    assert "does not support pools" in str(agent.errors[0]) and "'corp'" in str(agent.errors[0])
    # A relay that put it elsewhere is refused as well; one that confirms it is fine.
    other = Endpoint(pair, "agent", "agent-y", 0, DEFAULT_WINDOW, 0.0, pool="corp")
    other.session.receive(memoryview(Hello("relay-1", pool="lab").encode()), pair.now)
    assert other.session.hello is None and "pool 'lab'" in str(other.errors[0])
    fine = Endpoint(pair, "agent", "agent-z", 0, DEFAULT_WINDOW, 0.0, pool="corp")
    fine.session.receive(memoryview(Hello("relay-1", pool="corp").encode()), pair.now)
    assert fine.session.hello is not None and not fine.errors
    # The default pool works with any relay, old or new.
    plain = Endpoint(pair, "agent", "agent-w", 0, DEFAULT_WINDOW, 0.0)
    plain.session.receive(memoryview(Hello("old-relay").encode()), pair.now)
    assert plain.session.hello is not None


def test_a_malformed_pool_in_an_open_closes_that_client_only() -> None:
    pair = Pair()
    bad, good = pair.client(), pair.client()
    agent = pair.agent(pool="corp")
    payload = b'{"type":"CONNECT","sessionId":"s","method":"CONNECT","url":"https://a:443","pool":"Corp!"}'
    from fastrelay.protocol.frames import encode_frame

    bad.send(encode_frame(FrameType.CONNECT, bad.session.hello.stream_id_base + 1, payload))  # type: ignore[union-attr]
    assert bad.closed is not None and bad.closed[0] == 1002
    sid = good.open(pool="corp")
    pair.run()
    assert answer(good, sid)[0] == 200 and len(agent.opened) == 1


# --- the codec ---

POOL_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
pools = st.from_regex(POOL_RE, fullmatch=True)


@given(st.text(max_size=70))
def test_pool_names_are_exactly_the_documented_ones(name: str) -> None:
    assert (pool_error(name) is None) == bool(POOL_RE.fullmatch(name))


def _payload(frame: bytes) -> bytes:
    [(_kind, _flags, _sid, start, length)] = list(iter_frames(frame))
    return frame[start : start + length]


@given(pools)
def test_an_open_carries_its_pool(pool: str) -> None:
    url = "https://example.com:443"
    request = OpenStream(FrameType.CONNECT, "s", "example.com", 443, url=url, pool=pool)
    payload = _payload(request.encode(5))
    assert OpenStream.decode(FrameType.CONNECT, payload) == request
    # The default pool is not sent: an open reads the same to a relay without pools.
    assert (b'"pool"' in payload) == (pool != DEFAULT_POOL)


@given(pools)
def test_hello_carries_the_agent_pool(pool: str) -> None:
    hello = Hello("relay-1", pool=pool)
    assert Hello.decode(_payload(hello.encode())) == hello


@pytest.mark.parametrize("pool", ["", "Corp", "-corp", "_x", "a" * 65, "corp.example", "c p", 7])
def test_a_bad_pool_in_an_open_or_hello_is_malformed(pool: object) -> None:
    import orjson

    body = {"type": "CONNECT", "sessionId": "s", "method": "CONNECT", "url": "https://a:443"}
    with pytest.raises(ControlMessageError, match="pool"):
        OpenStream.decode(FrameType.CONNECT, orjson.dumps({**body, "pool": pool}))
    if pool != "":  # "" is "not announced" in HELLO
        hello = {"type": "HELLO", "version": 1, "instanceId": "r", "pool": pool}
        with pytest.raises(ControlMessageError, match="pool"):
            Hello.decode(orjson.dumps(hello))


# --- the property ---

POOLS = (DEFAULT_POOL, "corp", "lab")
AGENTS = 4
act = st.one_of(
    st.tuples(st.just("join"), st.integers(0, AGENTS - 1), st.sampled_from(POOLS)),
    st.tuples(st.just("leave"), st.integers(0, AGENTS - 1)),
    st.tuples(st.just("mute"), st.integers(0, AGENTS - 1)),
    st.tuples(st.just("open"), st.sampled_from((*POOLS, "nowhere"))),
    st.tuples(st.just("advance"), st.sampled_from([0.3, 1.2, 3.0])),
    st.tuples(st.just("finish"), st.integers(0, 50)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(act, max_size=40))
def test_opens_only_reach_agents_of_their_pool(actions: list[tuple]) -> None:
    pair = Pair(Limits(open_retry_after=1.0, connect_timeout=2.5, opens_per_agent=3))
    client = pair.client()
    agents: dict[int, Endpoint] = {}
    every: list[Endpoint] = []
    for step in actions:
        kind = step[0]
        if kind == "join" and step[1] not in agents:
            agents[step[1]] = pair.agent(pool=step[2])
            every.append(agents[step[1]])
        elif kind == "leave" and step[1] in agents:
            pair.disconnect(agents.pop(step[1]))
        elif kind == "mute" and step[1] in agents:
            agents[step[1]].answers = False
        elif kind == "open" and client.session.ready and not client.pool.full:
            pool = step[1]
            live = [a for a in agents.values() if a.conn.pool == pool]
            sid = client.open(f"host.{pool}", pool=pool)
            pair.run()
            if not live:
                # No agent in the pool: the 503 names it, at once, and nobody dialled.
                status, reason, error = answer(client, sid)
                assert status == 503
                if pool == DEFAULT_POOL and not agents:
                    assert (reason, error) == ("no_agent", "no agent connected")
                else:
                    assert (reason, error) == ("no_agent_in_pool", f"no agent in pool {pool!r}")
        elif kind == "advance":
            pair.advance(step[1])
        elif kind == "finish":
            live_sids = sorted(client.streams)
            if live_sids:
                client.abort(live_sids[step[1] % len(live_sids)])
                pair.run()
        # Whatever happened: every open any agent ever got named that agent's pool.
        for agent in every:
            assert all(r.pool == agent.conn.pool for r in agent.opened), agent
            assert all(r.host == f"host.{agent.conn.pool}" for r in agent.opened)
    assert not client.errors
