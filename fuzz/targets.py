"""One check per parser entry point, shared by the atheris harnesses (fuzz/fuzz_*.py) and the
corpus replay test (tests/protocol/test_fuzz_corpus.py).

Each check takes arbitrary bytes, runs the parser, and lets through only the parser's
documented error, with a message; any other exception escapes (a finding). Where the parser
is incremental, the input is also fed in pieces and must give the same outcome as fed whole;
where a parse succeeds, the result is checked for the invariants the callers rely on.

This module imports no atheris, so `make test` does not need it.
"""

from __future__ import annotations

import functools
import itertools
import os
import tempfile
from collections.abc import Callable
from typing import Any

from agent.policy import EgressPolicy, PolicyError
from client_a.rules import RuleError, Rules
from fastrelay.config import ConfigError
from fastrelay.protocol.errors import BudgetExceeded, ControlMessageError, FrameError, HttpError
from fastrelay.protocol.frames import (
    CONNECTION_FRAMES,
    HEADER_SIZE,
    FrameType,
    check_header,
    iter_frames,
)
from fastrelay.protocol.hostname import (
    HostnameError,
    canonical_ipv4,
    format_ipv4,
    normalize_hostname,
    parse_ipv4,
)
from fastrelay.protocol.http import RequestHeadParser, ResponseHeadRewriter
from fastrelay.protocol.messages import (
    ConnectResponse,
    GoAway,
    Hello,
    Members,
    OpenStream,
    TunnelError,
)
from fastrelay.protocol.seed import SeedConnection, SeedError, SeedRefusal, decode_text
from fastrelay.protocol.socks import (
    METHOD_REFUSED,
    METHOD_SELECTED,
    SocksError,
    SocksParser,
    reply,
)

__all__ = ["TARGETS", "seed_frames"]


def _text(data: bytes) -> str:
    """Bytes as the str a parser that takes text would see (lone surrogates included)."""
    return data.decode("utf-8", "surrogateescape")


