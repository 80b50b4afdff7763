"""The stream state machine: every (state, event) pair, and random event sequences."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastrelay.protocol.errors import IllegalTransition, ProtocolError, StreamError
from fastrelay.protocol.state import (
    ACCEPTS_DATA_DOWN,
    ACCEPTS_DATA_UP,
    TRANSITIONS,
    Event,
    State,
    StreamState,
    next_state,
)

S, E = State, Event
OPENING = (S.REQUEST, S.CONNECT_REQUEST)
ALL_PAIRS = list(itertools.product(State, Event))

# One legal way to reach every state from each opening state.
PATHS: dict[State, list[Event]] = {
    S.REQUEST: [],
    S.CONNECT_REQUEST: [],
    S.TUNNELING: [E.RESPONSE_OK],
    S.HALF_CLOSED_UP: [E.RESPONSE_OK, E.FIN_UP],
    S.HALF_CLOSED_DOWN: [E.RESPONSE_OK, E.FIN_DOWN],
    S.CLOSED: [E.RESPONSE_OK, E.ABORT],
}


def stream_in(state: State, opened_as: State = S.CONNECT_REQUEST) -> StreamState:
    """A StreamState brought to `state` through legal events only."""
    stream = StreamState(state if state in OPENING else opened_as)
    for event in PATHS[state]:
        stream.apply(event)
    assert stream.state is state
    return stream


def model(state: State, event: Event) -> State | None:
    """The rules written out independently of the table; None means illegal."""
    if state in OPENING:
        return {
            E.RESPONSE_OK: S.TUNNELING,
            E.RESPONSE_FAIL: S.CLOSED,
            E.TIMEOUT: S.CLOSED,
            E.ABORT: S.CLOSED,
        }.get(event)
    if state is S.CLOSED:
        return None
    up_open = state in (S.TUNNELING, S.HALF_CLOSED_DOWN)
    down_open = state in (S.TUNNELING, S.HALF_CLOSED_UP)
    if event is E.ABORT:
        return S.CLOSED
    if event in (E.WINDOW_UP, E.WINDOW_DOWN):
        return state
    if event is E.DATA_UP:
        return state if up_open else None
    if event is E.DATA_DOWN:
        return state if down_open else None
    if event is E.FIN_UP and up_open:
        return S.HALF_CLOSED_UP if down_open else S.CLOSED
    if event is E.FIN_DOWN and down_open:
        return S.HALF_CLOSED_DOWN if up_open else S.CLOSED
    return None  # FIN twice, RESPONSE_* or TIMEOUT after the open


def check_pair(state: State, event: Event) -> None:
    stream = stream_in(state)
    if (state, event) in TRANSITIONS:
        assert next_state(state, event) is TRANSITIONS[state, event]
        assert stream.apply(event) is TRANSITIONS[state, event]
        assert stream.state is TRANSITIONS[state, event]
    else:
        with pytest.raises(IllegalTransition) as info:
            next_state(state, event)
        assert (info.value.state, info.value.event) == (state.value, event.value)
        with pytest.raises(IllegalTransition):
            stream.apply(event)
        # A refused event leaves the stream where it was; the caller then aborts it.
        assert stream.state is state


@pytest.mark.parametrize(("state", "event"), ALL_PAIRS, ids=lambda x: x.value)
def test_every_pair(state: State, event: Event) -> None:
    check_pair(state, event)


@given(st.sampled_from(State), st.sampled_from(Event))
def test_every_pair_hypothesis(state: State, event: Event) -> None:
    check_pair(state, event)


def test_table_matches_the_written_rules() -> None:
    expected = {
        (state, event): target
        for state, event in ALL_PAIRS
        if (target := model(state, event)) is not None
    }
    assert expected == TRANSITIONS


def test_table_only_holds_states_and_events() -> None:
    for (state, event), target in TRANSITIONS.items():
        assert isinstance(state, State)
        assert isinstance(event, Event)
        assert isinstance(target, State)


def test_closed_has_no_way_out() -> None:
    assert not [pair for pair in TRANSITIONS if pair[0] is S.CLOSED]


@pytest.mark.parametrize("state", [s for s in State if s is not S.CLOSED], ids=lambda s: s.value)
def test_abort_closes_every_live_state(state: State) -> None:
    assert TRANSITIONS[state, E.ABORT] is S.CLOSED


@pytest.mark.parametrize("state", OPENING, ids=lambda s: s.value)
@pytest.mark.parametrize(
    "event",
    [E.DATA_UP, E.DATA_DOWN, E.FIN_UP, E.FIN_DOWN, E.WINDOW_UP, E.WINDOW_DOWN],
    ids=lambda e: e.value,
)
def test_no_stream_traffic_before_the_open_succeeds(state: State, event: Event) -> None:
    stream = StreamState(state)
    with pytest.raises(IllegalTransition):
        stream.apply(event)
    assert stream.state is state
    assert stream.opening


def test_accepts_data_sets_match_the_table() -> None:
    assert {s for s in State if TRANSITIONS.get((s, E.DATA_UP)) is s} == ACCEPTS_DATA_UP
    assert {s for s in State if TRANSITIONS.get((s, E.DATA_DOWN)) is s} == ACCEPTS_DATA_DOWN
    assert {S.TUNNELING, S.HALF_CLOSED_DOWN} == ACCEPTS_DATA_UP
    assert {S.TUNNELING, S.HALF_CLOSED_UP} == ACCEPTS_DATA_DOWN
    # Data never changes state, so the sets say everything the table says about data.
    for (state, event), target in TRANSITIONS.items():
        if event is E.DATA_UP:
            assert state in ACCEPTS_DATA_UP and target is state
        if event is E.DATA_DOWN:
            assert state in ACCEPTS_DATA_DOWN and target is state


@pytest.mark.parametrize(
    "state", [S.TUNNELING, S.HALF_CLOSED_UP, S.HALF_CLOSED_DOWN, S.CLOSED], ids=lambda s: s.value
)
def test_stream_must_start_opening(state: State) -> None:
    with pytest.raises(ValueError, match="REQUEST or CONNECT_REQUEST"):
        StreamState(state)


@pytest.mark.parametrize("initial", OPENING, ids=lambda s: s.value)
def test_a_whole_lifecycle(initial: State) -> None:
    stream = StreamState(initial)
    assert stream.opening and not stream.closed
    assert stream.apply(E.RESPONSE_OK) is S.TUNNELING
    for event in (E.DATA_UP, E.DATA_DOWN, E.WINDOW_UP, E.WINDOW_DOWN):
        assert stream.apply(event) is S.TUNNELING
    assert stream.apply(E.FIN_UP) is S.HALF_CLOSED_UP
    assert stream.apply(E.DATA_DOWN) is S.HALF_CLOSED_UP
    assert stream.apply(E.WINDOW_UP) is S.HALF_CLOSED_UP  # late credit for upstream bytes
    assert stream.apply(E.FIN_DOWN) is S.CLOSED
    assert stream.closed and not stream.opening


@pytest.mark.parametrize("event", [E.RESPONSE_FAIL, E.TIMEOUT, E.ABORT], ids=lambda e: e.value)
def test_failed_open_closes(event: Event) -> None:
    stream = StreamState(S.CONNECT_REQUEST)
    assert stream.apply(event) is S.CLOSED
    assert stream.closed


def test_illegal_transition_is_a_stream_error_not_a_protocol_error() -> None:
    error = IllegalTransition("TUNNELING", "TIMEOUT")
    assert isinstance(error, StreamError)
    assert not isinstance(error, ProtocolError)
    assert error.kind == "illegal_transition"
    assert str(error) == "TIMEOUT is not allowed in state TUNNELING"


@given(st.sampled_from(OPENING), st.lists(st.sampled_from(Event), max_size=40))
def test_random_sequences(initial: State, events: list[Event]) -> None:
    stream = StreamState(initial)
    fin_up = fin_down = False
    for event in events:
        before = stream.state
        try:
            after = stream.apply(event)
        except IllegalTransition:
            assert (before, event) not in TRANSITIONS
            assert stream.state is before
            continue
        assert after is TRANSITIONS[before, event] is stream.state
        # Once CLOSED, never anything else (CLOSED has no transitions at all).
        assert before is not S.CLOSED
        # No data in a direction after its FIN, and never before the open.
        if event is E.DATA_UP:
            assert not fin_up and before not in OPENING
        if event is E.DATA_DOWN:
            assert not fin_down and before not in OPENING
        fin_up |= event is E.FIN_UP
        fin_down |= event is E.FIN_DOWN
        assert stream.closed is (stream.state is S.CLOSED)
        if fin_up and fin_down:
            assert stream.closed
