"""The stream state machine, as one transition table.

Every endpoint (client_a, relay, agent) keeps one `StreamState` per stream and
feeds it every frame it sends or receives for that stream. Directions are named
from the tunnel's point of view, not the endpoint's: *upstream* is client_a to
agent (browser to target), *downstream* is agent to client_a.

    REQUEST ------------.                      (plain-HTTP request opened)
    CONNECT_REQUEST ----+-- RESPONSE_OK --> TUNNELING
                        `-- RESPONSE_FAIL / ABORT / TIMEOUT --> CLOSED
    TUNNELING --FIN_UP--> HALF_CLOSED_UP --FIN_DOWN--> CLOSED
    TUNNELING --FIN_DOWN--> HALF_CLOSED_DOWN --FIN_UP--> CLOSED
    any open state --ABORT--> CLOSED

A (state, event) pair that is not in the table is a protocol violation for
that stream only: the caller aborts the stream with TUNNEL_ERROR. Data may not
flow before the open succeeded, nor in a direction after its FIN.
"""

from __future__ import annotations

from enum import Enum

from fastrelay.protocol.errors import IllegalTransition


class State(Enum):
    # Members are singletons compared by identity; hashing by identity makes
    # set and dict look-ups on the data path ~3x cheaper than Enum's name hash.
    __hash__ = object.__hash__

    REQUEST = "REQUEST"  # a plain-HTTP REQUEST sent, no CONNECT_RESPONSE yet
    CONNECT_REQUEST = "CONNECT_REQUEST"  # a CONNECT sent, no CONNECT_RESPONSE yet
    TUNNELING = "TUNNELING"  # bytes flow both ways
    HALF_CLOSED_UP = "HALF_CLOSED_UP"  # upstream ended (FIN from client_a)
    HALF_CLOSED_DOWN = "HALF_CLOSED_DOWN"  # downstream ended (FIN from agent)
    CLOSED = "CLOSED"


class Event(Enum):
    __hash__ = object.__hash__

    RESPONSE_OK = "RESPONSE_OK"  # CONNECT_RESPONSE with statusCode 200
    RESPONSE_FAIL = "RESPONSE_FAIL"  # CONNECT_RESPONSE with any other status
    DATA_UP = "DATA_UP"
    DATA_DOWN = "DATA_DOWN"
    FIN_UP = "FIN_UP"
    FIN_DOWN = "FIN_DOWN"
    WINDOW_UP = "WINDOW_UP"  # credit for upstream data (sent by the agent side)
    WINDOW_DOWN = "WINDOW_DOWN"  # credit for downstream data (sent by client_a)
    ABORT = "ABORT"  # TUNNEL_ERROR, either way
    TIMEOUT = "TIMEOUT"  # no CONNECT_RESPONSE within the connect timeout


S, E = State, Event
_OPENING = (S.REQUEST, S.CONNECT_REQUEST)
_CLOSED = S.CLOSED  # `S.CLOSED` in a function costs EnumType.__getattr__'s hook on 3.11
_OPEN = (S.TUNNELING, S.HALF_CLOSED_UP, S.HALF_CLOSED_DOWN)

TRANSITIONS: dict[tuple[State, Event], State] = {}
for _s in _OPENING:
    TRANSITIONS[_s, E.RESPONSE_OK] = S.TUNNELING
    TRANSITIONS[_s, E.RESPONSE_FAIL] = S.CLOSED
    TRANSITIONS[_s, E.TIMEOUT] = S.CLOSED
    TRANSITIONS[_s, E.ABORT] = S.CLOSED
for _s in _OPEN:
    TRANSITIONS[_s, E.ABORT] = S.CLOSED
    # Credit may still travel for whichever direction is open; it never changes state.
    TRANSITIONS[_s, E.WINDOW_UP] = _s
    TRANSITIONS[_s, E.WINDOW_DOWN] = _s
TRANSITIONS.update(
    {
        (S.TUNNELING, E.DATA_UP): S.TUNNELING,
        (S.TUNNELING, E.DATA_DOWN): S.TUNNELING,
        (S.TUNNELING, E.FIN_UP): S.HALF_CLOSED_UP,
        (S.TUNNELING, E.FIN_DOWN): S.HALF_CLOSED_DOWN,
        (S.HALF_CLOSED_UP, E.DATA_DOWN): S.HALF_CLOSED_UP,
        (S.HALF_CLOSED_UP, E.FIN_DOWN): S.CLOSED,
        (S.HALF_CLOSED_DOWN, E.DATA_UP): S.HALF_CLOSED_DOWN,
        (S.HALF_CLOSED_DOWN, E.FIN_UP): S.CLOSED,
    }
)
del _s

# Per-state sets of events that leave the state unchanged, for the data path:
# one frozenset membership test instead of a tuple build and a dict look-up.
ACCEPTS_DATA_UP = frozenset(s for s in State if TRANSITIONS.get((s, E.DATA_UP)) is s)
ACCEPTS_DATA_DOWN = frozenset(s for s in State if TRANSITIONS.get((s, E.DATA_DOWN)) is s)


def next_state(state: State, event: Event) -> State:
    """The state after `event`, or IllegalTransition if the table has no such pair."""
    try:
        return TRANSITIONS[state, event]
    except KeyError:
        raise IllegalTransition(state.value, event.value) from None


class StreamState:
    """One stream's state, advanced only through the table."""

    __slots__ = ("state",)

    def __init__(self, initial: State) -> None:
        if initial not in _OPENING:
            raise ValueError(f"a stream starts in REQUEST or CONNECT_REQUEST, not {initial}")
        self.state = initial

    def apply(self, event: Event) -> State:
        self.state = next_state(self.state, event)
        return self.state

    @property
    def closed(self) -> bool:
        return self.state is _CLOSED

    @property
    def opening(self) -> bool:
        return self.state in _OPENING
