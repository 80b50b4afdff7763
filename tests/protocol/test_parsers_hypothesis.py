"""Property tests for every parser: fastrelay/protocol, the rules file, egress specs, the
TOML config.

test_http.py and test_frames.py pin the behaviour with examples and the
encoder round trips; this file adds the properties that examples cannot give:

* arbitrary (and HTTP-shaped, JSON-shaped, rules-, spec- and TOML-shaped) input,
  fed in any split, raises only the documented error (HttpError 400/431/502,
  FrameError, ControlMessageError, HostnameError, RuleError, PolicyError,
  ConfigError) and always comes back (every parser call runs under its own 5 s timer, see
  must_return);
* a valid input parses to the values it was built from;
* a valid input fed in arbitrary pieces gives the same result as fed whole.

Plus the regression tests for issue 9 item 8: an upstream response that starts
with a blank line used to make the head reader spin forever.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import itertools
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from agent import config as agent_config
from agent.policy import Decision, EgressPolicy, PolicyError
from client_a import config as client_config
from client_a.rules import RuleError, Rules
from fastrelay.config import ConfigError
from fastrelay.protocol.errors import ControlMessageError, FrameError, HttpError
from fastrelay.protocol.frames import (
    CONNECTION_FRAMES,
    HEADER_SIZE,
    MAX_PAYLOAD,
    OPEN_FRAMES,
    FrameType,
    check_header,
    decode_window_increment,
    encode_frame,
    encode_header,
    iter_frames,
)
from fastrelay.protocol.hostname import (
    HostnameError,
    canonical_ipv4,
    format_ipv4,
    normalize_hostname,
    parse_ipv4,
)
from fastrelay.protocol.http import (
    MAX_HEADER_BYTES,
    ProxyRequest,
    RequestHeadParser,
    ResponseHeadRewriter,
)
from fastrelay.protocol.messages import (
    DEFAULT_WINDOW,
    ConnectResponse,
    GoAway,
    Hello,
    Members,
    OpenStream,
    TunnelError,
)
from fastrelay.relay import config as relay_config

# A backstop; the per-call guard below is what stops a spinning parser.
pytestmark = pytest.mark.timeout(60)

PROPERTY = settings(max_examples=300, deadline=None)
# Hostnames, rules, egress specs and TOML config: slower per example (IDNA, ipaddress, a
# config file written and argparse built per example), so fewer examples; `make fuzz` goes far.
MODEST = settings(max_examples=100, deadline=None)
U32 = 2**32 - 1
CALL_LIMIT = 5.0  # seconds; one driver call takes microseconds

# --------------------------------------------------------------------------- termination

F = TypeVar("F", bound=Callable[..., Any])


class ParserSpins(BaseException):
    """A parser call that did not return. Not an Exception, so Hypothesis lets
    it through instead of re-running (and shrinking) the hanging example: the
    test fails at once, where pytest-timeout's Failed would be caught."""


def must_return(func: F) -> F:
    """Run `func` under its own SIGALRM timer, nested inside pytest-timeout's."""

    def on_alarm(signum: int, frame: object) -> None:
        raise ParserSpins(f"{func.__name__} did not return within {CALL_LIMIT} s")

    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        outer_delay, _ = signal.getitimer(signal.ITIMER_REAL)
        outer_handler = signal.signal(signal.SIGALRM, on_alarm)
        started = time.monotonic()
        signal.setitimer(signal.ITIMER_REAL, CALL_LIMIT)
        try:
            return func(*args, **kwargs)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, outer_handler)
            if outer_delay:
                left = outer_delay - (time.monotonic() - started)
                signal.setitimer(signal.ITIMER_REAL, max(left, 1e-3))

    return guarded  # type: ignore[return-value]


# --------------------------------------------------------------------------- splitting


# Where to cut an input: at random relative offsets, byte by byte, or nowhere.
# Drawn as its own argument so no strategy is built per example.
cut_points = st.one_of(
    st.lists(st.integers(min_value=0, max_value=1000), max_size=12),
    st.just("bytewise"),
    st.just("whole"),
)


