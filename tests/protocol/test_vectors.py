"""docs/PROTOCOL.md against the code: every test vector and the transition table.

Valid vectors must decode to the documented frames and re-encode byte for byte
with the code's encoders; malformed vectors must raise the documented error.
The transition table in the doc must equal `TRANSITIONS` exactly.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from fastrelay.protocol import errors, seed
from fastrelay.protocol.frames import (
    FrameType,
    decode_probe_answer,
    decode_window_increment,
    encode_frame,
    encode_probe,
    encode_probe_answer,
    encode_window_update,
    iter_frames,
)
from fastrelay.protocol.messages import (
    DEFAULT_POOL,
    DEFAULT_WINDOW,
    ConnectResponse,
    GoAway,
    Hello,
    Members,
    OpenStream,
    TunnelError,
    status_description,
)
from fastrelay.protocol.rules import PushedRules, parse_rules_file
from fastrelay.protocol.state import TRANSITIONS, Event, State

DOC = Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"

VECTOR_RE = re.compile(
    r"<!-- vector: (?P<name>[a-z0-9_]+) -->\s*"
    r"```hex\n(?P<hex>.*?)```\s*"
    r"```json\n(?P<json>.*?)```",
    re.DOTALL,
)
MARKER_RE = re.compile(r"<!-- vector: ([a-z0-9_]+) -->")
TABLE_RE = re.compile(
    r"<!-- transitions:begin -->(?P<table>.*?)<!-- transitions:end -->", re.DOTALL
)

Message = ConnectResponse | GoAway | Hello | Members | OpenStream | PushedRules | TunnelError


@dataclass(frozen=True)
class Vector:
    name: str
    data: bytes
    expected: Any  # a list of frame objects (valid) or an error object (malformed)

    @property
    def valid(self) -> bool:
        return isinstance(self.expected, list)


@dataclass(frozen=True)
class Decoded:
    frame_type: FrameType
    flags: int
    stream_id: int
    # control message, data, increment, a PROBE's (token, stamp or None), or None (FIN)
    value: Message | bytes | int | tuple[int, int | None] | None


def load_vectors() -> list[Vector]:
    text = DOC.read_text(encoding="utf-8")
    vectors = [
        Vector(
            m["name"],
            bytes.fromhex("".join(m["hex"].split())),
            json.loads(m["json"]),
        )
        for m in VECTOR_RE.finditer(text)
    ]
    return vectors


VECTORS = load_vectors()
VALID = [v for v in VECTORS if v.valid]
MALFORMED = [v for v in VECTORS if not v.valid]


def decode_payload(
    frame_type: FrameType, payload: memoryview
) -> Message | bytes | int | tuple[int, int | None] | None:
    """What a receiver makes of one frame's payload; raises on malformed ones."""
    if frame_type is FrameType.PROBE:
        if len(payload) == 8:  # to the relay: a token only it does not read
            return int.from_bytes(payload, "big"), None
        return decode_probe_answer(payload)
    if frame_type in (FrameType.CONNECT, FrameType.REQUEST):
        return OpenStream.decode(frame_type, payload)
    if frame_type is FrameType.CONNECT_RESPONSE:
        return ConnectResponse.decode(payload)
    if frame_type is FrameType.TUNNEL_ERROR:
        return TunnelError.decode(payload)
    if frame_type is FrameType.HELLO:
        return Hello.decode(payload)
    if frame_type is FrameType.GOAWAY:
        return GoAway.decode(payload)
    if frame_type is FrameType.MEMBERS:
        return Members.decode(payload)
    if frame_type is FrameType.RULES:
        return PushedRules.decode(payload)
    if frame_type is FrameType.WINDOW_UPDATE:
        return decode_window_increment(payload)
    if frame_type is FrameType.TUNNEL_DATA:
        return bytes(payload)
    return None  # FIN


def decode_message(data: bytes, out: list[Decoded]) -> None:
    """Decode a whole WebSocket message frame by frame, appending to `out`."""
    view = memoryview(data)
    for frame_type, flags, stream_id, offset, length in iter_frames(view):
        kind = FrameType(frame_type)
        value = decode_payload(kind, view[offset : offset + length])
        out.append(Decoded(kind, flags, stream_id, value))


def encode(frame: Decoded) -> bytes:
    value = frame.value
    if isinstance(value, Hello | GoAway | Members | PushedRules):
        return value.encode()
    if isinstance(value, OpenStream | ConnectResponse | TunnelError):
        return value.encode(frame.stream_id)
    if frame.frame_type is FrameType.WINDOW_UPDATE:
        assert isinstance(value, int)
        return encode_window_update(frame.stream_id, value)
    if frame.frame_type is FrameType.TUNNEL_DATA:
        assert isinstance(value, bytes)
        return encode_frame(FrameType.TUNNEL_DATA, frame.stream_id, value, flags=frame.flags)
    if frame.frame_type is FrameType.PROBE:
        assert isinstance(value, tuple)
        token, stamp = value
        if stamp is None:
            return encode_probe(token)
        return encode_probe_answer(encode_probe(token)[10:], stamp)
    assert frame.frame_type is FrameType.FIN
    return encode_frame(FrameType.FIN, frame.stream_id)


