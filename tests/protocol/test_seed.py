"""The seed dialect (fastrelay/protocol/seed.py) against a real switch and an
in-memory agent (fastrelay/protocol/pair.py): sessions, errors, flow control,
and Hypothesis properties over arbitrary message sequences."""

from __future__ import annotations

from collections import deque
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastrelay.protocol.errors import CLOSE_PROTOCOL_ERROR, BudgetExceeded
from fastrelay.protocol.output import Output
from fastrelay.protocol.pair import Pair
from fastrelay.protocol.seed import (
    OP_BINARY,
    OP_CONTINUATION,
    OP_TEXT,
    SeedConnection,
    SeedError,
)
from fastrelay.protocol.switch import Conn, Limits

SID = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
CLIENT_TYPES = {"CONNECT_RESPONSE", "TUNNEL_DATA", "TUNNEL_ERROR", "TUNNEL_CLOSE"}


class Rig(Output):
    """A seed connection attached to a real switch, with one in-memory agent.
    It is the machine's Sink and the switch's Output for the connection."""

    def __init__(
        self, window: int = 64 * 1024, agent_window: int = 1 << 20, limits: Limits | None = None
    ) -> None:
        self.pair = Pair(limits or Limits(connection_buffer=4 << 20))
        self.agent = self.pair.agent(want=agent_window)
        self.messages: list[Any] = []  # what Client A received: dicts and bytes
        self.deferred: deque[bytes] = deque()
        self.inside = False
        self.backed = False
        self.paused = False
        self.closed: tuple[int, str] | None = None
        self.machine = SeedConnection(
            self, window=window, budget=4 << 20, max_sessions=64, max_data=1 << 20
        )
        self.conn = Conn("client", self, self, 0, "seed")
        assert self.pair.switch.attach(self.conn, self.pair.now)
        self.machine.id_base = self.conn.id_base
        self.run()

    # switch.Output and Link
    def write(self, frames: bytes | bytearray | memoryview) -> None:
        self.inside = True
        try:
            self.machine.from_switch(memoryview(bytes(frames)))
        finally:
            self.inside = False

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def ping(self) -> None:
        pass

    # seed.Sink
    def to_switch(self, frames: bytes | bytearray) -> None:
        if self.inside:
            self.deferred.append(bytes(frames))
        else:
            self.pair.switch.receive(self.conn, memoryview(bytes(frames)), self.pair.now)

    def to_client(self, text: bytes) -> None:
        self.messages.append(orjson.loads(text))

    def to_client_data(self, header: bytes, data: memoryview) -> None:
        self.messages.append(orjson.loads(header))
        self.messages.append(bytes(data))

    def backed_up(self) -> bool:
        return self.backed

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    # driving
    def run(self) -> None:
        for _ in range(100):
            self.pair.run()
            if not self.deferred:
                return
            while self.deferred:
                frames = self.deferred.popleft()
                self.pair.switch.receive(self.conn, memoryview(frames), self.pair.now)

    def send(
        self, doc: dict[str, Any] | bytes, opcode: int | None = None, fin: bool = True
    ) -> None:
        if isinstance(doc, dict):
            payload, op = orjson.dumps(doc), OP_TEXT
        else:
            payload, op = doc, OP_BINARY
        self.machine.frame(op if opcode is None else opcode, memoryview(payload), fin)
        self.run()

    def connect(self, session_id: str = SID, port: int = 443) -> dict[str, Any]:
        self.send(
            {
                "type": "CONNECT",
                "sessionId": session_id,
                "method": "CONNECT",
                "url": f"https://example.com:{port}",
                "headers": {"Host": f"example.com:{port}"},
            }
        )
        return self.messages[-1] if self.messages else {}  # type: ignore[no-any-return]

    def data(self, data: bytes, session_id: str = SID) -> None:
        self.send({"type": "TUNNEL_DATA", "sessionId": session_id, "length": len(data)})
        self.send(data)

    def agent_stream(self) -> Any:
        (handle,) = self.agent.streams.values()
        return handle