def cut(data: bytes, cuts: list[int] | str) -> list[bytes]:
    """`data` in pieces, as `cut_points` says."""
    if cuts == "whole" or not data:
        return [data]
    if isinstance(cuts, str):  # "bytewise"
        return [data[i : i + 1] for i in range(len(data))]
    bounds = [0, *sorted({c * len(data) // 1000 for c in cuts}), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


# --------------------------------------------------------------------------- HTTP strategies

# Fragments that steer random bytes into the interesting corners of llhttp.
HTTP_TOKENS = [
    b"GET ",
    b"POST ",
    b"CONNECT ",
    b"http://",
    b"https://",
    b"a.example",
    b"[::1]",
    b":80",
    b":0",
    b"/",
    b"?q",
    b"*",
    b" HTTP/1.1",
    b" HTTP/1.0",
    b"HTTP/1.1 ",
    b"HTTP/1.0 ",
    b"200 OK",
    b"100 Continue",
    b"101 ",
    b"204",
    b"\r\n",
    b"\n",
    b"\r",
    b"\r\n\r\n",
    b"\n\n",
    b" ",
    b"\t",
    b":",
    b"Host: a",
    b"Connection: ",
    b"close",
    b"keep-alive",
    b"Upgrade: websocket",
    b"Content-Length: ",
    b"Transfer-Encoding: chunked",
    b"0",
    b"5",
    b"ffffffffffffffffff",
    b";ext=1",
    b"\x00",
    b"\xff",
]
http_ish = st.lists(
    st.one_of(st.sampled_from(HTTP_TOKENS), st.binary(max_size=6)), max_size=24
).map(b"".join)
head_limits = st.one_of(st.just(MAX_HEADER_BYTES), st.integers(min_value=1, max_value=300))
junk = http_ish | st.binary(max_size=200)

# Text that llhttp takes in a header value or reason phrase; leading and
# trailing whitespace is trimmed by llhttp and stripped by the proxy.
# Mostly picked from a list (character-by-character text is slow to draw).
PRINTABLE = "".join(map(chr, range(0x20, 0x7F)))
field_text = st.one_of(
    st.sampled_from(["", "v", "a b", "text/html, */*", 'q="x y"', "!#$%&'*+-.^_`|~:", "0"]),
    st.text(PRINTABLE, max_size=12),
).map(lambda text: text.strip(" ").encode())
ORDINARY_NAMES = ["Accept", "User-Agent", "X-A", "x-a", "Cookie", "Cache-Control", "X-Long_1"]
REQUEST_HOP_BY_HOP = ["Proxy-Connection", "Keep-Alive", "TE", "Trailer", "Proxy-Authorization"]
RESPONSE_HOP_BY_HOP = ["Proxy-Connection", "Keep-Alive"]
connection_values = st.lists(
    st.sampled_from([*ORDINARY_NAMES, "close", "keep-alive"]), min_size=1, max_size=3
).map(lambda names: ", ".join(names).encode())


def field_lists(names: list[str]) -> st.SearchStrategy[list[tuple[bytes, bytes]]]:
    """Header fields, sometimes with a Connection field (anywhere among them)
    that names some of the others as hop-by-hop."""
    field = st.tuples(st.sampled_from(names).map(str.encode), field_text)
    connection = st.none() | connection_values.map(lambda value: (b"Connection", value))

    def place(parts: tuple[list[tuple[bytes, bytes]], tuple[bytes, bytes] | None, int]) -> Any:
        raw, extra, at = parts
        return raw if extra is None else [*raw[:at], extra, *raw[at:]]

    return st.tuples(st.lists(field, max_size=6), connection, st.integers(0, 6)).map(place)


request_fields = field_lists([*ORDINARY_NAMES, *REQUEST_HOP_BY_HOP, "Host", "Upgrade"])
response_fields = field_lists([*ORDINARY_NAMES, *RESPONSE_HOP_BY_HOP])


def kept_fields(raw: list[tuple[bytes, bytes]], always: set[str]) -> list[tuple[bytes, bytes]]:
    """The spec of hop-by-hop removal: the fixed set plus what Connection
    names, never the framing fields."""
    drop = set(always)
    for name, value in raw:
        if name.lower() == b"connection":
            drop |= {token.strip().lower() for token in value.decode().split(",")}
    drop -= {"content-length", "transfer-encoding"}
    return [(n, v) for n, v in raw if n.decode().lower() not in drop]


def joined(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    out: dict[str, str] = {}
    spelling: dict[str, str] = {}
    for name, value in raw:
        key = spelling.setdefault(name.decode().lower(), name.decode())
        out[key] = f"{out[key]}, {value.decode()}" if key in out else value.decode()
    return out


ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
labels = st.text(ALNUM, min_size=1, max_size=6) | st.sampled_from(["x-1", "xn--p1ai"])
hostnames = st.lists(labels, min_size=1, max_size=3).map(".".join)
request_hosts = st.one_of(
    hostnames.map(lambda h: (h, h)),
    st.ip_addresses(v=4).map(lambda ip: (str(ip), str(ip))),
    st.ip_addresses(v=6).map(lambda ip: (str(ip), f"[{ip}]")),
)
paths = st.lists(st.text(ALNUM + "._~%!$&'()*+,;=:@-", max_size=8), max_size=3).map(
    lambda segments: "".join("/" + segment for segment in segments)
)
# A non-empty query: an empty one (`http://h/?`) is forwarded as `/`.
queries = st.none() | st.text(ALNUM + "=&%._-/?", min_size=1, max_size=12)
methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"])
versions = st.sampled_from(["1.0", "1.1"])
ports = st.integers(min_value=1, max_value=65535)


@dataclasses.dataclass
class BuiltRequest:
    raw: bytes  # as the browser sends it, leading empty lines included
    method: str
    host: str
    port: int
    url: str
    authority: str
    target: bytes
    version: str
    fields: list[tuple[bytes, bytes]]


@st.composite
def proxy_requests(draw: st.DrawFn) -> BuiltRequest:
    method, (host, written), port = draw(methods), draw(request_hosts), draw(st.none() | ports)
    authority = written if port is None else f"{written}:{port}"
    path, query = draw(paths), draw(queries)
    url = f"http://{authority}{path}" + ("" if query is None else f"?{query}")
    version, raw_fields = draw(versions), draw(request_fields)
    lead = b"\r\n" * draw(st.integers(min_value=0, max_value=3))
    line = f"{method} {url} HTTP/{version}\r\n".encode()
    raw = lead + line + b"".join(n + b": " + v + b"\r\n" for n, v in raw_fields) + b"\r\n"
    target = (path or "/").encode() + (b"" if query is None else f"?{query}".encode())
    return BuiltRequest(raw, method, host, port or 80, url, authority, target, version, raw_fields)


eol = st.sampled_from([b"\r\n", b"\n"])
eols = st.lists(eol, min_size=10, max_size=10)
empty_lines = st.lists(eol, max_size=3).map(b"".join)
final_status = st.integers(min_value=200, max_value=599)
interim_status = st.sampled_from([100, 102, 103])


def response_heads(status: st.SearchStrategy[int], final: bool) -> Any:
    @st.composite
    def heads(draw: st.DrawFn) -> tuple[bytes, bytes]:
        """(raw, rewritten) for one response head, with random line endings
        and empty lines before it."""
        version, code, reason = draw(versions), draw(status), draw(field_text)
        raw_fields, endings, lead = draw(response_fields), draw(eols), draw(empty_lines)
        line = f"HTTP/{version} {code}".encode() + (b" " + reason if reason else b"")
        lines = [line, *(n + b": " + v for n, v in raw_fields), b""]
        raw = lead + b"".join(text + end for text, end in zip(lines, endings, strict=False))
        kept = kept_fields(raw_fields, {"connection", "proxy-connection", "keep-alive"})
        rewritten = (
            f"HTTP/{version} {code} ".encode()
            + reason
            + b"\r\n"
            + b"".join(n + b": " + v + b"\r\n" for n, v in kept)
            + (b"Connection: close\r\n" if final else b"")
            + b"\r\n"
        )
        return raw, rewritten

    return heads()


interim_heads = st.lists(response_heads(interim_status, final=False), max_size=2)
final_heads = response_heads(final_status, final=True)
response_bodies = st.binary(max_size=40) | st.just(b"\r\n\r\nHTTP/1.1 200 OK\r\n\r\n")


@st.composite
def responses(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """(what upstream sends, what the browser must get)."""
    heads = [*draw(interim_heads), draw(final_heads)]
    body = draw(response_bodies)
    return b"".join(raw for raw, _ in heads) + body, b"".join(out for _, out in heads) + body


# --------------------------------------------------------------------------- HTTP drivers


@must_return
def feed_request(pieces: list[bytes], max_bytes: int = MAX_HEADER_BYTES) -> tuple[Any, ...]:
    """("ok", request, bytes after the head) | ("pending",) | ("error", status)."""
    parser = RequestHeadParser(max_bytes)
    for i, piece in enumerate(pieces):
        try:
            request = parser.feed(piece)
        except HttpError as exc:
            assert exc.status in (400, 431), exc
            assert exc.reason
            return ("error", exc.status)
        if request is not None:
            # The head, empty lines before it included, is within the limit.
            assert sum(map(len, pieces[: i + 1])) - len(parser.rest) <= max_bytes
            return ("ok", request, parser.rest + b"".join(pieces[i + 1 :]))
    return ("pending",)


@must_return
def feed_response(pieces: list[bytes], max_bytes: int = MAX_HEADER_BYTES) -> tuple[Any, ...]:
    """("ok", output, done) | ("error", 502)."""
    rewriter = ResponseHeadRewriter(max_bytes)
    out = b""
    for piece in pieces:
        try:
            out += rewriter.feed(piece)
        except HttpError as exc:
            assert exc.status == 502, exc
            assert "upstream response head" in exc.reason
            return ("error", 502)
    return ("ok", out, rewriter.done)


def same_outcome(whole: tuple[Any, ...], pieces: tuple[Any, ...]) -> None:
    """Splitting never changes a result; an error stays an error, though which
    limit trips first (431 vs 400) may depend on where the cuts fall."""
    if whole[0] == "error":
        assert pieces[0] == "error"
    else:
        assert pieces == whole


# --------------------------------------------------------------------------- the blank-line hang


@pytest.mark.timeout(5)
def test_response_starting_with_a_blank_line_does_not_hang() -> None:
    # Issue 9 item 8: the reader searched again from `_fed - 3`, found the same
    # blank line, fed llhttp b"" and went round forever.
    raw = b"\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nhi"
    assert ResponseHeadRewriter().feed(raw) == (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
    )


@pytest.mark.timeout(5)
@pytest.mark.parametrize("lead", [b"\n", b"\r\n", b"\n\n", b"\r\n\n\r\n", b"\r\n" * 100])
def test_leading_empty_lines_before_a_response_are_skipped_in_any_split(lead: bytes) -> None:
    raw = lead + b"HTTP/1.0 404 Nope\nX: 1\n\nbody"
    expected = b"HTTP/1.0 404 Nope\r\nX: 1\r\nConnection: close\r\n\r\nbody"
    assert ResponseHeadRewriter().feed(raw) == expected
    for cut in range(len(raw) + 1):
        rewriter = ResponseHeadRewriter()
        assert rewriter.feed(raw[:cut]) + rewriter.feed(raw[cut:]) == expected
    rewriter = ResponseHeadRewriter()
    assert b"".join(rewriter.feed(raw[i : i + 1]) for i in range(len(raw))) == expected


@pytest.mark.timeout(5)
def test_empty_lines_between_an_interim_and_the_final_response_are_skipped() -> None:
    raw = b"HTTP/1.1 100 Continue\r\n\r\n\r\n\nHTTP/1.1 204 No Content\r\n\r\n"
    assert ResponseHeadRewriter().feed(raw) == (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"
    )


@pytest.mark.timeout(5)
@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"\rHTTP/1.1 200 OK\r\n\r\n", "bare CR at byte 0 before the status line"),
        (b"\r\n\r\r\nHTTP/1.1 200 OK\r\n\r\n", "bare CR at byte 2 before the status line"),
        (b"\r\n \r\nHTTP/1.1 200 OK\r\n\r\n", "malformed upstream response head"),
    ],
)
def test_junk_before_the_status_line_is_502(raw: bytes, words: str) -> None:
    with pytest.raises(HttpError) as info:
        ResponseHeadRewriter().feed(raw)
    assert info.value.status == 502
    assert words in info.value.reason


@pytest.mark.timeout(5)
@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"\nGET http://a/ HTTP/1.1\r\n\r\n", "bare LF at byte 0 before the request line"),
        (b"\r\n\n\r\nGET http://a/ HTTP/1.1\r\n\r\n", "bare LF at byte 2"),
        (b"\r\rGET http://a/ HTTP/1.1\r\n\r\n", "bare CR at byte 0 before the request line"),
    ],
)
def test_junk_before_the_request_line_is_400(raw: bytes, words: str) -> None:
    with pytest.raises(HttpError) as info:
        RequestHeadParser().feed(raw)
    assert info.value.status == 400
    assert words in info.value.reason


