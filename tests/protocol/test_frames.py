"""The frame codec and the control messages: round trips and every error path."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastrelay.protocol.errors import CLOSE_PROTOCOL_ERROR, ControlMessageError, FrameError
from fastrelay.protocol.frames import (
    CONNECTION_FRAMES,
    HEADER,
    HEADER_SIZE,
    MAX_PAYLOAD,
    OPEN_FRAMES,
    FrameType,
    check_header,
    decode_window_increment,
    encode_frame,
    encode_header,
    encode_window_update,
    iter_frames,
)
from fastrelay.protocol.messages import (
    DEFAULT_WINDOW,
    PROTOCOL_VERSION,
    ConnectResponse,
    GoAway,
    Hello,
    Members,
    OpenStream,
    TunnelError,
    format_authority,
    split_authority,
    split_url,
)
from fastrelay.protocol.status import PHRASES

U32 = 2**32 - 1
MAX_WINDOW = 2**31 - 1
STREAM_TYPES = [t for t in FrameType if t not in CONNECTION_FRAMES]

# --------------------------------------------------------------------------- strategies

stream_ids = st.integers(min_value=1, max_value=U32)
flags = st.integers(min_value=0, max_value=255)
texts = st.text(max_size=40)
windows = st.integers(min_value=1, max_value=MAX_WINDOW)
hostnames = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z]{2,6}){0,2}", fullmatch=True)
ipv6_hosts = st.ip_addresses(v=6).map(str)
hosts = st.one_of(hostnames, ipv6_hosts)
ports = st.integers(min_value=1, max_value=65535)


@st.composite
def frames(draw: st.DrawFn) -> tuple[int, int, int, bytes]:
    """(type, flags, stream id, payload) for any well-formed frame."""
    frame_type = draw(st.sampled_from(FrameType))
    stream_id = 0 if frame_type in CONNECTION_FRAMES else draw(stream_ids)
    if frame_type is FrameType.FIN:
        payload = b""
    elif frame_type is FrameType.WINDOW_UPDATE:
        payload = draw(st.integers(min_value=1, max_value=U32)).to_bytes(4, "big")
    elif frame_type is FrameType.PROBE:
        payload = draw(st.binary(min_size=8, max_size=8) | st.binary(min_size=16, max_size=16))
    else:
        payload = draw(st.binary(max_size=300))
    return int(frame_type), draw(flags), stream_id, payload


def decode_all(message: bytes | bytearray) -> list[tuple[int, int, int, bytes]]:
    view = memoryview(message)
    return [
        (frame_type, frame_flags, stream_id, bytes(view[offset : offset + length]))
        for frame_type, frame_flags, stream_id, offset, length in iter_frames(view)
    ]


def only_frame(data: bytes) -> memoryview:
    """The payload view of a message that holds exactly one frame."""
    view = memoryview(data)
    ((_, _, _, offset, length),) = iter_frames(view)
    return view[offset : offset + length]


# --------------------------------------------------------------------------- frame codec


def test_header_layout_is_10_bytes_big_endian() -> None:
    assert HEADER_SIZE == HEADER.size == 10
    data = encode_frame(FrameType.TUNNEL_DATA, 0x01020304, b"xyz", flags=0xAB)
    assert data == bytes.fromhex("04ab0102030400000003") + b"xyz"
    assert encode_header(FrameType.FIN, 7, 0) == bytes.fromhex("05000000000700000000")


def test_frame_type_codes_are_stable() -> None:
    assert {t.name: int(t) for t in FrameType} == {
        "CONNECT": 0x01,
        "REQUEST": 0x02,
        "CONNECT_RESPONSE": 0x03,
        "TUNNEL_DATA": 0x04,
        "FIN": 0x05,
        "TUNNEL_ERROR": 0x06,
        "WINDOW_UPDATE": 0x07,
        "HELLO": 0x08,
        "GOAWAY": 0x09,
        "MEMBERS": 0x0A,
        "RULES": 0x0B,
        "PROBE": 0x0C,
    }
    assert {
        FrameType.HELLO,
        FrameType.GOAWAY,
        FrameType.MEMBERS,
        FrameType.RULES,
        FrameType.PROBE,
    } == CONNECTION_FRAMES
    assert {FrameType.CONNECT, FrameType.REQUEST} == OPEN_FRAMES


@given(frames())
def test_frame_round_trip(frame: tuple[int, int, int, bytes]) -> None:
    frame_type, frame_flags, stream_id, payload = frame
    data = encode_frame(frame_type, stream_id, payload, flags=frame_flags)
    assert len(data) == HEADER_SIZE + len(payload)
    assert data == encode_header(frame_type, stream_id, len(payload), frame_flags) + payload
    assert decode_all(data) == [frame]


@given(st.lists(frames(), max_size=8))
def test_several_frames_in_one_message(batch: list[tuple[int, int, int, bytes]]) -> None:
    message = b"".join(encode_frame(t, s, p, flags=f) for t, f, s, p in batch)
    assert decode_all(message) == batch


@given(st.integers(min_value=1, max_value=U32), stream_ids)
def test_window_update_round_trip(increment: int, stream_id: int) -> None:
    data = encode_window_update(stream_id, increment)
    assert data == encode_frame(FrameType.WINDOW_UPDATE, stream_id, increment.to_bytes(4, "big"))
    assert decode_window_increment(only_frame(data)) == increment


def test_window_update_zero_increment_is_malformed() -> None:
    with pytest.raises(FrameError, match="zero increment"):
        decode_window_increment(only_frame(encode_window_update(3, 0)))


def test_empty_message_has_no_frames() -> None:
    assert list(iter_frames(memoryview(b""))) == []


def test_iter_frames_offsets_index_the_original_buffer_without_copies() -> None:
    buf = bytearray(
        encode_frame(FrameType.TUNNEL_DATA, 1, b"first")
        + encode_window_update(1, 99)
        + encode_frame(FrameType.TUNNEL_DATA, 2, b"second")
    )
    view = memoryview(buf)
    found = list(iter_frames(view))
    assert [(off, n) for _, _, _, off, n in found] == [(10, 5), (25, 4), (39, 6)]
    payloads = [view[off : off + n] for _, _, _, off, n in found]
    assert [bytes(p) for p in payloads] == [b"first", (99).to_bytes(4, "big"), b"second"]
    for payload in payloads:
        assert payload.obj is buf  # a view into the message, not a copy
    # Writing through the original buffer shows up in the payload views.
    buf[10:15] = b"FIRST"
    buf[39:45] = b"SECOND"
    assert bytes(payloads[0]) == b"FIRST"
    assert bytes(payloads[2]) == b"SECOND"


def test_frames_before_a_malformed_one_are_yielded_first() -> None:
    message = encode_frame(FrameType.TUNNEL_DATA, 1, b"ok") + bytes.fromhex("7f00000000010000")
    frames_iter = iter_frames(memoryview(message))
    assert next(frames_iter)[:3] == (FrameType.TUNNEL_DATA, 0, 1)
    with pytest.raises(FrameError, match="truncated header"):
        next(frames_iter)


@pytest.mark.parametrize("size", range(1, HEADER_SIZE))
def test_truncated_header(size: int) -> None:
    message = encode_frame(FrameType.FIN, 1)[:size]
    with pytest.raises(FrameError, match="truncated header") as info:
        list(iter_frames(memoryview(message)))
    assert info.value.close_code == CLOSE_PROTOCOL_ERROR


@given(st.binary(min_size=0, max_size=40), st.integers(min_value=1, max_value=1000))
def test_length_beyond_message(payload: bytes, extra: int) -> None:
    message = encode_header(FrameType.TUNNEL_DATA, 1, len(payload) + extra) + payload
    with pytest.raises(FrameError, match="truncated frame"):
        list(iter_frames(memoryview(message)))


# check_header(type, stream id, length, available)
VALID_HEADERS = [
    (FrameType.TUNNEL_DATA, 1, 0, 0),
    (FrameType.TUNNEL_DATA, U32, MAX_PAYLOAD, MAX_PAYLOAD),
    (FrameType.FIN, 7, 0, 100),
    (FrameType.WINDOW_UPDATE, 3, 4, 4),
    (FrameType.HELLO, 0, 10, 10),
    (FrameType.GOAWAY, 0, 0, 0),
    (FrameType.CONNECT, 1, 5, 6),
    (FrameType.PROBE, 0, 8, 8),
    (FrameType.PROBE, 0, 16, 20),
]
BAD_HEADERS = [
    (0x00, 1, 0, 0, "unknown frame type 0x00"),
    (0x0D, 1, 0, 0, "unknown frame type 0x0d"),
    (FrameType.PROBE, 1, 8, 8, "PROBE frame with stream id 1"),
    (FrameType.PROBE, 0, 0, 0, "PROBE payload must be 8 or 16 bytes, got 0"),
    (FrameType.PROBE, 0, 12, 12, "PROBE payload must be 8 or 16 bytes, got 12"),
    (FrameType.RULES, 1, 0, 0, "RULES frame with stream id 1"),
    (0x7F, 1, 0, 0, "unknown frame type 0x7f"),
    (0xFF, 0, 0, 0, "unknown frame type 0xff"),
    (FrameType.TUNNEL_DATA, 1, 3, 2, "truncated frame"),
    (FrameType.TUNNEL_DATA, 1, MAX_PAYLOAD + 1, MAX_PAYLOAD + 1, "exceeds"),
    (FrameType.HELLO, 1, 0, 0, "HELLO frame with stream id 1"),
    (FrameType.GOAWAY, U32, 0, 0, "GOAWAY frame with stream id"),
    *[(t, 0, 0, 0, f"{t.name} frame with stream id 0") for t in STREAM_TYPES if t != FrameType.FIN],
    (FrameType.FIN, 0, 0, 0, "FIN frame with stream id 0"),
    (FrameType.WINDOW_UPDATE, 3, 0, 0, "must be 4 bytes, got 0"),
    (FrameType.WINDOW_UPDATE, 3, 3, 3, "must be 4 bytes, got 3"),
    (FrameType.WINDOW_UPDATE, 3, 5, 5, "must be 4 bytes, got 5"),
    (FrameType.FIN, 7, 1, 1, "FIN payload must be empty"),
]


@pytest.mark.parametrize(("frame_type", "stream_id", "length", "available"), VALID_HEADERS)
def test_check_header_accepts(frame_type: int, stream_id: int, length: int, available: int) -> None:
    check_header(frame_type, stream_id, length, available)


@pytest.mark.parametrize(("frame_type", "stream_id", "length", "available", "reason"), BAD_HEADERS)
def test_check_header_rejects(
    frame_type: int, stream_id: int, length: int, available: int, reason: str
) -> None:
    with pytest.raises(FrameError, match=reason) as info:
        check_header(frame_type, stream_id, length, available)
    assert info.value.close_code == CLOSE_PROTOCOL_ERROR
    assert info.value.kind == "malformed_frame"


# --------------------------------------------------------------------------- control messages

open_streams = st.builds(
    lambda kind, sid, host, port, method, headers, window: OpenStream(
        kind=kind,
        session_id=sid,
        host=host,
        port=port,
        method=method,
        url=f"{'https' if kind is FrameType.CONNECT else 'http'}://{format_authority(host, port)}",
        headers=headers,
        window=window,
    ),
    st.sampled_from(sorted(OPEN_FRAMES)),
    texts,
    hosts,
    ports,
    st.sampled_from(["CONNECT", "GET", "POST", "DELETE"]),
    st.dictionaries(texts, texts, max_size=4),
    windows,
)


@given(open_streams, stream_ids)
def test_open_stream_round_trip(message: OpenStream, stream_id: int) -> None:
    data = message.encode(stream_id)
    ((frame_type, _, sid, offset, length),) = iter_frames(memoryview(data))
    assert (frame_type, sid) == (message.kind, stream_id)
    decoded = OpenStream.decode(message.kind, memoryview(data)[offset : offset + length])
    assert decoded == message


def test_open_stream_without_url_encodes_https_authority() -> None:
    plain = OpenStream(FrameType.CONNECT, "s", "example.com", 443)
    assert orjson.loads(only_frame(plain.encode(1)))["url"] == "https://example.com:443"
    v6 = OpenStream(FrameType.CONNECT, "s", "2001:db8::1", 8443)
    decoded = OpenStream.decode(FrameType.CONNECT, only_frame(v6.encode(1)))
    assert decoded.url == "https://[2001:db8::1]:8443"
    assert (decoded.host, decoded.port) == ("2001:db8::1", 8443)


@given(
    texts,
    st.integers(min_value=100, max_value=599),
    st.none() | texts,
    windows,
    stream_ids,
)
def test_connect_response_round_trip(
    sid: str, status: int, error: str | None, window: int, stream_id: int
) -> None:
    message = ConnectResponse(sid, status, error, window)
    body = orjson.loads(only_frame(message.encode(stream_id)))
    assert body["statusDescription"] == (
        "Connection Established" if status == 200 else PHRASES.get(status, "Error")
    )
    assert ("window" in body) is message.ok
    decoded = ConnectResponse.decode(only_frame(message.encode(stream_id)))
    # A failure carries no window; the receiver sees the default.
    expected = message if message.ok else dataclasses.replace(message, window=DEFAULT_WINDOW)
    assert decoded == expected
    assert decoded.ok is (status == 200)


@given(texts, texts, stream_ids)
def test_tunnel_error_round_trip(sid: str, error: str, stream_id: int) -> None:
    message = TunnelError(sid, error)
    assert TunnelError.decode(only_frame(message.encode(stream_id))) == message


@given(
    texts,
    st.integers(min_value=0, max_value=U32)
    .flatmap(
        lambda base: st.tuples(st.just(base), st.integers(min_value=0, max_value=2**32 - base))
    )
    # A range that contains stream id 0 is refused (test_hello_range_with_zero_is_refused).
    .filter(lambda r: r[0] > 0 or r[1] == 0),
)
def test_hello_round_trip(instance_id: str, id_range: tuple[int, int]) -> None:
    base, count = id_range
    message = Hello(instance_id, PROTOCOL_VERSION, base, count)
    data = message.encode()
    assert data[:6] == bytes.fromhex("080000000000")  # type HELLO, stream id 0
    assert Hello.decode(only_frame(data)) == message


def test_hello_range_with_zero_is_refused() -> None:
    data = Hello("relay-1", PROTOCOL_VERSION, 0, 16).encode()
    with pytest.raises(ControlMessageError, match="includes 0"):
        Hello.decode(only_frame(data))


@given(texts)
def test_goaway_round_trip(error: str) -> None:
    data = GoAway(error).encode()
    assert data[:6] == bytes.fromhex("090000000000")
    assert GoAway.decode(only_frame(data)) == GoAway(error)


@given(st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=50))
def test_members_round_trip_sorted_and_unique(instances: list[str]) -> None:
    data = Members(tuple(instances)).encode()
    assert data[:6] == bytes.fromhex("0a0000000000")
    assert Members.decode(only_frame(data)).instances == tuple(sorted(set(instances)))


@pytest.mark.parametrize(
    ("instances", "reason"),
    [
        ([], "non-empty list"),
        (["relay-a", ""], "non-empty list"),
        (["relay-a", 7], "non-empty list"),
        ([f"r{i}" for i in range(1025)], "over 1024"),
    ],
)
def test_members_refuses_bad_instance_lists(instances: list[Any], reason: str) -> None:
    rejects(FrameType.MEMBERS, with_field(FrameType.MEMBERS, instances=instances), reason)


def test_optional_fields_take_their_defaults() -> None:
    opened = OpenStream.decode(
        FrameType.CONNECT,
        orjson.dumps(
            {"type": "CONNECT", "sessionId": "s", "method": "CONNECT", "url": "https://h"}
        ),
    )
    assert (opened.headers, opened.window, opened.port) == ({}, DEFAULT_WINDOW, 443)
    response = ConnectResponse.decode(
        orjson.dumps({"type": "CONNECT_RESPONSE", "sessionId": "s", "statusCode": 502})
    )
    assert (response.error, response.window) == (None, DEFAULT_WINDOW)
    assert TunnelError.decode(orjson.dumps({"type": "TUNNEL_ERROR", "error": "x"})).session_id == ""
    hello = Hello.decode(orjson.dumps({"type": "HELLO", "version": 1, "instanceId": "r"}))
    assert (hello.stream_id_base, hello.stream_id_count) == (0, 0)
    assert GoAway.decode(orjson.dumps({"type": "GOAWAY"})) == GoAway("")


def test_unknown_keys_and_key_order_do_not_matter() -> None:
    body = {"extra": [1, 2], "statusCode": 200, "sessionId": "s", "type": "CONNECT_RESPONSE"}
    assert ConnectResponse.decode(orjson.dumps(body)) == ConnectResponse("s", 200)


def _decoder(kind: FrameType) -> Any:
    if kind in OPEN_FRAMES:
        return lambda payload: OpenStream.decode(kind, payload)
    return {
        FrameType.CONNECT_RESPONSE: ConnectResponse.decode,
        FrameType.TUNNEL_ERROR: TunnelError.decode,
        FrameType.HELLO: Hello.decode,
        FrameType.GOAWAY: GoAway.decode,
        FrameType.MEMBERS: Members.decode,
    }[kind]


CONTROL_TYPES = [
    *sorted(OPEN_FRAMES),
    FrameType.CONNECT_RESPONSE,
    FrameType.TUNNEL_ERROR,
    FrameType.HELLO,
    FrameType.GOAWAY,
    FrameType.MEMBERS,
]
GOOD: dict[FrameType, dict[str, Any]] = {
    FrameType.CONNECT: {
        "type": "CONNECT",
        "sessionId": "s",
        "method": "CONNECT",
        "url": "https://example.com:443",
        "headers": {"Host": "example.com:443"},
        "window": 65536,
    },
    FrameType.REQUEST: {
        "type": "REQUEST",
        "sessionId": "s",
        "method": "GET",
        "url": "http://example.com/",
        "headers": {},
        "window": 65536,
    },
    FrameType.CONNECT_RESPONSE: {
        "type": "CONNECT_RESPONSE",
        "sessionId": "s",
        "statusCode": 200,
        "error": "none",
        "window": 65536,
    },
    FrameType.TUNNEL_ERROR: {"type": "TUNNEL_ERROR", "sessionId": "s", "error": "x"},
    FrameType.HELLO: {
        "type": "HELLO",
        "version": 1,
        "instanceId": "r",
        "streamIdBase": 1,
        "streamIdCount": 10,
    },
    FrameType.GOAWAY: {"type": "GOAWAY", "error": "bye"},
    FrameType.MEMBERS: {"type": "MEMBERS", "instances": ["relay-a", "relay-b"]},
}
REQUIRED = {
    FrameType.CONNECT: ["type", "sessionId", "method", "url"],
    FrameType.REQUEST: ["type", "sessionId", "method", "url"],
    FrameType.CONNECT_RESPONSE: ["type", "sessionId", "statusCode"],
    FrameType.TUNNEL_ERROR: ["type", "error"],
    FrameType.HELLO: ["type", "version", "instanceId"],
    FrameType.GOAWAY: ["type"],
    FrameType.MEMBERS: ["type", "instances"],
}


def with_field(kind: FrameType, **changes: Any) -> bytes:
    return orjson.dumps({**GOOD[kind], **changes})


def without_field(kind: FrameType, name: str) -> bytes:
    return orjson.dumps({k: v for k, v in GOOD[kind].items() if k != name})


def rejects(kind: FrameType, payload: bytes, reason: str) -> None:
    with pytest.raises(ControlMessageError, match=reason) as info:
        _decoder(kind)(payload)
    assert info.value.close_code == CLOSE_PROTOCOL_ERROR
    assert info.value.kind == "malformed_control"


DECODED: dict[FrameType, object] = {
    FrameType.CONNECT: OpenStream(
        FrameType.CONNECT,
        "s",
        "example.com",
        443,
        method="CONNECT",
        url="https://example.com:443",
        headers={"Host": "example.com:443"},
        window=65536,
    ),
    FrameType.REQUEST: OpenStream(
        FrameType.REQUEST,
        "s",
        "example.com",
        80,
        method="GET",
        url="http://example.com/",
        window=65536,
    ),
    FrameType.CONNECT_RESPONSE: ConnectResponse("s", 200, error="none", window=65536),
    FrameType.TUNNEL_ERROR: TunnelError("s", "x"),
    FrameType.HELLO: Hello("r", version=1, stream_id_base=1, stream_id_count=10),
    FrameType.GOAWAY: GoAway("bye"),
    FrameType.MEMBERS: Members(("relay-a", "relay-b")),
}


@pytest.mark.parametrize("kind", CONTROL_TYPES, ids=lambda k: k.name)
def test_good_payloads_decode(kind: FrameType) -> None:
    payload = orjson.dumps(GOOD[kind])
    assert _decoder(kind)(payload) == DECODED[kind]
    assert _decoder(kind)(memoryview(payload)) == DECODED[kind]


@pytest.mark.parametrize("kind", CONTROL_TYPES, ids=lambda k: k.name)
@pytest.mark.parametrize("payload", [b"", b"{", b"\xff\xfe", b"not json", b'{"type":'])
def test_not_json(kind: FrameType, payload: bytes) -> None:
    rejects(kind, payload, "is not JSON")


@pytest.mark.parametrize("kind", CONTROL_TYPES, ids=lambda k: k.name)
@pytest.mark.parametrize("payload", [b"[]", b"1", b'"CONNECT"', b"null", b"true"])
def test_not_an_object(kind: FrameType, payload: bytes) -> None:
    rejects(kind, payload, "must be a JSON object")


@pytest.mark.parametrize("kind", CONTROL_TYPES, ids=lambda k: k.name)
def test_wrong_type(kind: FrameType) -> None:
    other = FrameType.GOAWAY if kind is not FrameType.GOAWAY else FrameType.HELLO
    rejects(kind, with_field(kind, type=other.name), f"carries a message of type '{other.name}'")
    rejects(kind, with_field(kind, type=kind.name.lower()), "carries a message of type")
    rejects(kind, with_field(kind, type=int(kind)), "carries a message of type")


@pytest.mark.parametrize(
    ("kind", "name"),
    [(kind, name) for kind, names in REQUIRED.items() for name in names],
    ids=lambda x: getattr(x, "name", x),
)
def test_missing_field(kind: FrameType, name: str) -> None:
    reason = "carries a message of type None" if name == "type" else f"is missing '{name}'"
    rejects(kind, without_field(kind, name), reason)


WRONG_TYPES = [
    (FrameType.CONNECT, "sessionId", 1),
    (FrameType.CONNECT, "method", ["CONNECT"]),
    (FrameType.CONNECT, "url", 443),
    (FrameType.CONNECT, "headers", [["Host", "h"]]),
    (FrameType.CONNECT, "window", "65536"),
    (FrameType.CONNECT, "window", 65536.0),
    (FrameType.REQUEST, "method", 1),
    (FrameType.REQUEST, "headers", "Host: h"),
    (FrameType.CONNECT_RESPONSE, "sessionId", {}),
    (FrameType.CONNECT_RESPONSE, "statusCode", "200"),
    (FrameType.CONNECT_RESPONSE, "statusCode", 200.0),
    (FrameType.CONNECT_RESPONSE, "error", 5),
    (FrameType.CONNECT_RESPONSE, "window", [1]),
    (FrameType.TUNNEL_ERROR, "sessionId", 5),
    (FrameType.TUNNEL_ERROR, "error", False),
    (FrameType.HELLO, "version", "1"),
    (FrameType.HELLO, "instanceId", 7),
    (FrameType.HELLO, "streamIdBase", "1"),
    (FrameType.HELLO, "streamIdCount", 1.5),
    (FrameType.GOAWAY, "error", 1),
]


@pytest.mark.parametrize(("kind", "name", "value"), WRONG_TYPES, ids=repr)
def test_wrong_field_type(kind: FrameType, name: str, value: Any) -> None:
    rejects(kind, with_field(kind, **{name: value}), f"field '{name}' must be")


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        (FrameType.CONNECT, "window"),
        (FrameType.REQUEST, "window"),
        (FrameType.CONNECT_RESPONSE, "statusCode"),
        (FrameType.CONNECT_RESPONSE, "window"),
        (FrameType.HELLO, "version"),
        (FrameType.HELLO, "streamIdBase"),
        (FrameType.HELLO, "streamIdCount"),
    ],
    ids=lambda x: getattr(x, "name", x),
)
@pytest.mark.parametrize("value", [True, False])
def test_bool_is_not_an_int(kind: FrameType, name: str, value: bool) -> None:
    rejects(kind, with_field(kind, **{name: value}), f"field '{name}' must be int")


@pytest.mark.parametrize(
    "headers", [{"Host": 1}, {"Host": None}, {"Host": ["a"]}], ids=["int", "null", "list"]
)
def test_header_values_must_be_strings(headers: dict[str, Any]) -> None:
    rejects(FrameType.CONNECT, with_field(FrameType.CONNECT, headers=headers), "map strings")


@pytest.mark.parametrize("status", [-1, 0, 99, 600, 1000])
def test_bad_status(status: int) -> None:
    payload = with_field(FrameType.CONNECT_RESPONSE, statusCode=status)
    rejects(FrameType.CONNECT_RESPONSE, payload, f"statusCode {status} is not an HTTP status")


@pytest.mark.parametrize("status", [100, 200, 403, 502, 503, 504, 599])
def test_good_status(status: int) -> None:
    payload = with_field(FrameType.CONNECT_RESPONSE, statusCode=status)
    assert ConnectResponse.decode(payload).status_code == status


@pytest.mark.parametrize("kind", [*sorted(OPEN_FRAMES), FrameType.CONNECT_RESPONSE])
@pytest.mark.parametrize("window", [0, -1, MAX_WINDOW + 1, 2**32])
def test_bad_window(kind: FrameType, window: int) -> None:
    rejects(kind, with_field(kind, window=window), f"window {window} is out of range")


@pytest.mark.parametrize("window", [1, MAX_WINDOW])
def test_window_bounds(window: int) -> None:
    payload = with_field(FrameType.CONNECT, window=window)
    assert OpenStream.decode(FrameType.CONNECT, payload).window == window


BAD_URLS = [
    ("example.com:443", "is not http"),
    ("ftp://example.com:21", "is not http"),
    ("://example.com", "is not http"),
    ("https://", "empty host"),
    ("https://:443", "empty host"),
    ("https://[::1", "unterminated IPv6"),
    ("https://[::1]x", "junk after IPv6"),
    ("https://::1:443", "must be in brackets"),
    ("https://example.com:0", "bad port"),
    ("https://example.com:65536", "bad port"),
    ("https://example.com:-1", "bad port"),
    ("https://example.com:https", "bad port"),
]


@pytest.mark.parametrize("kind", sorted(OPEN_FRAMES), ids=lambda k: k.name)
@pytest.mark.parametrize(("url", "reason"), BAD_URLS)
def test_bad_url(kind: FrameType, url: str, reason: str) -> None:
    rejects(kind, with_field(kind, url=url), f"{kind.name} url.*{reason}")


@pytest.mark.parametrize("version", [0, 2, 100])
def test_bad_hello_version(version: int) -> None:
    rejects(
        FrameType.HELLO,
        with_field(FrameType.HELLO, version=version),
        f"protocol version {version} is not supported",
    )


@pytest.mark.parametrize(
    ("base", "count"),
    [(-1, 0), (-1, 5), (2**32, 1), (2**32 - 1, 2), (1, 2**32)],
)
def test_hello_range_beyond_u32(base: int, count: int) -> None:
    payload = with_field(FrameType.HELLO, streamIdBase=base, streamIdCount=count)
    rejects(FrameType.HELLO, payload, "outside u32")


def test_hello_range_up_to_u32_is_accepted() -> None:
    payload = with_field(FrameType.HELLO, streamIdBase=2**32 - 10, streamIdCount=10)
    assert Hello.decode(payload).stream_id_count == 10


# Known gaps in messages.py, reported to the lead: `_field` lets JSON null through for any field
# (it skips the type check when the value is None), so a null required field either decodes to
# None or crashes later with AttributeError/TypeError instead of ControlMessageError; and HELLO
# accepts a negative streamIdCount. strict=True: these start failing once the code is fixed, so
# the marker gets removed then.
NULL_FIELDS = [
    (FrameType.CONNECT, "sessionId"),
    (FrameType.CONNECT, "method"),
    (FrameType.CONNECT, "url"),
    (FrameType.CONNECT, "headers"),
    (FrameType.CONNECT, "window"),
    (FrameType.CONNECT_RESPONSE, "sessionId"),
    (FrameType.CONNECT_RESPONSE, "statusCode"),
    (FrameType.CONNECT_RESPONSE, "window"),
    (FrameType.TUNNEL_ERROR, "error"),
    (FrameType.HELLO, "instanceId"),
    (FrameType.HELLO, "streamIdBase"),
]


@pytest.mark.parametrize(("kind", "name"), NULL_FIELDS, ids=lambda x: getattr(x, "name", x))
def test_null_field_is_malformed(kind: FrameType, name: str) -> None:
    rejects(kind, with_field(kind, **{name: None}), name)


def test_hello_negative_count_is_malformed() -> None:
    payload = with_field(FrameType.HELLO, streamIdBase=5, streamIdCount=-3)
    rejects(FrameType.HELLO, payload, "outside u32")


# --------------------------------------------------------------------------- authorities and urls

GOOD_AUTHORITIES = [
    ("example.com:443", None, ("example.com", 443)),
    ("example.com:1", None, ("example.com", 1)),
    ("example.com:65535", None, ("example.com", 65535)),
    ("10.0.0.1:8080", None, ("10.0.0.1", 8080)),
    ("[::1]:8443", None, ("::1", 8443)),
    ("[2001:db8::1]:80", 443, ("2001:db8::1", 80)),
    ("[2001:db8::1]", 443, ("2001:db8::1", 443)),
    ("example.com", 80, ("example.com", 80)),
    ("example.com:", 80, ("example.com", 80)),
]
BAD_AUTHORITIES = [
    ("example.com", None, "missing port"),
    ("[::1]", None, "missing port"),
    ("[::1", 443, "unterminated IPv6"),
    ("[::1]8443", 443, "junk after IPv6"),
    ("::1", 443, "must be in brackets"),
    ("2001:db8::1:443", None, "must be in brackets"),
    (":443", None, "empty host"),
    ("[]:443", None, "empty host"),
    ("", 443, "empty host"),
    ("h:0", None, "bad port"),
    ("h:65536", None, "bad port"),
    ("h:-1", None, "bad port"),
    ("h:+80", None, "bad port"),
    ("h: 80", None, "bad port"),
    ("h:80x", None, "bad port"),
    ("h:0x50", None, "bad port"),
]


@pytest.mark.parametrize(("authority", "default", "expected"), GOOD_AUTHORITIES)
def test_split_authority(authority: str, default: int | None, expected: tuple[str, int]) -> None:
    assert split_authority(authority, default) == expected


@pytest.mark.parametrize(("authority", "default", "reason"), BAD_AUTHORITIES)
def test_split_authority_rejects(authority: str, default: int | None, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        split_authority(authority, default)


@pytest.mark.parametrize(
    "port", ["\u0664\u0664\u0663", "\uff14\uff14\uff13"], ids=["arabic", "wide"]
)
def test_split_authority_rejects_non_ascii_digits(port: str) -> None:
    with pytest.raises(ValueError, match="bad port"):
        split_authority(f"example.com:{port}")


@given(hosts, ports)
def test_format_then_split_authority(host: str, port: int) -> None:
    assert split_authority(format_authority(host, port)) == (host, port)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://example.com", ("example.com", 443)),
        ("http://example.com", ("example.com", 80)),
        ("wss://example.com", ("example.com", 443)),
        ("ws://example.com", ("example.com", 80)),
        ("HTTPS://Example.com:8443/path?q=1", ("Example.com", 8443)),
        ("http://example.com?x=1", ("example.com", 80)),
        ("http://example.com:8080/a/b", ("example.com", 8080)),
        ("https://[::1]/", ("::1", 443)),
        ("https://[2001:db8::1]:9443/x", ("2001:db8::1", 9443)),
    ],
)
def test_split_url(url: str, expected: tuple[str, int]) -> None:
    assert split_url(url) == expected


@pytest.mark.parametrize(("url", "reason"), BAD_URLS)
def test_split_url_rejects(url: str, reason: str) -> None:
    with pytest.raises(ControlMessageError, match=f"REQUEST url.*{reason}"):
        split_url(url, FrameType.REQUEST)