def test_connect_is_answered_with_the_seeds_200() -> None:
    rig = Rig()
    assert rig.connect() == {
        "type": "CONNECT_RESPONSE",
        "sessionId": SID,
        "statusCode": 200,
        "statusDescription": "Connection Established",
    }
    assert rig.machine.sessions[SID].state.state.value == "TUNNELING"
    assert rig.agent_stream().session_id == SID


def test_bytes_flow_both_ways_as_header_then_binary() -> None:
    rig = Rig()
    rig.connect()
    rig.data(b"hello agent")
    assert rig.agent_stream().received == len(b"hello agent")
    rig.messages.clear()
    sid = next(iter(rig.agent.streams))
    assert rig.agent.write(sid, 5000) == 5000
    rig.run()
    headers = [m for m in rig.messages if isinstance(m, dict)]
    blobs = [m for m in rig.messages if isinstance(m, bytes)]
    assert sum(h["length"] for h in headers) == sum(map(len, blobs)) == 5000
    for i in range(0, len(rig.messages), 2):  # each header, then its binary message
        assert rig.messages[i] == {
            "type": "TUNNEL_DATA",
            "sessionId": SID,
            "length": len(rig.messages[i + 1]),
        }


def test_close_both_ways_reaches_closed_and_forgets_the_session() -> None:
    rig = Rig()
    rig.connect()
    rig.send({"type": "TUNNEL_CLOSE", "sessionId": SID})
    assert rig.agent_stream().socket.eof
    sid = next(iter(rig.agent.streams))
    rig.agent.fin(sid)
    rig.run()
    assert rig.messages[-1] == {"type": "TUNNEL_CLOSE", "sessionId": SID}
    assert rig.machine.sessions == {}
    assert rig.conn.streams == {}


def test_refused_target_gets_the_seeds_502() -> None:
    rig = Rig()
    rig.agent.refuse_with = 502
    answer = rig.connect()
    assert answer["type"] == "CONNECT_RESPONSE" and answer["statusCode"] == 502
    assert answer["error"].startswith("Connection to target server failed: ")
    assert "statusDescription" not in answer
    assert rig.machine.sessions == {}


def test_no_answer_in_10_s_is_the_seeds_connection_timeout() -> None:
    rig = Rig()
    rig.agent.answers = False
    rig.connect()
    assert rig.messages == []
    rig.pair.advance(9.5)
    rig.run()
    assert rig.messages == []
    rig.pair.advance(0.6)
    rig.run()
    assert rig.messages == [
        {
            "type": "CONNECT_RESPONSE",
            "sessionId": SID,
            "statusCode": 504,
            "error": "Connection to target server failed: connection timeout",
        }
    ]
    assert rig.machine.sessions == {}


def test_no_agent_is_503_from_the_failure_table() -> None:
    rig = Rig()
    rig.pair.disconnect(rig.agent)
    rig.run()
    answer = rig.connect()
    assert answer["statusCode"] == 503
    assert answer["error"].startswith("Connection failed: no agent")


def test_agent_lost_mid_tunnel_is_tunnel_error_connection_lost() -> None:
    rig = Rig()
    rig.connect()
    rig.pair.disconnect(rig.agent)
    rig.run()
    assert rig.messages[-1]["type"] == "TUNNEL_ERROR"
    assert rig.messages[-1]["sessionId"] == SID
    assert rig.messages[-1]["error"].startswith("Connection lost")
    assert rig.machine.sessions == {}


def test_agent_aborts_mid_tunnel_is_tunnel_error() -> None:
    rig = Rig()
    rig.connect()
    sid = next(iter(rig.agent.streams))
    rig.agent.abort(sid, "target reset the connection")
    rig.run()
    assert rig.messages[-1] == {
        "type": "TUNNEL_ERROR",
        "sessionId": SID,
        "error": "Connection lost: target reset the connection",
    }


def test_client_tunnel_error_aborts_only_that_session() -> None:
    rig = Rig()
    rig.connect("a")
    rig.connect("b")
    rig.send({"type": "TUNNEL_ERROR", "sessionId": "a", "error": "browser went away"})
    assert set(rig.machine.sessions) == {"b"}
    assert [h.error for h in rig.agent.ended] == ["browser went away"]
    rig.data(b"still here", "b")
    assert rig.messages[-1] != {"type": "TUNNEL_ERROR"}
    assert any(h.received == 10 for h in rig.agent.streams.values())