@pytest.mark.timeout(5)
@pytest.mark.parametrize("raw", [b"CONNECT a:1\n\r\n\r\n", b"CONNECT =.e:4M-4\n\r\n\r\nearly"])
def test_http09_request_line_is_400_in_every_split(raw: bytes) -> None:
    # Found by fuzz_request_head (issue 10): llhttp ends an HTTP/0.9 request line's head at
    # "\n\r\n", before the CRLFCRLF the reader waits for; the next feed raised
    # RuntimeError ("the request head is already complete") instead of a 400.
    splits = [[raw[:i], raw[i:]] for i in range(len(raw) + 1)]
    for pieces in [*splits, [raw[i : i + 1] for i in range(len(raw))]]:
        parser = RequestHeadParser()
        with pytest.raises(HttpError) as info:
            for piece in pieces:
                assert parser.feed(piece) is None
        assert info.value.status == 400


@pytest.mark.timeout(5)
@pytest.mark.parametrize("code", [b"000", b"004", b"099"])
def test_status_code_below_100_is_502(code: bytes) -> None:
    # Found by fuzz_response_head (issue 10): llhttp reads "004" as 4, which client_a wrote
    # on as "HTTP/1.0 4 1", a status line no browser can read.
    raw = b"\r\n\nHTTP/1.0 " + code + b" 1\n\nX\ny\n"
    assert feed_response([raw]) == ("error", 502)
    assert feed_response([raw[i : i + 1] for i in range(len(raw))]) == ("error", 502)
    with pytest.raises(HttpError, match=f"status code {code.decode()} is below 100"):
        ResponseHeadRewriter().feed(raw)


@pytest.mark.timeout(5)
def test_endless_empty_lines_hit_the_head_limit() -> None:
    # The empty lines count towards the head limit: the reader holds at most
    # max_header_bytes of them, then gives up with a precise reason.
    rewriter = ResponseHeadRewriter(max_header_bytes=100)
    with pytest.raises(HttpError) as info:
        for _ in range(200):
            assert rewriter.feed(b"\r\n") == b""
    assert info.value.status == 502
    assert "exceeds 100 bytes (102 bytes of empty lines and no status line yet)" in (
        info.value.reason
    )
    parser = RequestHeadParser(max_header_bytes=100)
    with pytest.raises(HttpError) as info:
        for _ in range(200):
            assert parser.feed(b"\r\n") is None
    assert info.value.status == 431
    assert "no request line yet" in info.value.reason