def _pieces(data: bytes) -> list[bytes]:
    """`data` cut where its first two bytes say (so the fuzzer steers the cuts too), or byte
    by byte when the first byte is odd and the input is short."""
    if len(data) < 2:
        return [data]
    if data[0] & 1 and len(data) <= 512:
        return [data[i : i + 1] for i in range(len(data))]
    cuts = sorted({data[0] * len(data) // 256, data[1] * len(data) // 256})
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def _same_outcome(whole: tuple[Any, ...], pieces: tuple[Any, ...]) -> None:
    """An error stays an error in any split (which limit trips first may differ)."""
    if whole[0] == "error":
        assert pieces[0] == "error", (whole, pieces)
    else:
        assert pieces == whole, (whole, pieces)


# --------------------------------------------------------------------------- mux frames


def check_frames(data: bytes) -> None:
    """iter_frames: FrameError (kind malformed_frame) or frames that tile the message."""
    offset = 0
    try:
        for frame_type, _, stream_id, payload_at, length in iter_frames(memoryview(data)):
            assert payload_at == offset + HEADER_SIZE
            check_header(frame_type, stream_id, length, len(data) - payload_at)
            offset = payload_at + length
    except FrameError as exc:
        assert exc.kind == "malformed_frame" and str(exc), exc
        assert offset < len(data)
        return
    assert offset == len(data)


# --------------------------------------------------------------------------- control messages

_DECODERS: list[tuple[FrameType, Callable[[bytes | memoryview], Any]]] = [
    (FrameType.CONNECT, lambda p: OpenStream.decode(FrameType.CONNECT, p)),
    (FrameType.REQUEST, lambda p: OpenStream.decode(FrameType.REQUEST, p)),
    (FrameType.CONNECT_RESPONSE, ConnectResponse.decode),
    (FrameType.TUNNEL_ERROR, TunnelError.decode),
    (FrameType.HELLO, Hello.decode),
    (FrameType.GOAWAY, GoAway.decode),
    (FrameType.MEMBERS, Members.decode),
]


def _decode(kind_index: int, payload: bytes | memoryview) -> Any:
    try:
        return _DECODERS[kind_index][1](payload)
    except ControlMessageError as exc:
        assert exc.kind == "malformed_control" and str(exc), exc
        return None


def check_messages(data: bytes) -> None:
    """Control decoders: byte 0 picks the frame type, the rest is the JSON payload.
    ControlMessageError, or a message whose encoding decodes again."""
    if not data:
        return
    index = data[0] % len(_DECODERS)
    kind = _DECODERS[index][0]
    message = _decode(index, data[1:])
    assert _decode(index, memoryview(data)[1:]) == message  # views decode the same
    if message is None:
        return
    frame = message.encode() if kind in CONNECTION_FRAMES else message.encode(7)
    ((frame_type, _, _, offset, length),) = iter_frames(memoryview(frame))
    assert frame_type == kind
    again = _decode(index, frame[offset : offset + length])
    assert again is not None, message
    assert type(again) is type(message)


# --------------------------------------------------------------------------- HTTP heads


def _feed_request(pieces: list[bytes], limit: int) -> tuple[Any, ...]:
    parser = RequestHeadParser(limit)
    for i, piece in enumerate(pieces):
        try:
            request = parser.feed(piece)
        except HttpError as exc:
            assert exc.status in (400, 431) and exc.reason, exc
            return ("error",)
        if request is not None:
            assert sum(map(len, pieces[: i + 1])) - len(parser.rest) <= limit
            assert request.head.endswith(b"\r\n\r\n") or (request.is_connect and not request.head)
            assert 0 <= request.port <= 65535
            return ("ok", request, parser.rest + b"".join(pieces[i + 1 :]))
    return ("pending",)


def _limit(data: bytes) -> int:
    """The head limit: byte 0 sometimes makes it small, so the limit paths are fuzzed too."""
    return 64 * 1024 if not data or data[0] < 0x80 else data[0]


def check_request_head(data: bytes) -> None:
    """RequestHeadParser: HttpError 400/431, whole or in pieces, with the same outcome."""
    limit = _limit(data)
    _same_outcome(_feed_request([data], limit), _feed_request(_pieces(data), limit))


def _feed_response(pieces: list[bytes], limit: int) -> tuple[Any, ...]:
    rewriter = ResponseHeadRewriter(limit)
    out = b""
    for piece in pieces:
        try:
            out += rewriter.feed(piece)
        except HttpError as exc:
            assert exc.status == 502 and "upstream response head" in exc.reason, exc
            return ("error",)
    return ("ok", out, rewriter.done)


def check_response_head(data: bytes) -> None:
    """ResponseHeadRewriter: HttpError 502, whole or in pieces, with the same outcome; what
    it writes is itself a response that rewrites to itself."""
    limit = _limit(data)
    whole = _feed_response([data], limit)
    _same_outcome(whole, _feed_response(_pieces(data), limit))
    if whole[0] == "ok" and whole[2]:
        assert _feed_response([whole[1]], 1 << 20) == ("ok", whole[1], True), whole


# --------------------------------------------------------------------------- request bodies

_FRAMINGS = [
    b"Transfer-Encoding: chunked\r\n",
    b"Content-Length: 5\r\n",
    b"",
    b"Transfer-Encoding: gzip, chunked\r\n",
]


def _feed_body(framing: bytes, pieces: list[bytes]) -> tuple[Any, ...]:
    parser = RequestHeadParser()
    request = parser.feed(b"POST http://a.example/ HTTP/1.1\r\n" + framing + b"\r\n")
    assert request is not None
    tracker = parser.body_tracker()
    used = 0
    for piece in pieces:
        was_complete = tracker.complete
        try:
            n = tracker.feed(piece)
        except HttpError as exc:
            assert exc.status == 400 and "malformed request body" in exc.reason, exc
            return ("error",)
        assert 0 <= n <= len(piece)
        assert n == 0 if was_complete else (tracker.complete or n == len(piece))
        used += n
    return ("ok", used, tracker.complete)


def check_chunked_body(data: bytes) -> None:
    """RequestBodyTracker (byte 0 picks the framing, chunked 3 times in 4): HttpError 400,
    whole or in pieces, with the same outcome."""
    if not data:
        return
    framing, body = _FRAMINGS[data[0] % 4 if data[0] % 8 < 4 else 0], data[1:]
    _same_outcome(_feed_body(framing, [body]), _feed_body(framing, _pieces(body)))


# --------------------------------------------------------------------------- hostnames


def check_hostname(data: bytes) -> None:
    """normalize_hostname: HostnameError, or lowercase ASCII that normalises to itself;
    parse_ipv4 and canonical_ipv4 never raise and agree."""
    host = _text(data)
    value = parse_ipv4(host)
    assert value is None or 0 <= value < 2**32
    canonical = canonical_ipv4(host)
    if canonical is not None:
        assert value is not None and canonical == format_ipv4(value)
    try:
        name = normalize_hostname(host)
    except HostnameError as exc:
        assert str(exc), exc
        return
    assert normalize_hostname(name) == name, name
    if "%" not in name:  # an IPv6 zone (interface name) is kept as given
        assert name and name.isascii() and name == name.lower(), name
    if value is not None:
        assert name == format_ipv4(value), (host, name)


# --------------------------------------------------------------------------- SOCKS5


def _feed_socks(pieces: list[bytes]) -> tuple[Any, ...]:
    parser = SocksParser()
    sent = b""
    found = None
    try:
        for piece in pieces:
            answer, request = parser.feed(piece)
            sent += answer
            if request is not None:
                assert found is None, "two requests"
                found = request
    except SocksError as exc:
        assert exc.reason, exc
        refusal = METHOD_REFUSED if exc.code is None else reply(exc.code)
        assert exc.answer.endswith(refusal), exc.answer
        return ("error", exc.code, exc.reason, sent + exc.answer)
    return ("ok", found, parser.rest if found is not None else b"", sent)


def check_socks(data: bytes) -> None:
    """SocksParser: SocksError (with a reason, and the answer its stage calls for), or a
    request with a port in 1-65535 after the method selection; any split gives the same
    outcome, down to the reason and the bytes sent."""
    whole = _feed_socks([data])
    assert _feed_socks(_pieces(data)) == whole, (whole, _feed_socks(_pieces(data)))
    if whole[0] == "ok" and whole[1] is not None:
        assert whole[3] == METHOD_SELECTED and 1 <= whole[1].port <= 65535, whole


# --------------------------------------------------------------------------- rules files


def check_rules(data: bytes) -> None:
    """Rules.decode (the bytes of a rules file): RuleError naming the line, or rules whose
    matches() answers for any host; the last line is also tried as a host."""
    try:
        rules = Rules.decode(data, "fuzz.rules")
    except RuleError as exc:
        assert exc.source == "fuzz.rules" and exc.line >= 1 and exc.problem, exc
        assert str(exc).startswith(f"fuzz.rules:{exc.line}: ")
        return
    lines = data.decode("utf-8-sig").splitlines() or [""]
    for host in (lines[-1], lines[0].strip(), "a.example", "127.0.0.1", "[::1]"):
        rule = rules.lookup(host)
        assert rules.matches(host) is (rule is not None)
    # Every pattern line matches (as a host) what it names, for the exact patterns.
    for line in lines:
        words = line.partition("#")[0].split()
        pattern = words[0] if words else ""
        if pattern and "/" not in pattern and not pattern.startswith(("*", ".", "[")):
            assert rules.matches(pattern), pattern


# --------------------------------------------------------------------------- egress specs


def check_policy(data: bytes) -> None:
    """EgressPolicy specs, one per line (a line starting with '-' is a --deny): PolicyError
    naming the spec, or a policy whose check() and check_name() decide any host."""
    lines = _text(data).split("\n")
    allow = [line for line in lines if not line.startswith("-")]
    deny = [line[1:] for line in lines if line.startswith("-")]
    try:
        policy = EgressPolicy(allow=allow, deny=deny, local_addresses=())
    except PolicyError as exc:
        assert "spec" in str(exc), exc
        return
    for host in (lines[0], lines[-1], "a.example", "127.0.0.1"):
        for ip in ("127.0.0.1", "::ffff:10.0.0.1", "2002:7f00:1::", "93.184.216.34"):
            decision = policy.check(host, ip, 443)
            assert decision.reason, decision
        name_decision = policy.check_name(host, 80)
        assert name_decision is None or name_decision.reason


# --------------------------------------------------------------------------- TOML config


@functools.cache
def _config_path() -> str:
    """The TOML file check_config writes: one per process, made on first use."""
    return os.path.join(tempfile.mkdtemp(prefix="fastrelay-fuzz-"), "c.toml")


_ENVIRON = {"FASTRELAY_CLIENT_TOKENS": "c", "FASTRELAY_AGENT_TOKENS": "a"}


def _loaders() -> list[Callable[..., Any]]:
    from agent.config import load as agent_load
    from client_a.config import load as client_load
    from fastrelay.relay.config import load as relay_load

    return [client_load, agent_load, relay_load]


_LOADERS = _loaders()


def check_config(data: bytes) -> None:
    """Each program's config loading from a TOML file (byte 0 & 3 picks client_a, the agent or
    the relay; a token comes from the file or the environment): ConfigError, never another
    exception."""
    if not data:
        return
    load = _LOADERS[(data[0] & 3) % 3]
    environ = dict(_ENVIRON)
    if data[0] & 4:
        environ["FASTRELAY_TOKEN"] = "t"
    path = _config_path()
    with open(path, "wb") as fh:
        fh.write(data[1:])
    try:
        config = load(["--config", path], environ)
    except ConfigError as exc:
        assert str(exc), exc
        return
    assert "<hidden>" in repr(config), repr(config)  # tokens never printed


# --------------------------------------------------------------------------- seed dialect


def seed_frames(data: bytes) -> list[tuple[int, bool, bytes]]:
    """The WebSocket frames an input stands for: each is a byte (low 2 bits: opcode 0
    continuation, 1 text, 2 binary; bit 2 set: not the last frame of its message), a
    u16 big-endian length and that many payload bytes (fewer at the end of the input)."""
    frames = []
    offset = 0
    while offset + 3 <= len(data):
        head = data[offset]
        length = int.from_bytes(data[offset + 1 : offset + 3], "big")
        payload = data[offset + 3 : offset + 3 + length]
        frames.append((head & 3, not head & 4, payload))
        offset += 3 + length
    return frames


class _SeedSink:
    """Stands in for the relay: what the machine writes must be well formed."""

    def __init__(self) -> None:
        self.switch_frames = 0

    def to_switch(self, frames: bytes | bytearray) -> None:
        self.switch_frames += len(list(iter_frames(memoryview(frames))))

    def to_client(self, text: bytes) -> None:
        assert text.startswith(b'{"type":"'), text

    def to_client_data(self, header: bytes, data: memoryview) -> None:
        raise AssertionError("no agent here: nothing flows towards Client A")

    def backed_up(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def check_seed(data: bytes) -> None:
    """The seed dialect (fastrelay/protocol/seed.py): `decode_text` on the whole input
    raises only SeedError or SeedRefusal; fed as WebSocket frames (`seed_frames`), a
    connection raises only SeedError (1002) or BudgetExceeded (1008), with a message."""
    try:
        decode_text(data, 1 << 20)
    except SeedError as exc:
        assert exc.kind == "seed_malformed" and exc.close_code == 1002 and str(exc), exc
    except SeedRefusal as exc:
        assert exc.session_id and exc.error and exc.failure.status == 400, exc
    machine = SeedConnection(
        _SeedSink(), window=65536, budget=1 << 20, max_sessions=16, max_data=1 << 16
    )
    machine.id_base = 1 << 16
    try:
        for opcode, fin, payload in seed_frames(data):
            machine.frame(opcode, memoryview(payload), fin)
    except (SeedError, BudgetExceeded) as exc:
        assert str(exc), exc
    assert all(s.sid >> 16 == 1 for s in machine.sessions.values())


TARGETS: dict[str, Callable[[bytes], None]] = {
    "frames": check_frames,
    "messages": check_messages,
    "seed": check_seed,
    "request_head": check_request_head,
    "response_head": check_response_head,
    "chunked_body": check_chunked_body,
    "hostname": check_hostname,
    "socks": check_socks,
    "rules": check_rules,
    "policy": check_policy,
    "config": check_config,
}