def test_duplicate_session_id_is_refused_and_the_first_goes_on() -> None:
    rig = Rig()
    rig.connect()
    answer = rig.connect()
    assert answer["statusCode"] == 400
    assert answer["error"] == f"sessionId {SID!r} is already open"
    rig.data(b"xy")
    assert rig.agent_stream().received == 2


def test_data_for_an_unknown_session_is_answered_and_dropped() -> None:
    rig = Rig()
    rig.data(b"abc", "nobody")
    assert rig.messages == [
        {"type": "TUNNEL_ERROR", "sessionId": "nobody", "error": "unknown session"}
    ]
    assert rig.machine.stats.unknown_session == 1


def test_data_before_the_200_aborts_that_session() -> None:
    rig = Rig()
    rig.agent.answers = False
    rig.connect()
    rig.data(b"too early")
    assert rig.messages[-1] == {
        "type": "TUNNEL_ERROR",
        "sessionId": SID,
        "error": "TUNNEL_DATA is not allowed in state CONNECT_REQUEST",
    }
    assert rig.conn.streams == {}  # the switch forgot the stream too


@pytest.mark.parametrize(
    ("bad", "refusal"),
    [
        ({"method": "GET"}, "method 'GET': the seed dialect carries CONNECT only"),
        ({"url": "ftp://example.com:21"}, "url 'ftp://example.com:21' is not http(s)"),
        ({"url": 443}, "CONNECT 'url' must be a string"),
        ({"headers": {"Host": 1}}, "CONNECT 'headers' must map strings to strings"),
        ({"url": None}, "CONNECT is missing 'url'"),
    ],
)
def test_a_bad_connect_is_refused_with_400(bad: dict[str, Any], refusal: str) -> None:
    rig = Rig()
    doc = {"type": "CONNECT", "sessionId": SID, "method": "CONNECT", "url": "https://a.test"}
    doc.update(bad)
    rig.send({k: v for k, v in doc.items() if v is not None})
    assert rig.messages[-1]["statusCode"] == 400
    assert refusal in rig.messages[-1]["error"]
    assert rig.machine.sessions == {}


MALFORMED = [
    ([b"not json"], "text message is not JSON"),
    ([b"[1,2]"], "text message must be a JSON object"),
    ([b'{"sessionId":"a"}'], "message has no string 'type'"),
    ([b'{"type":"HELLO","sessionId":"a"}'], "unknown message type 'HELLO'"),
    (
        [b'{"type":"CONNECT_RESPONSE","sessionId":"a","statusCode":200}'],
        "Client A does not send it",
    ),
    ([b'{"type":"TUNNEL_DATA","length":3}'], "TUNNEL_DATA is missing 'sessionId'"),
    ([b'{"type":"TUNNEL_DATA","sessionId":7,"length":3}'], "'sessionId' must be a string"),
    ([b'{"type":"TUNNEL_DATA","sessionId":"a","length":"3"}'], "'length' must be an integer"),
    ([b'{"type":"TUNNEL_DATA","sessionId":"a","length":true}'], "'length' must be an integer"),
    ([b'{"type":"TUNNEL_DATA","sessionId":"a","length":-1}'], "length -1 is outside 0..1048576"),
    ([b'{"type":"TUNNEL_DATA","sessionId":"a","length":1048577}'], "is outside 0..1048576"),
    ([b'{"type":"TUNNEL_DATA","sessionId":"","length":1}'], "'sessionId' must be 1..256"),
    ([bytes(3)], "binary message without a TUNNEL_DATA header"),
    ([b'{"type":"TUNNEL_DATA","sessionId":"a","length":3}', bytes(2)], "announced 3"),
    ([b'{"type":"TUNNEL_DATA","sessionId":"a","length":3}', bytes(4)], "longer than the 3 bytes"),
    (
        [
            b'{"type":"TUNNEL_DATA","sessionId":"a","length":3}',
            b'{"type":"TUNNEL_CLOSE","sessionId":"a"}',
        ],
        "must be followed by its binary message, not a text message",
    ),
    (
        [b'{"type":"TUNNEL_DATA","sessionId":"a","length":1}', bytes(1), bytes(1)],
        "without a TUNNEL_DATA header",
    ),
]