@PROPERTY
@given(st.integers(min_value=0, max_value=200), st.integers(min_value=1, max_value=300))
def test_empty_lines_count_towards_the_limit_exactly(count: int, limit: int) -> None:
    head = b"HTTP/1.1 200 OK\r\n\r\n"
    raw = b"\n" * count + head
    outcome = feed_response([raw], limit)
    if len(raw) <= limit:
        assert outcome == ("ok", b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", True)
    else:
        assert outcome == ("error", 502)


# --------------------------------------------------------------------------- request heads


@PROPERTY
@given(junk, cut_points, head_limits)
@example(b"\r\n\r\n", "bytewise", MAX_HEADER_BYTES)
@example(b"\r", "whole", MAX_HEADER_BYTES)
def test_request_head_arbitrary_bytes(whole: bytes, cuts: Any, limit: int) -> None:
    same_outcome(feed_request([whole], limit), feed_request(cut(whole, cuts), limit))


@PROPERTY
@given(proxy_requests(), cut_points)
def test_request_head_round_trip_in_any_split(built: BuiltRequest, cuts: Any) -> None:
    stream = built.raw + b"tail\r\n\r\n"
    outcome = feed_request(cut(stream, cuts))
    assert outcome == feed_request([stream])
    assert outcome[0] == "ok", outcome
    request: ProxyRequest = outcome[1]
    assert outcome[2] == b"tail\r\n\r\n"
    assert (request.method, request.host, request.port) == (built.method, built.host, built.port)
    assert request.url == built.url
    assert request.headers == joined(built.fields)
    assert not request.is_connect
    # The head for upstream is origin-form, Host from the URL, hop-by-hop gone.
    kept = kept_fields(
        built.fields,
        {"connection", "proxy-connection", "keep-alive", "proxy-authorization"}
        | {"te", "trailer", "upgrade", "host"},
    )
    assert request.head == (
        f"{built.method} ".encode()
        + built.target
        + f" HTTP/{built.version}\r\nHost: {built.authority}\r\n".encode()
        + b"".join(n + b": " + v + b"\r\n" for n, v in kept)
        + b"Connection: close\r\n\r\n"
    )


@PROPERTY
@given(request_hosts, ports, st.binary(max_size=20), cut_points)
def test_connect_head_round_trip_in_any_split(
    host: tuple[str, str], port: int, early: bytes, cuts: Any
) -> None:
    authority = f"{host[1]}:{port}"
    raw = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode() + early
    assert feed_request(cut(raw, cuts)) == (
        "ok",
        ProxyRequest("CONNECT", host[0], port, f"https://{authority}", {"Host": authority}, b""),
        early,
    )


@PROPERTY
@given(proxy_requests(), st.integers(min_value=1, max_value=400))
def test_request_head_limit_is_exact(built: BuiltRequest, limit: int) -> None:
    # Empty lines before the request line count towards the limit.
    outcome = feed_request([built.raw], limit)
    assert outcome[0] == ("ok" if len(built.raw) <= limit else "error")
    if outcome[0] == "error":
        assert outcome[1] == 431


# --------------------------------------------------------------------------- response heads


@PROPERTY
@given(junk, cut_points, head_limits)
@example(b"\r\n\r\nHTTP/1.1 200 OK\r\n\r\n", "whole", 64)
@example(b"\n\n", "bytewise", MAX_HEADER_BYTES)
def test_response_head_arbitrary_bytes(whole: bytes, cuts: Any, limit: int) -> None:
    same_outcome(feed_response([whole], limit), feed_response(cut(whole, cuts), limit))


@PROPERTY
@given(responses(), cut_points)
def test_response_head_rewrite_in_any_split(response: tuple[bytes, bytes], cuts: Any) -> None:
    raw, rewritten = response
    assert feed_response(cut(raw, cuts)) == ("ok", rewritten, True)
    assert feed_response([raw]) == ("ok", rewritten, True)
    # What client_a sends on is itself a valid response that rewrites to itself.
    assert feed_response([rewritten]) == ("ok", rewritten, True)


# --------------------------------------------------------------------------- request bodies

NEXT_REQUEST = b"GET http://evil.example/ HTTP/1.1\r\nHost: evil.example\r\n\r\n"
CHUNKED = b"Transfer-Encoding: chunked\r\n"


@must_return
def feed_body(framing: bytes, pieces: list[bytes]) -> tuple[Any, ...]:
    """("ok", bytes counted as body, complete) | ("error", 400)."""
    parser = RequestHeadParser()
    assert parser.feed(b"POST http://a.example/ HTTP/1.1\r\n" + framing + b"\r\n") is not None
    tracker = parser.body_tracker()
    used = 0
    for piece in pieces:
        was_complete = tracker.complete
        try:
            n = tracker.feed(piece)
        except HttpError as exc:
            assert exc.status == 400, exc
            assert "malformed request body" in exc.reason
            return ("error", 400)
        assert 0 <= n <= len(piece)
        if was_complete:
            assert n == 0
        elif not tracker.complete:
            assert n == len(piece)
        used += n
    return ("ok", used, tracker.complete)


size_formats = st.sampled_from(["{:x}", "{:X}", "{:04x}"])
extensions = st.sampled_from([b"", b";a=1", b';name="q v"', b";flag"])
chunk_data = st.lists(st.binary(min_size=1, max_size=30), max_size=5)
trailers = st.lists(st.sampled_from([b"X-T: 1\r\n", b"Expires: never\r\n"]), max_size=2)
body_tails = st.sampled_from([b"", NEXT_REQUEST, b"\r\n\r\n0\r\n\r\n", b"\n\n\n"])


@st.composite
def chunked_bodies(draw: st.DrawFn) -> bytes:
    def size_line(n: int) -> bytes:
        return draw(size_formats).format(n).encode() + draw(extensions) + b"\r\n"

    body = b"".join(size_line(len(c)) + c + b"\r\n" for c in draw(chunk_data))
    return body + size_line(0) + b"".join(draw(trailers)) + b"\r\n"


@PROPERTY
@given(chunked_bodies(), body_tails, cut_points)
def test_chunked_body_ends_exactly_in_any_split(body: bytes, tail: bytes, cuts: Any) -> None:
    assert feed_body(CHUNKED, cut(body + tail, cuts)) == ("ok", len(body), True)


@PROPERTY
@given(st.binary(max_size=60), st.binary(max_size=60), cut_points)
def test_content_length_body_ends_exactly_in_any_split(body: bytes, tail: bytes, cuts: Any) -> None:
    framing = f"Content-Length: {len(body)}\r\n".encode()
    assert feed_body(framing, cut(body + tail, cuts)) == ("ok", len(body), True)


@PROPERTY
@given(junk, cut_points)
@example(b"zz\r\n", "whole")
@example(b"0\r\n\r\n" + NEXT_REQUEST, "bytewise")
def test_chunked_body_arbitrary_bytes(whole: bytes, cuts: Any) -> None:
    same_outcome(feed_body(CHUNKED, [whole]), feed_body(CHUNKED, cut(whole, cuts)))


# --------------------------------------------------------------------------- mux frames

stream_ids = st.integers(min_value=1, max_value=U32)
increments = st.integers(min_value=1, max_value=U32)
frame_flags = st.integers(min_value=0, max_value=255)
payloads = st.binary(max_size=40)


@must_return
def walk(message: bytes) -> tuple[list[tuple[int, int, int, int, int]], FrameError | None]:
    """Every frame iter_frames yields, and the FrameError it stopped with."""
    found: list[tuple[int, int, int, int, int]] = []
    try:
        for frame in iter_frames(memoryview(message)):
            found.append(frame)
    except FrameError as exc:
        assert exc.kind == "malformed_frame"
        return found, exc
    return found, None


@st.composite
def valid_frames(draw: st.DrawFn) -> bytes:
    frame_type = draw(st.sampled_from(FrameType))
    stream_id = 0 if frame_type in CONNECTION_FRAMES else draw(stream_ids)
    if frame_type is FrameType.FIN:
        payload = b""
    elif frame_type is FrameType.WINDOW_UPDATE:
        payload = draw(increments).to_bytes(4, "big")
    elif frame_type is FrameType.PROBE:
        payload = draw(st.binary(min_size=8, max_size=8) | st.binary(min_size=16, max_size=16))
    else:
        payload = draw(payloads)
    return encode_frame(frame_type, stream_id, payload, flags=draw(frame_flags))


@PROPERTY
@given(
    st.one_of(
        st.binary(max_size=200),
        st.lists(st.one_of(valid_frames(), st.binary(max_size=12)), max_size=6).map(b"".join),
    )
)
def test_iter_frames_arbitrary_bytes(message: bytes) -> None:
    found, error = walk(message)
    # The frames yielded tile the message from its start, each one well formed.
    offset = 0
    for frame_type, _, stream_id, payload_at, length in found:
        assert payload_at == offset + HEADER_SIZE
        check_header(frame_type, stream_id, length, len(message) - payload_at)
        offset = payload_at + length
    assert (offset == len(message)) == (error is None)


@PROPERTY
@given(st.lists(valid_frames(), max_size=8), st.sets(st.integers(min_value=0, max_value=8)))
def test_frames_decode_the_same_whole_or_in_messages(batch: list[bytes], cuts: set[int]) -> None:
    # A batch of frames split at frame boundaries into several WebSocket
    # messages decodes to the same frames as the batch in one message.
    def frames_of(message: bytes) -> list[tuple[int, int, int, bytes]]:
        found, error = walk(message)
        assert error is None
        return [(t, f, s, message[o : o + n]) for t, f, s, o, n in found]

    whole = frames_of(b"".join(batch))
    bounds = [0, *sorted(c for c in cuts if c <= len(batch)), len(batch)]
    parts = [b"".join(batch[a:b]) for a, b in itertools.pairwise(bounds)]
    assert [frame for part in parts for frame in frames_of(part)] == whole
    assert [encode_frame(t, s, p, flags=f) for t, f, s, p in whole] == batch


KNOWN_TYPES = {int(t) for t in FrameType}
CONNECTION_TYPES = {int(t) for t in CONNECTION_FRAMES}


@PROPERTY
@given(
    st.integers(0, 255),
    st.integers(0, 3) | st.integers(0, U32),
    st.one_of(st.integers(0, 16), st.integers(0, U32), st.just(MAX_PAYLOAD + 1)),
    st.integers(0, 16) | st.integers(0, U32),
)
def test_check_header_matches_its_specification(
    frame_type: int, stream_id: int, length: int, available: int
) -> None:
    valid = (
        frame_type in KNOWN_TYPES
        and length <= available
        and length <= MAX_PAYLOAD
        and (frame_type in CONNECTION_TYPES) == (stream_id == 0)
        and (frame_type != FrameType.WINDOW_UPDATE or length == 4)
        and (frame_type != FrameType.FIN or length == 0)
        and (frame_type != FrameType.PROBE or length in (8, 16))
    )
    try:
        check_header(frame_type, stream_id, length, available)
    except FrameError as exc:
        assert not valid, exc
        assert exc.kind == "malformed_frame"
    else:
        assert valid
    # The same header inside a message walks the same way.
    if length <= 64 and length == available:
        found, error = walk(encode_header(frame_type, stream_id, length) + bytes(length))
        assert (error is None) == valid
        assert len(found) == int(valid)


@PROPERTY
@given(st.binary(min_size=4, max_size=4))
def test_window_increment_arbitrary_payload(payload: bytes) -> None:
    value = int.from_bytes(payload, "big")
    if value == 0:
        with pytest.raises(FrameError, match="zero increment"):
            decode_window_increment(memoryview(payload))
    else:
        assert decode_window_increment(memoryview(payload)) == value


# --------------------------------------------------------------------------- control messages

DECODERS: dict[FrameType, Any] = {
    FrameType.CONNECT: lambda p: OpenStream.decode(FrameType.CONNECT, p),
    FrameType.REQUEST: lambda p: OpenStream.decode(FrameType.REQUEST, p),
    FrameType.CONNECT_RESPONSE: ConnectResponse.decode,
    FrameType.TUNNEL_ERROR: TunnelError.decode,
    FrameType.HELLO: Hello.decode,
    FrameType.GOAWAY: GoAway.decode,
    FrameType.MEMBERS: Members.decode,
}
CONTROL_KINDS = sorted(DECODERS)
FIELD_NAMES = [
    "sessionId",
    "method",
    "url",
    "headers",
    "window",
    "statusCode",
    "statusDescription",
    "error",
    "reason",
    "version",
    "instanceId",
    "streamIdBase",
    "streamIdCount",
    "instances",
]
# Values near every check: types, bounds, URL shapes, status codes, ranges.
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.sampled_from([0, 1, 99, 100, 200, 503, 599, 600, 2**31 - 1, 2**31, 2**32, -1]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(
        [
            "https://a.example:443",
            "http://[::1]:8080/x",
            "https://[::1",
            "http://:0",
            "ws://h",
            "https://h:65536",
            "relay-a",
            "",
        ]
    ),
)
windows_near_bounds = st.sampled_from([0, 1, 2**31 - 1, 2**31, True, None, 1.5]) | st.integers(
    min_value=1, max_value=2**31 - 1
)
# One level of nesting reaches every check (headers maps, instance lists);
# st.recursive costs several times as much per example.
json_values = st.one_of(
    json_scalars,
    st.lists(json_scalars, max_size=3),
    st.dictionaries(st.text(max_size=6), json_scalars, max_size=3),
)
doc_fields = st.dictionaries(st.sampled_from(FIELD_NAMES), json_values, max_size=6)


@st.composite
def control_payloads(draw: st.DrawFn) -> tuple[FrameType, bytes]:
    """A frame type and a JSON object, usually of that type, holding any of
    the known fields with random values (usually wrong, sometimes right)."""
    kind = draw(st.sampled_from(CONTROL_KINDS))
    doc = {"type": draw(st.sampled_from([kind.name, kind.name, kind.name, "GOAWAY", 7]))}
    return kind, orjson.dumps(doc | draw(doc_fields))


@must_return
def decode(kind: FrameType, payload: bytes | memoryview) -> Any:
    """The decoded message, or None if it was refused with ControlMessageError."""
    try:
        return DECODERS[kind](payload)
    except ControlMessageError as exc:
        assert exc.kind == "malformed_control"
        return None


def reencoded(kind: FrameType, message: Any) -> bytes:
    frame = message.encode() if kind in CONNECTION_FRAMES else message.encode(7)
    ((_, _, _, offset, length),) = iter_frames(memoryview(frame))
    return frame[offset : offset + length]


def stable_after_encoding(message: Any) -> Any:
    """What decode(encode(message)) must give: a failed CONNECT_RESPONSE
    carries no window, so the receiver sees the default."""
    if isinstance(message, ConnectResponse) and not message.ok:
        return dataclasses.replace(message, window=DEFAULT_WINDOW)
    return message


@PROPERTY
@given(
    st.sampled_from(CONTROL_KINDS),
    st.one_of(
        st.binary(max_size=80),
        st.sampled_from([b"[" * 2000, b'{"a":' * 2000, b"1e400", b"-0", b'"\\ud800"']),
        json_values.map(orjson.dumps),
    ),
)
def test_control_decoders_arbitrary_bytes(kind: FrameType, payload: bytes) -> None:
    decode(kind, payload)


@PROPERTY
@given(control_payloads(), st.binary(max_size=10), st.binary(max_size=10))
def test_control_decoders_json_objects_round_trip(
    case: tuple[FrameType, bytes], before: bytes, after: bytes
) -> None:
    kind, payload = case
    message = decode(kind, payload)
    # The relay decodes payload views into picows' buffer, never copies.
    view = memoryview(before + payload + after)[len(before) : len(before) + len(payload)]
    assert decode(kind, view) == message
    if message is not None:
        # Anything a decoder accepts, its encoder writes back to the same values.
        assert decode(kind, reencoded(kind, message)) == stable_after_encoding(message)


def outcome(decoder: Callable[[], Any]) -> Any:
    """A decoder's message, or the text of the ControlMessageError it raised."""
    try:
        return decoder()
    except ControlMessageError as exc:
        return f"error: {exc}"


def mostly(valid: st.SearchStrategy[Any], wrong: st.SearchStrategy[Any]) -> Any:
    """`valid` three times in four, roughly: one_of picks its branches evenly."""
    return st.one_of(valid, valid, valid, wrong)


# The open's fields, with a pool: each one usually well typed (so the fast path
# takes a good share of the messages), sometimes absent or wrong, with values near
# each check.
open_docs = st.fixed_dictionaries(
    {
        "sessionId": mostly(st.text(max_size=4), json_values),
        "method": mostly(st.sampled_from(["CONNECT", "GET"]), json_scalars),
        "url": mostly(
            st.sampled_from(["https://a.example:443", "HTTP://A:1", "https://u@h:8/p"]),
            json_scalars,
        ),
    },
    optional={
        "headers": mostly(
            st.dictionaries(st.text(max_size=4), st.text(max_size=4)),
            st.dictionaries(st.text(max_size=4), json_scalars, min_size=1) | json_values,
        ),
        "window": windows_near_bounds,
        "pool": mostly(st.sampled_from(["default", "eu-1", "Bad!", ""]), json_scalars),
    },
)
answer_docs = st.fixed_dictionaries(
    {
        "sessionId": mostly(st.text(max_size=4), json_values),
        "statusCode": mostly(st.sampled_from([99, 100, 200, 502, 599, 600, True]), json_scalars),
    },
    optional={
        "error": mostly(st.text(max_size=4), json_scalars),
        "window": windows_near_bounds,
        "reason": mostly(st.text(max_size=4), json_scalars),
    },
)


VALID_OPEN = {"sessionId": "s", "method": "CONNECT", "url": "https://h:1", "headers": {}}


@PROPERTY
@given(st.sampled_from(sorted(OPEN_FRAMES)), open_docs, answer_docs)
@example(FrameType.CONNECT, VALID_OPEN, {"sessionId": "s", "statusCode": 200})
@example(FrameType.CONNECT, VALID_OPEN | {"pool": "eu-1", "window": 9}, {"statusCode": 200})
@example(FrameType.CONNECT, VALID_OPEN | {"pool": None}, {"sessionId": "s", "statusCode": True})
@example(FrameType.CONNECT, VALID_OPEN | {"url": "ftp://h"}, {"sessionId": "s", "error": None})
@example(
    FrameType.REQUEST,
    VALID_OPEN | {"window": 0},
    {"sessionId": "s", "statusCode": 200, "window": 2**31},
)
@example(
    FrameType.CONNECT,
    VALID_OPEN | {"headers": {"a": 1}},
    {"sessionId": "s", "statusCode": 200, "reason": 7},
)
@example(
    FrameType.CONNECT,
    VALID_OPEN | {"pool": "Bad!"},
    {"sessionId": "s", "statusCode": 200, "error": 5},
)
def test_control_decoders_fast_path_agrees_with_field_by_field(
    kind: FrameType, open_doc: dict[str, Any], answer_doc: dict[str, Any]
) -> None:
    # OpenStream and ConnectResponse decode a well-typed message the fast way; whatever
    # they take that way, the field-by-field decoder gives the same message or error.
    payload = orjson.dumps({"type": kind.name} | open_doc)
    fields = orjson.loads(payload)
    assert outcome(lambda: OpenStream.decode(kind, payload)) == outcome(
        lambda: OpenStream._decode_fields(kind, fields)
    )
    payload = orjson.dumps({"type": "CONNECT_RESPONSE"} | answer_doc)
    fields = orjson.loads(payload)
    assert outcome(lambda: ConnectResponse.decode(payload)) == outcome(
        lambda: ConnectResponse._decode_fields(fields)
    )


short_text = st.text(max_size=10)
windows = st.integers(min_value=1, max_value=2**31 - 1)
messages = st.one_of(
    st.builds(
        lambda kind, sid, url, method, headers, window: OpenStream(
            kind, sid, "", 0, method, url, headers, window
        ),
        st.sampled_from(sorted(OPEN_FRAMES)),
        short_text,
        st.sampled_from(["https://a.example:443", "http://[::1]:8080/x", "http://h/p?q"]),
        short_text,
        st.dictionaries(short_text, short_text, max_size=3),
        windows,
    ),
    st.builds(
        ConnectResponse,
        short_text,
        st.integers(100, 599),
        st.none() | short_text,
        windows,
        st.none() | st.sampled_from(["refused", "dns", "no_agent"]),
    ),
    st.builds(TunnelError, short_text, short_text),
    st.builds(
        lambda iid, base, count: Hello(iid, 1, base, count),
        short_text,
        st.integers(1, 2**31),
        st.integers(0, 2**31),
    ),
    st.builds(GoAway, short_text),
    st.builds(
        Members, st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=5).map(tuple)
    ),
)
KIND_OF = {
    ConnectResponse: FrameType.CONNECT_RESPONSE,
    TunnelError: FrameType.TUNNEL_ERROR,
    Hello: FrameType.HELLO,
    GoAway: FrameType.GOAWAY,
    Members: FrameType.MEMBERS,
}