def expected_message(doc: dict[str, Any]) -> Message:
    """The dataclass the documented payload must decode to."""
    p = doc["payload"]
    kind = FrameType[doc["type"]]
    if kind in (FrameType.CONNECT, FrameType.REQUEST):
        return OpenStream(
            kind=kind,
            session_id=p["sessionId"],
            host=doc["host"],
            port=doc["port"],
            method=p["method"],
            url=p["url"],
            headers=p.get("headers", {}),
            window=p.get("window", DEFAULT_WINDOW),
            pool=p.get("pool", DEFAULT_POOL),
        )
    if kind is FrameType.CONNECT_RESPONSE:
        assert p["statusDescription"] == status_description(p["statusCode"])
        return ConnectResponse(
            session_id=p["sessionId"],
            status_code=p["statusCode"],
            error=p.get("error"),
            window=p.get("window", DEFAULT_WINDOW),
            reason=p.get("reason"),
        )
    if kind is FrameType.TUNNEL_ERROR:
        return TunnelError(session_id=p["sessionId"], error=p["error"])
    if kind is FrameType.HELLO:
        return Hello(
            instance_id=p["instanceId"],
            version=p["version"],
            stream_id_base=p["streamIdBase"],
            stream_id_count=p["streamIdCount"],
            buffer_budget=p.get("bufferBudget", 0),
            max_streams=p.get("maxStreams", 0),
            max_frame_size=p.get("maxFrameSize", 0),
            pool=p.get("pool", ""),
        )
    if kind is FrameType.MEMBERS:
        return Members(instances=tuple(p["instances"]))
    if kind is FrameType.RULES:
        # The documented text is the canonical form of its rules, and the version its hash.
        pushed = PushedRules.from_entries(parse_rules_file(p["rules"], local=False).entries)
        assert (pushed.text, pushed.version) == (p["rules"], p["version"])
        return pushed
    assert kind is FrameType.GOAWAY
    return GoAway(error=p["error"])


def control_payload(data: bytes, index: int) -> Any:
    """The JSON payload of the index-th frame of a message, parsed."""
    view = memoryview(data)
    frames = list(iter_frames(view))
    _, _, _, offset, length = frames[index]
    return orjson.loads(view[offset : offset + length])


def test_every_vector_marker_is_well_formed() -> None:
    # A marker whose hex or json block is missing or misshapen would be skipped silently.
    markers = MARKER_RE.findall(DOC.read_text(encoding="utf-8"))
    assert markers == [v.name for v in VECTORS]


def test_doc_has_the_vectors_the_spec_promises() -> None:
    names = {v.name for v in VECTORS}
    assert len(names) == len(VECTORS), "duplicate vector names"
    assert {
        "tunnel_data_hi",
        "fin_stream_7",
        "window_update_stream_3",
        "connect_open",
        "connect_response_200",
        "connect_response_502",
        "tunnel_error",
        "hello_client_a",
        "goaway",
        "two_frames_one_message",
        "truncated_header",
        "length_beyond_message",
        "unknown_type_7f",
        "hello_nonzero_stream",
        "fin_with_payload",
        "window_update_zero",
        "connect_open_pool",
        "connect_response_503_pool",
        "hello_agent_pool",
        "connect_bad_pool",
        "rules_pushed",
        "rules_version_mismatch",
        "probe",
        "probe_answer",
        "probe_short",
    } <= names
    # Every frame type appears in at least one valid vector.
    seen = {frame["type"] for v in VALID for frame in v.expected}
    assert seen == {t.name for t in FrameType}


def test_hex_blocks_are_lowercase() -> None:
    for m in VECTOR_RE.finditer(DOC.read_text(encoding="utf-8")):
        assert m["hex"] == m["hex"].lower(), m["name"]
        assert re.fullmatch(r"[0-9a-f\s]+", m["hex"]), m["name"]


@pytest.mark.parametrize("vector", VALID, ids=lambda v: v.name)
def test_valid_vector_decodes_as_documented(vector: Vector) -> None:
    frames: list[Decoded] = []
    decode_message(vector.data, frames)
    assert len(frames) == len(vector.expected)
    for index, (frame, doc) in enumerate(zip(frames, vector.expected, strict=True)):
        assert frame.frame_type is FrameType[doc["type"]]
        assert frame.flags == doc["flags"]
        assert frame.stream_id == doc["stream"]
        if frame.frame_type is FrameType.TUNNEL_DATA:
            assert frame.value == doc["data"].encode()
        elif frame.frame_type is FrameType.WINDOW_UPDATE:
            assert frame.value == doc["increment"]
        elif frame.frame_type is FrameType.FIN:
            assert frame.value is None
        elif frame.frame_type is FrameType.PROBE:
            assert frame.value == (doc["token"], doc.get("stamp"))
        else:
            # The JSON on the wire, key order included, is what the doc shows.
            payload = control_payload(vector.data, index)
            assert list(payload.items()) == list(doc["payload"].items())
            assert frame.value == expected_message(doc)