@pytest.mark.parametrize(("messages", "reason"), MALFORMED)
def test_malformed_messages_raise_a_precise_seed_error(messages: list[bytes], reason: str) -> None:
    rig = Rig()
    with pytest.raises(SeedError, match=None) as caught:
        for message in messages:
            op = OP_BINARY if not message.startswith((b"{", b"[", b"n")) else OP_TEXT
            rig.machine.frame(op, memoryview(message), True)
    assert reason in str(caught.value)
    assert caught.value.close_code == CLOSE_PROTOCOL_ERROR


def test_fragmented_binary_message_streams_and_checks_its_length() -> None:
    rig = Rig()
    rig.connect()
    rig.send({"type": "TUNNEL_DATA", "sessionId": SID, "length": 6})
    rig.send(b"abc", fin=False)
    rig.send(b"def", opcode=OP_CONTINUATION, fin=True)
    assert rig.agent_stream().received == 6
    rig.send({"type": "TUNNEL_DATA", "sessionId": SID, "length": 2})
    rig.send(b"a", fin=False)
    with pytest.raises(SeedError, match="announced 2"):
        rig.send(b"", opcode=OP_CONTINUATION, fin=True)


def test_a_new_message_inside_a_fragmented_one_is_malformed() -> None:
    rig = Rig()
    rig.connect()
    rig.send({"type": "TUNNEL_DATA", "sessionId": SID, "length": 4})
    rig.send(b"ab", fin=False)
    with pytest.raises(SeedError, match="a new binary message before the previous one ended"):
        rig.send(b"cd")
    rig = Rig()
    rig.machine.frame(OP_TEXT, memoryview(b'{"type":'), False)
    with pytest.raises(SeedError, match="a new text message before the previous one ended"):
        rig.machine.frame(OP_TEXT, memoryview(b"{}"), True)
    with pytest.raises(SeedError, match="continuation frame with no message in progress"):
        Rig().machine.frame(OP_CONTINUATION, memoryview(b"x"), True)


def test_fragmented_text_message_is_reassembled() -> None:
    rig = Rig()
    text = orjson.dumps(
        {"type": "CONNECT", "sessionId": SID, "method": "CONNECT", "url": "https://a.test"}
    )
    rig.machine.frame(OP_TEXT, memoryview(text[:10]), False)
    rig.machine.frame(OP_CONTINUATION, memoryview(text[10:]), True)
    rig.run()
    assert rig.messages[-1]["statusCode"] == 200


def test_upstream_past_the_agents_credit_is_held_then_reading_pauses() -> None:
    rig = Rig(window=64 * 1024, agent_window=16 * 1024)
    rig.connect()
    rig.agent.reading = False  # the agent reads nothing: no credit comes back
    rig.data(bytes(40 * 1024))
    session = rig.machine.sessions[SID]
    assert session.held_bytes == 24 * 1024 and not rig.paused
    rig.data(bytes(40 * 1024))
    assert session.held_bytes == 64 * 1024 and rig.paused
    assert rig.machine.stats.read_pauses == 1
    rig.agent.reading = True
    for _ in range(20):
        rig.run()
        if not session.held_bytes:
            break
    assert session.held_bytes == 0 and not rig.paused
    assert rig.agent_stream().received == 80 * 1024


def test_credit_is_returned_only_while_client_a_keeps_up() -> None:
    rig = Rig(window=32 * 1024)
    rig.connect()
    sid = next(iter(rig.agent.streams))
    rig.backed = True  # the seed WebSocket's write buffer is above its high mark
    sent = 0
    for _ in range(10):
        sent += rig.agent.write(sid, 16 * 1024)
        rig.run()
    assert sent == 32 * 1024  # the window, and not a byte more
    rig.backed = False
    rig.machine.drained()
    rig.run()
    assert rig.agent.write(sid, 16 * 1024) == 16 * 1024


# --- properties ---