@PROPERTY
@given(messages)
def test_control_messages_round_trip(message: Any) -> None:
    # Covers what test_frames.py's round trips leave out: ConnectResponse.reason
    # and OpenStream with an explicit url (host and port come from the url).
    kind = message.kind if isinstance(message, OpenStream) else KIND_OF[type(message)]
    decoded = decode(kind, reencoded(kind, message))
    expected = stable_after_encoding(message)
    if isinstance(message, OpenStream):
        assert (decoded.host, decoded.port) != ("", 0)
        expected = dataclasses.replace(expected, host=decoded.host, port=decoded.port)
    if isinstance(message, Members):
        expected = Members(tuple(sorted(set(message.instances))))
    assert decoded == expected


# --------------------------------------------------------------------------- hostnames

name_labels = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=10).filter(
    lambda label: not label.isdigit()
)
# A last label that is not a number (0x1f and 12 are IPv4 numbers, so the name is an address).
last_labels = st.text("ghijklmnopqrstuvwxyz", min_size=1, max_size=6)
host_text = st.one_of(
    st.text(max_size=30),
    st.lists(
        st.sampled_from(
            [
                "a",
                "0x",
                "0X1f",
                "1",
                "09",
                "255",
                "256",
                "4294967295",
                ".",
                "..",
                "[",
                "]",
                ":",
                "::",
                "%",
                "xn--",
                "\uff0e",
                "\u3002",
                "\uff52",
                "\u00df",
                "\u200d",
                "_",
                "-",
                "\udcff",
                " ",
                "é",
                "A",
            ]
        ),
        max_size=12,
    ).map("".join),
)