@pytest.mark.parametrize("vector", VALID, ids=lambda v: v.name)
def test_valid_vector_reencodes_byte_exactly(vector: Vector) -> None:
    frames: list[Decoded] = []
    decode_message(vector.data, frames)
    assert b"".join(encode(frame) for frame in frames) == vector.data


@pytest.mark.parametrize("vector", MALFORMED, ids=lambda v: v.name)
def test_malformed_vector_raises_documented_error(vector: Vector) -> None:
    expected = vector.expected
    error_class: type[errors.ProtocolError] = getattr(errors, expected["error"])
    assert issubclass(error_class, errors.ProtocolError)
    frames: list[Decoded] = []
    with pytest.raises(error_class) as info:
        decode_message(vector.data, frames)
    assert type(info.value) is error_class
    assert info.value.close_code == expected["closeCode"]
    assert len(frames) == expected["framesBefore"]
    assert expected["reason"] in str(info.value)


def parse_transition_table() -> dict[tuple[State, Event], State]:
    match = TABLE_RE.search(DOC.read_text(encoding="utf-8"))
    assert match, "transition table markers missing from docs/PROTOCOL.md"
    rows = [line.strip() for line in match["table"].strip().splitlines()]
    assert rows[0].replace(" ", "") == "|State|Event|Nextstate|"
    table: dict[tuple[State, Event], State] = {}
    for row in rows[2:]:
        cells = [cell.strip().strip("`") for cell in row.strip("|").split("|")]
        state, event, target = cells
        key = (State[state], Event[event])
        assert key not in table, f"duplicate row {row}"
        table[key] = State[target]
    return table


def test_doc_transition_table_equals_code() -> None:
    assert parse_transition_table() == TRANSITIONS


# --- §13: the seed dialect's vectors (the seed document's own JSON examples) ---

SEED_VECTOR_RE = re.compile(
    r"<!-- seed-vector: (?P<name>[a-z0-9_]+) -->\s*"
    r"```json\n(?P<message>.*?)```\s*"
    r"```json\n(?P<meaning>.*?)```",
    re.DOTALL,
)
SEED_MARKER_RE = re.compile(r"<!-- seed-vector: ([a-z0-9_]+) -->")
SEED_VECTORS = [
    (m["name"], m["message"], json.loads(m["meaning"]))
    for m in SEED_VECTOR_RE.finditer(DOC.read_text(encoding="utf-8"))
]
SEED_MAX_DATA = 1024 * 1024  # the relay's default --max-frame-size


def test_every_seed_vector_marker_is_well_formed() -> None:
    markers = SEED_MARKER_RE.findall(DOC.read_text(encoding="utf-8"))
    assert markers == [name for name, _, _ in SEED_VECTORS]
    assert len(set(markers)) == len(markers) >= 12
    # The seed document's examples are all there.
    assert {
        "seed_connect",
        "seed_connect_response_200",
        "seed_connect_response_502",
        "seed_connect_failed_timeout",
        "seed_tunnel_data",
        "seed_tunnel_error",
    } <= set(markers)


@pytest.mark.parametrize(
    ("name", "message", "meaning"), SEED_VECTORS, ids=[v[0] for v in SEED_VECTORS]
)
def test_seed_vector(name: str, message: str, meaning: dict[str, Any]) -> None:
    raw = message.encode()
    if "encode" in meaning:
        assert meaning["from"] == "relay"
        function, *args = meaning["encode"]
        encoded = getattr(seed, f"encode_{function}")(*args)
        # Compact, keys in the seed's order: the example re-serialised as it stands.
        assert encoded == orjson.dumps(json.loads(raw))
        return
    assert meaning["from"] == "client"
    if "error" in meaning:
        with pytest.raises(seed.SeedError) as caught:
            seed.decode_text(raw, SEED_MAX_DATA)
        assert type(caught.value).__name__ == meaning["error"]
        assert caught.value.close_code == meaning["closeCode"]
        assert meaning["reason"] in str(caught.value)
        return
    decoded = seed.decode_text(raw, SEED_MAX_DATA)
    expected = dict(meaning["decoded"])
    kind = expected.pop("type")
    classes = {
        "CONNECT": seed.SeedConnect,
        "TUNNEL_DATA": seed.SeedDataHeader,
        "TUNNEL_ERROR": seed.SeedAbort,
        "TUNNEL_CLOSE": seed.SeedClose,
    }
    assert type(decoded) is classes[kind]
    fields = {
        "sessionId": "session_id",
        "method": "method",
        "url": "url",
        "host": "host",
        "port": "port",
        "headers": "headers",
        "length": "length",
        "error": "error",
    }
    assert {key: getattr(decoded, fields[key]) for key in expected} == expected
    assert len(expected) == len(decoded.__slots__)  # type: ignore[union-attr]