SESSIONS = st.sampled_from(["a", "b", "c"])
TEXTS = st.one_of(
    st.builds(
        lambda s, port: {
            "type": "CONNECT",
            "sessionId": s,
            "method": "CONNECT",
            "url": f"https://t.test:{port}",
        },
        SESSIONS,
        st.integers(0, 70000),
    ),
    st.builds(
        lambda s, n: {"type": "TUNNEL_DATA", "sessionId": s, "length": n},
        SESSIONS,
        st.integers(-1, 40),
    ),
    st.builds(lambda s: {"type": "TUNNEL_CLOSE", "sessionId": s}, SESSIONS),
    st.builds(lambda s: {"type": "TUNNEL_ERROR", "sessionId": s, "error": "x"}, SESSIONS),
    st.sampled_from([{"type": "NOPE", "sessionId": "a"}, {"type": "CONNECT"}, [], "str"]),
)
STEP = st.one_of(
    st.tuples(st.just("text"), TEXTS),
    st.tuples(st.just("binary"), st.binary(max_size=40)),
    st.tuples(st.just("agent"), st.sampled_from(["data", "fin", "abort", "refuse"])),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(STEP, max_size=30))
def test_any_sequence_gives_valid_messages_or_a_seed_error(steps: list[tuple[str, Any]]) -> None:
    rig = Rig()
    pending: int | None = None  # the model: the length a binary message must have
    for kind, value in steps:
        try:
            if kind == "text":
                rig.send(value if isinstance(value, dict) else orjson.dumps(value), opcode=OP_TEXT)  # type: ignore[arg-type]
                if (
                    isinstance(value, dict)
                    and value.get("type") == "TUNNEL_DATA"
                    and 0 <= value["length"] <= 1 << 20
                ):
                    pending = value["length"]
                assert pending is None or value.get("type") == "TUNNEL_DATA"  # type: ignore[union-attr]
            elif kind == "binary":
                rig.send(value)
                # Accepted: it must have been exactly the announced length.
                assert pending == len(value)
                pending = None
            else:
                streams = list(rig.agent.streams)
                if streams:
                    sid = streams[0]
                    if value == "data":
                        rig.agent.write(sid, 100)
                    elif (
                        value == "fin"
                        and rig.agent.streams[sid].stream.state.state.value == "TUNNELING"
                    ):
                        rig.agent.fin(sid)
                    elif value == "abort":
                        rig.agent.abort(sid, "boom")
                    rig.run()
        except SeedError:
            # Only for a broken pairing or a message the dialect cannot carry on from.
            return
    # Every message to Client A is a known type; each TUNNEL_DATA header is
    # followed by one binary message of its length.
    messages = list(rig.messages)
    while messages:
        message = messages.pop(0)
        assert isinstance(message, dict) and message["type"] in CLIENT_TYPES
        if message["type"] == "TUNNEL_DATA":
            assert len(messages[0]) == message["length"]
            messages.pop(0)
    # The machine and the switch agree on what is open.
    assert {s.sid for s in rig.machine.sessions.values()} == set(rig.conn.streams)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 20), st.integers(0, 20)), max_size=12))
def test_a_binary_message_is_accepted_only_after_a_header_of_its_length(
    pairs: list[tuple[bool, int, int]],
) -> None:
    """Header (when `with_header`) announcing `announced`, then `actual` bytes:
    accepted iff there was a header and the lengths match."""
    rig = Rig()
    rig.connect()
    for with_header, announced, actual in pairs:
        ok = with_header and announced == actual
        try:
            if with_header:
                rig.send({"type": "TUNNEL_DATA", "sessionId": SID, "length": announced})
            rig.send(bytes(actual))
        except SeedError:
            assert not ok
            return
        assert ok


def test_a_client_that_keeps_sending_while_paused_is_cut_off_at_the_budget() -> None:
    rig = Rig(window=64 * 1024, agent_window=16 * 1024)
    rig.connect()
    rig.agent.reading = False
    with pytest.raises(BudgetExceeded, match="over the relay's budget of 4194304") as caught:
        for _ in range(100):  # the rig ignores the pause: a client the relay cannot stop
            rig.data(bytes(64 * 1024))
    assert rig.paused
    assert caught.value.close_code == 1008
    assert rig.machine.held_total > 4 << 20