def ipv4_spellings(value: int) -> st.SearchStrategy[str]:
    """`value` written as browsers read it: 1 to 4 parts, each decimal, 0x hex or 0 octal."""

    def number(n: int, style: str) -> str:
        return {"dec": str(n), "hex": f"0x{n:x}", "HEX": f"0X{n:X}", "oct": f"0{n:o}"}[style]

    def spell(parts: int, styles: list[str], dot: bool) -> str:
        octets = list(value.to_bytes(4, "big"))
        head, tail = octets[: parts - 1], int.from_bytes(bytes(octets[parts - 1 :]), "big")
        numbers = [*head, tail]
        return ".".join(map(number, numbers, styles)) + ("." if dot else "")

    styles = st.lists(st.sampled_from(["dec", "hex", "HEX", "oct"]), min_size=4, max_size=4)
    return st.builds(spell, st.integers(1, 4), styles, st.booleans())


@must_return
def normalised(host: str) -> str | None:
    """The normalised host, or None if refused with HostnameError (with a message)."""
    try:
        return normalize_hostname(host)
    except HostnameError as exc:
        assert str(exc).startswith("invalid host "), exc
        return None


@MODEST
@given(host_text)
@example("1.2.3.4..")
@example("0x.0x.0x.0x")
def test_hostname_arbitrary_text(host: str) -> None:
    name = normalised(host)
    value = parse_ipv4(host)
    assert value is None or 0 <= value < 2**32
    if name is not None:
        assert normalised(name) == name  # idempotent: policy and dial see one name
        if "%" not in name:  # an IPv6 zone is kept as given
            assert name.isascii() and name == name.lower()
        if value is not None:
            assert name == format_ipv4(value)


@MODEST
@given(st.lists(name_labels, max_size=3), last_labels, st.booleans(), st.randoms())
def test_hostname_built_from_labels_normalises_to_them(
    labels: list[str], last: str, dot: bool, random: Any
) -> None:
    name = ".".join([*labels, last])
    written = "".join(c.upper() if random.random() < 0.3 else c for c in name)
    assert normalised(written + ("." if dot else "")) == name


@MODEST
@given(st.integers(0, U32).flatmap(lambda v: st.tuples(st.just(v), ipv4_spellings(v))))
def test_hostname_ipv4_in_any_spelling_is_its_dotted_quad(case: tuple[int, str]) -> None:
    value, spelling = case
    assert parse_ipv4(spelling) == value
    assert canonical_ipv4(spelling) == format_ipv4(value)
    assert normalised(spelling) == format_ipv4(value)


@MODEST
@given(st.ip_addresses(v=6), st.booleans(), st.booleans())
def test_hostname_ipv6_is_unbracketed_and_lowercased(ip: Any, brackets: bool, upper: bool) -> None:
    text = str(ip).upper() if upper else str(ip)
    assert normalised(f"[{text}]" if brackets else text) == str(ip)


# --------------------------------------------------------------------------- rules files

RULE_TOKENS = [
    "a.example",
    "*.",
    ".",
    "*",
    "#",
    " ",
    "\t",
    "\n",
    "\r\n",
    "/",
    "/8",
    "/33",
    ":",
    "::",
    "::ffff:",
    "10.0.0.0",
    "1.2.3",
    "0x",
    "1",
    "256",
    "2001:db8::",
    "[",
    "]",
    "[pool ",
    "@",
    "@corp",
    "fallback=",
    "direct",
    "=",
    "é",
    "_",
    "-",
    "a" * 64,
]
rule_text = st.one_of(
    st.text(max_size=40),
    st.lists(st.sampled_from(RULE_TOKENS) | st.text(max_size=3), max_size=20).map("".join),
)


@must_return
def parsed_rules(text: str) -> Rules | RuleError:
    try:
        return Rules.parse(text, "r.txt")
    except RuleError as exc:
        prefixes = (
            "invalid pattern ",
            "invalid rule ",
            "invalid section header ",
            "unknown section ",
        )
        assert str(exc).startswith(tuple(f"r.txt:{exc.line}: {p}" for p in prefixes)), exc
        # The line named is the bad one: it holds a pattern, and every line before it is fine.
        lines = text.splitlines()
        assert 1 <= exc.line <= len(lines)
        assert lines[exc.line - 1].partition("#")[0].strip()
        Rules.parse("\n".join(lines[: exc.line - 1]))
        return exc


@MODEST
@given(rule_text, st.lists(st.text(max_size=12), max_size=3))
@example("0x\n", [])
@example("a.0x1f", [])
def test_rules_arbitrary_text(text: str, hosts: list[str]) -> None:
    rules = parsed_rules(text)
    # Bytes as a file holds them (UTF-8, maybe a BOM) give the same outcome.
    for encoded in (text.encode("utf-8", "surrogatepass"), b"\xef\xbb\xbf" + text.encode()):
        try:
            again = Rules.decode(encoded, "r.txt")
        except RuleError as exc:
            assert isinstance(rules, RuleError) or "UTF-8" in str(exc), exc
        else:
            assert not isinstance(rules, RuleError) and len(again) == len(rules)
    if isinstance(rules, Rules):
        for host in hosts:
            rule = rules.lookup(host)
            assert rules.matches(host) is (rule is not None)


@MODEST
@given(st.binary(max_size=60))
def test_rules_arbitrary_bytes(data: bytes) -> None:
    try:
        Rules.decode(data, "r.txt")
    except RuleError as exc:
        assert exc.source == "r.txt" and exc.line >= 1 and exc.problem


pattern_names = st.lists(name_labels, max_size=2).flatmap(
    lambda labels: last_labels.map(lambda last: ".".join([*labels, last]))
)
networks = st.one_of(
    st.tuples(st.ip_addresses(v=4), st.integers(0, 32)),
    st.tuples(st.ip_addresses(v=6), st.integers(0, 128)),
).map(lambda case: ipaddress.ip_network(case, strict=False))


@MODEST
@given(
    st.lists(st.tuples(st.sampled_from(["", "*.", "."]), pattern_names), max_size=5),
    st.lists(networks, max_size=3),
    st.sampled_from(["\n", "\r\n"]),
    st.sampled_from(["", "   # note", "\t#"]),
)
def test_rules_built_from_patterns_match_what_they_name(
    names: list[tuple[str, str]], nets: list[Any], newline: str, comment: str
) -> None:
    lines = [prefix + name.upper() + comment for prefix, name in names]
    lines += [str(net) for net in nets]
    rules = Rules.decode(("# rules" + newline + newline.join(lines)).encode(), "r.txt")
    assert len(rules) == len(names) + len(nets)

    def named(host: str) -> bool:
        """The spec of matching: exact and domain patterns name the host itself; subdomain
        and domain patterns every name below it."""
        return any(
            (host == n and p != "*.") or (p != "" and host.endswith("." + n)) for p, n in names
        )

    for _, name in names:
        for host in (name, "x." + name, name.partition(".")[2]):
            if host:
                assert rules.matches(host) == named(host), host
                assert rules.matches(host.upper() + ".") == named(host), host
    for net in nets:
        last = net.broadcast_address
        host = f"[{last}]" if net.version == 6 else str(last)
        if not (net.version == 6 and last.ipv4_mapped):
            assert rules.matches(host), (net, host)


# --------------------------------------------------------------------------- egress specs

spec_text = st.one_of(
    rule_text,
    st.lists(st.sampled_from([*RULE_TOKENS, ":443", ":0", ":65536", "]:80", ":x"]), max_size=8).map(
        "".join
    ),
)


@MODEST
@given(st.lists(spec_text, max_size=3), st.lists(spec_text, max_size=3), host_text, ports)
def test_egress_specs_arbitrary_text(
    allow: list[str], deny: list[str], host: str, port: int
) -> None:
    try:
        policy = must_return(EgressPolicy)(allow=allow, deny=deny, local_addresses=())
    except PolicyError as exc:
        assert str(exc).startswith(("invalid --allow spec ", "invalid --deny spec ")), exc
        return
    for ip in ("127.0.0.1", "93.184.216.34", "2002:7f00:1::", "::ffff:10.0.0.1"):
        assert policy.check(host, ip, port).reason
    decision = policy.check_name(host, port)
    assert decision is None or not decision.allowed


@MODEST
@given(
    st.one_of(
        st.tuples(st.sampled_from(["", "*.", "."]), pattern_names).map("".join),
        networks.map(str),
    ),
    st.none() | ports,
    ports,
)
def test_egress_spec_built_from_values_denies_what_it_names(
    target: str, port: int | None, other: int
) -> None:
    bracketed = f"[{target}]" if ":" in target else target
    spec = target if port is None else f"{bracketed}:{port}"
    policy = EgressPolicy(deny=[spec], local_addresses=())
    assert repr(policy) == f"EgressPolicy(allow=[], deny={[spec]!r})"
    at = port or other
    if ":" in target or "/" in target:
        net = ipaddress.ip_network(target)
        ip = str(net.network_address)
        if isinstance(net, ipaddress.IPv6Network) and net.network_address.ipv4_mapped:
            return
        decision = policy.check("a.example", ip, at)
    else:
        name = target.lstrip("*.") if not target.startswith("*.") else "x." + target[2:]
        decision = policy.check(name, "93.184.216.34", at)
        assert policy.check_name(name, at) == decision
    assert decision == Decision(False, f"denied by --deny {spec}")
    if port is not None and other != port:
        assert policy.check("a.example", "93.184.216.34", other).allowed


# --------------------------------------------------------------------------- TOML config

CONFIG_DIR = Path(tempfile.mkdtemp(prefix="fastrelay-config-"))
LOADERS = {"client": client_config.load, "agent": agent_config.load, "relay": relay_config.load}
TOKENS = {"FASTRELAY_TOKEN": "t", "FASTRELAY_CLIENT_TOKENS": "c", "FASTRELAY_AGENT_TOKENS": "a"}
TOML_TOKENS = [
    "listen",
    "relay",
    "window",
    "rules",
    "token_file",
    "allow",
    "deny",
    "workers",
    "admin",
    "max-frame-size",
    "log_level",
    " = ",
    "=",
    '"',
    "'",
    '"""',
    "[",
    "]",
    "[[",
    "]]",
    "{",
    "}",
    ",",
    "\n",
    "#",
    "1",
    "0",
    "-1",
    "1e400",
    "nan",
    "inf",
    "true",
    '"64KiB"',
    '"ws://h:1"',
    '"127.0.0.1:1"',
    '"auto"',
    "1979-05-27",
    "\\u0000",
    "é",
    "\udcff",
]
toml_text = st.one_of(
    st.text(max_size=40),
    st.lists(st.sampled_from(TOML_TOKENS) | st.text(max_size=3), max_size=24).map("".join),
)


@must_return
def loaded(program: str, data: bytes) -> Any:
    """The program's config from a TOML file holding `data`, or None on ConfigError."""
    path = CONFIG_DIR / "c.toml"
    path.write_bytes(data)
    try:
        return LOADERS[program](["--config", str(path)], TOKENS)
    except ConfigError as exc:
        assert str(exc), exc
        return None


@MODEST
@given(st.sampled_from(sorted(LOADERS)), toml_text)
@example("client", "x = " + "[" * 3000)
@example("agent", 'rules = "' + "a/" * 3000 + '"')
def test_toml_config_arbitrary_text(program: str, text: str) -> None:
    loaded(program, text.encode("utf-8", "surrogatepass"))


@MODEST
@given(st.sampled_from(sorted(LOADERS)), st.binary(max_size=60))
def test_toml_config_arbitrary_bytes(program: str, data: bytes) -> None:
    loaded(program, data)


def toml_string(text: str) -> str:
    return (
        '"'
        + "".join(c if c.isalnum() or c in " .:-_/*" else f"\\u{ord(c):04x}" for c in text)
        + '"'
    )


@MODEST
@given(
    st.tuples(st.sampled_from(["127.0.0.1", "::1", "localhost"]), st.integers(0, 65535)),
    st.tuples(st.integers(1, 1023), st.sampled_from(["", "KiB", "k", "MiB", "m"])),
    st.floats(min_value=0.001, max_value=1e6, allow_nan=False),
    st.sampled_from(["debug", "info", "warning", "error"]),
    st.lists(
        st.sampled_from(["10.0.0.0/8", ".a.example:443", "[::1]:80", "b.example"]), max_size=3
    ),
    st.booleans(),
)
def test_toml_config_built_from_values_loads_them(
    listen: tuple[str, int],
    window: tuple[int, str],
    ping: float,
    level: str,
    allow: list[str],
    kebab: bool,
) -> None:
    size = window[0] * {"": 1, "KiB": 1024, "k": 1024, "MiB": 1 << 20, "m": 1 << 20}[window[1]]
    key = (lambda name: name.replace("_", "-")) if kebab else (lambda name: name)
    address = f"[{listen[0]}]:{listen[1]}" if ":" in listen[0] else f"{listen[0]}:{listen[1]}"
    common = (
        f"{key('ping_interval')} = {ping!r}\n{key('log_level')} = {toml_string(level)}\n"
        f"window = {toml_string(f'{window[0]}{window[1]}')}\n"
    )
    client = loaded("client", (f"listen = {toml_string(address)}\n" + common).encode())
    assert (client.listen, client.window, client.ping_interval, client.log_level) == (
        listen,
        size,
        ping,
        level,
    )
    specs = "[" + ", ".join(map(toml_string, allow)) + "]"
    agent = loaded("agent", (f"allow = {specs}\n" + common).encode())
    assert repr(agent.policy) == f"EgressPolicy(allow={allow!r}, deny=[])"
    assert agent.window == size
