"""client_a's HTTP/1.1 layer: proxy request heads, body tracking, response rewriting."""

from __future__ import annotations

import pytest

from fastrelay.protocol.errors import HttpError
from fastrelay.protocol.http import (
    OriginFormRequest,
    ProxyRequest,
    RequestBodyTracker,
    RequestHeadParser,
    ResponseHeadRewriter,
    error_page,
    render_response,
)
from fastrelay.protocol.status import Failure


def parse(data: bytes, max_header_bytes: int = 64 * 1024) -> tuple[ProxyRequest, bytes]:
    parser = RequestHeadParser(max_header_bytes)
    request = parser.feed(data)
    assert request is not None
    return request, parser.rest


def parse_error(data: bytes, max_header_bytes: int = 64 * 1024) -> HttpError:
    with pytest.raises(HttpError) as info:
        RequestHeadParser(max_header_bytes).feed(data)
    return info.value


# --- CONNECT -------------------------------------------------------------------------


def test_connect_hostname() -> None:
    request, rest = parse(
        b"CONNECT Example.com:443 HTTP/1.1\r\nHost: Example.com:443\r\nUser-Agent: t\r\n\r\n"
    )
    assert request == ProxyRequest(
        method="CONNECT",
        host="Example.com",
        port=443,
        url="https://Example.com:443",
        headers={"Host": "Example.com:443", "User-Agent": "t"},
        head=b"",
    )
    assert request.is_connect
    assert rest == b""


def test_connect_ipv4_keeps_early_tunnel_data_in_rest() -> None:
    request, rest = parse(b"CONNECT 10.1.2.3:8443 HTTP/1.1\r\n\r\n\x16\x03\x01\x00\xffhello")
    assert (request.host, request.port, request.url) == ("10.1.2.3", 8443, "https://10.1.2.3:8443")
    assert rest == b"\x16\x03\x01\x00\xffhello"


def test_connect_bracketed_ipv6() -> None:
    request, _ = parse(b"CONNECT [2001:db8::1]:443 HTTP/1.1\r\n\r\n")
    assert (request.host, request.port) == ("2001:db8::1", 443)
    assert request.url == "https://[2001:db8::1]:443"


# --- absolute-form -------------------------------------------------------------------


def test_absolute_get_rewritten_to_origin_form_without_hop_by_hop() -> None:
    raw = (
        b"GET http://example.com:8080/path/x?q=1&r=2 HTTP/1.1\r\n"
        b"Host: wrong.example\r\n"
        b"Proxy-Connection: keep-alive\r\n"
        b"Proxy-Authorization: Basic dTpw\r\n"
        b"Connection: keep-alive, X-Hop\r\n"
        b"X-Hop: 1\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"TE: trailers\r\n"
        b"Trailer: X-T\r\n"
        b"Upgrade: websocket\r\n"
        b"Accept: */*\r\n"
        b"Cookie: a=1\r\n"
        b"\r\n"
    )
    request, rest = parse(raw)
    assert not request.is_connect
    assert (request.method, request.host, request.port) == ("GET", "example.com", 8080)
    assert request.url == "http://example.com:8080/path/x?q=1&r=2"
    assert request.head == (
        b"GET /path/x?q=1&r=2 HTTP/1.1\r\n"
        b"Host: example.com:8080\r\n"
        b"Accept: */*\r\n"
        b"Cookie: a=1\r\n"
        b"Connection: close\r\n\r\n"
    )
    # `headers` is the request as received, hop-by-hop fields included.
    assert request.headers["Proxy-Connection"] == "keep-alive"
    assert request.headers["Host"] == "wrong.example"
    assert len(request.headers) == 11
    assert rest == b""


def test_absolute_post_keeps_framing_and_leaves_body_in_rest() -> None:
    raw = (
        b"POST http://api.example/submit HTTP/1.1\r\n"
        b"Content-Type: text/plain\r\n"
        b"Content-Length: 11\r\n"
        b"Connection: keep-alive, Content-Length\r\n"  # must not strip framing
        b"\r\n"
        b"hello world"
    )
    request, rest = parse(raw)
    assert (request.method, request.port) == ("POST", 80)
    assert request.head == (
        b"POST /submit HTTP/1.1\r\n"
        b"Host: api.example\r\n"
        b"Content-Type: text/plain\r\n"
        b"Content-Length: 11\r\n"
        b"Connection: close\r\n\r\n"
    )
    assert rest == b"hello world"


@pytest.mark.parametrize(
    ("url", "host", "port", "line", "host_header"),
    [
        (b"http://example.com", "example.com", 80, b"GET / HTTP/1.0", b"example.com"),
        (b"http://example.com?x=1", "example.com", 80, b"GET /?x=1 HTTP/1.0", b"example.com"),
        (b"http://[::1]:8080/a#frag", "::1", 8080, b"GET /a HTTP/1.0", b"[::1]:8080"),
        (b"HTTP://u:p@h.example:81/x", "h.example", 81, b"GET /x HTTP/1.0", b"h.example:81"),
    ],
)
def test_absolute_url_forms(
    url: bytes, host: str, port: int, line: bytes, host_header: bytes
) -> None:
    request, _ = parse(b"GET " + url + b" HTTP/1.0\r\n\r\n")
    assert (request.host, request.port, request.url) == (host, port, url.decode())
    assert request.head == line + b"\r\nHost: " + host_header + b"\r\nConnection: close\r\n\r\n"


def test_websocket_upgrade_request_is_forwarded_as_a_plain_request() -> None:
    # llhttp pauses after an Upgrade head; the proxy strips the upgrade instead.
    request, rest = parse(
        b"GET http://ws.example/chat HTTP/1.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: k\r\n\r\nearly"
    )
    assert request.head == (
        b"GET /chat HTTP/1.1\r\nHost: ws.example\r\nSec-WebSocket-Key: k\r\n"
        b"Connection: close\r\n\r\n"
    )
    assert rest == b"early"


def test_blank_lines_before_the_request_line_are_skipped() -> None:
    # RFC 9112 2.2: a leftover CRLF after a previous body is not a request head.
    request, rest = parse(b"\r\n\r\nGET http://a.example/ HTTP/1.1\r\n\r\nx")
    assert request.head == b"GET / HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n"
    assert rest == b"x"


def test_duplicate_headers_are_joined_under_the_first_spelling() -> None:
    request, _ = parse(
        b"GET http://a.example/ HTTP/1.1\r\nAccept: text/html\r\naccept: */*\r\nX:  v  \r\n\r\n"
    )
    assert request.headers == {"Accept": "text/html, */*", "X": "v"}
    assert b"Accept: text/html\r\naccept: */*\r\nX: v\r\n" in request.head


def test_head_fed_byte_by_byte() -> None:
    raw = (
        b"POST http://example.com/upload HTTP/1.1\r\n"
        b"Host: example.com\r\nContent-Length: 4\r\nProxy-Connection: keep-alive\r\n\r\nbody"
    )
    whole, whole_rest = parse(raw)
    parser = RequestHeadParser()
    head_len = raw.index(b"\r\n\r\n") + 4
    for i in range(head_len - 1):
        assert parser.feed(raw[i : i + 1]) is None
    request = parser.feed(raw[head_len - 1 :])
    assert request == whole
    assert parser.rest == whole_rest == b"body"
    with pytest.raises(RuntimeError):
        parser.feed(b"more")


def test_head_split_at_every_offset() -> None:
    raw = b"GET http://example.com/ HTTP/1.1\r\nA: b\r\n\r\nxyz"
    head_len = len(raw) - 3
    for cut in range(1, len(raw)):
        parser = RequestHeadParser()
        request = parser.feed(raw[:cut])
        assert (request is not None) == (cut >= head_len)
        rest = parser.rest if request else b""
        request = request or parser.feed(raw[cut:])
        assert request is not None
        assert request.head == (
            b"GET / HTTP/1.1\r\nHost: example.com\r\nA: b\r\nConnection: close\r\n\r\n"
        )
        # Bytes arriving after the head was returned are the caller's, not rest.
        assert parser.rest == (rest if cut >= head_len else b"xyz")
        assert rest == raw[head_len:cut]


# --- errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"garbage\r\n\r\n", "malformed request head"),
        (b"GET http://a/ HTTP/1.1\nHost: a\n\n", "malformed request head"),
        (b"GET /index.html HTTP/1.1\r\nHost: a\r\n\r\n", "origin-form"),
        (b"OPTIONS * HTTP/1.1\r\n\r\n", "origin-form"),
        (b"GET https://a.example/ HTTP/1.1\r\n\r\n", "use CONNECT"),
        (b"GET ftp://a.example/f HTTP/1.1\r\n\r\n", "only http://"),
        (b"GET http://a.example:0/ HTTP/1.1\r\n\r\n", "bad port"),
        (b"GET http://a.example:99999/ HTTP/1.1\r\n\r\n", "invalid request URL"),
        (b"GET http://a.example:8x/ HTTP/1.1\r\n\r\n", "invalid request URL"),
        (b"CONNECT a.example HTTP/1.1\r\n\r\n", "missing port"),
        (b"CONNECT a.example:0 HTTP/1.1\r\n\r\n", "bad port"),
        (b"CONNECT a.example:https HTTP/1.1\r\n\r\n", "bad port"),
        (b"CONNECT http://a.example:80/ HTTP/1.1\r\n\r\n", "host:port"),
        (b"CONNECT user@a.example:443 HTTP/1.1\r\n\r\n", "invalid host name"),
        (b"CONNECT [zz::1]:443 HTTP/1.1\r\n\r\n", "invalid IPv6"),
        (b"GET http://a.example/ HTTP/2.0\r\n\r\n", "HTTP/2.0 is not supported"),
        (b"POST http://a/ HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "Duplicate"),
        (b"POST http://a/ HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", "Transfer-Encoding"),
    ],
)
def test_bad_requests_are_400_with_a_precise_reason(raw: bytes, words: str) -> None:
    error = parse_error(raw)
    assert error.status == 400
    assert words in error.reason


def test_oversized_head_is_431_before_it_completes() -> None:
    parser = RequestHeadParser(max_header_bytes=100)
    assert parser.feed(b"GET http://a.example/ HTTP/1.1\r\n") is None
    with pytest.raises(HttpError) as info:
        for _ in range(20):
            parser.feed(b"X-Pad: 0123456789\r\n")
    assert info.value.status == 431
    assert "100 bytes" in info.value.reason


def test_complete_but_oversized_head_is_431_and_limit_is_inclusive() -> None:
    raw = b"GET http://a.example/ HTTP/1.1\r\nX: " + b"y" * 50 + b"\r\n\r\n"
    assert parse_error(raw, max_header_bytes=len(raw) - 1).status == 431
    request, rest = parse(raw + b"body", max_header_bytes=len(raw))
    assert request.host == "a.example"
    assert rest == b"body"


# --- body tracking -------------------------------------------------------------------

NEXT_REQUEST = b"GET http://evil.example/ HTTP/1.1\r\nHost: evil.example\r\n\r\n"
CHUNKED_BODY = b"4\r\nWi\nk\r\n5;ext=1\r\npedia\r\n0\r\nX-Trailer: yes\r\nX-Two: 2\r\n\r\n"


def tracker_for(head_fields: bytes) -> RequestBodyTracker:
    parser = RequestHeadParser()
    request = parser.feed(b"POST http://a.example/ HTTP/1.1\r\n" + head_fields + b"\r\n")
    assert request is not None
    return parser.body_tracker()


def track(tracker: RequestBodyTracker, pieces: list[bytes]) -> list[int]:
    counts = []
    for piece in pieces:
        assert not tracker.complete
        counts.append(tracker.feed(piece))
    return counts


@pytest.mark.parametrize("cut", [0, 1, 5, 10, 11])
def test_content_length_body_stops_before_a_pipelined_request(cut: int) -> None:
    body = b"hello world"
    stream = body + NEXT_REQUEST
    tracker = tracker_for(b"Content-Length: 11\r\n")
    assert not tracker.complete
    assert tracker.feed(stream[:cut]) == cut
    assert tracker.complete == (cut == len(body))
    assert tracker.feed(stream[cut:]) == len(body) - cut
    assert tracker.complete
    assert tracker.feed(b"GET http://x/ HTTP/1.1\r\n\r\n") == 0


def test_content_length_body_byte_by_byte() -> None:
    tracker = tracker_for(b"Content-Length: 3\r\n")
    assert track(tracker, [b"a", b"b", b"c"]) == [1, 1, 1]
    assert tracker.complete


def test_request_without_body_is_complete_at_once() -> None:
    parser = RequestHeadParser()
    parser.feed(b"GET http://a.example/ HTTP/1.1\r\n\r\n" + NEXT_REQUEST)
    tracker = parser.body_tracker()
    assert tracker.complete
    assert tracker.feed(parser.rest) == 0
    assert tracker_for(b"Content-Length: 0\r\n").complete


def test_chunked_body_in_one_piece_with_pipelined_request() -> None:
    tracker = tracker_for(b"Transfer-Encoding: chunked\r\n")
    assert tracker.feed(CHUNKED_BODY + NEXT_REQUEST) == len(CHUNKED_BODY)
    assert tracker.complete
    assert tracker.feed(NEXT_REQUEST) == 0


@pytest.mark.parametrize("cut", range(1, len(CHUNKED_BODY) + 1))
def test_chunked_body_split_anywhere(cut: int) -> None:
    tracker = tracker_for(b"Transfer-Encoding: chunked\r\n")
    stream = CHUNKED_BODY + NEXT_REQUEST
    first = tracker.feed(stream[:cut])
    assert first == cut
    assert tracker.complete == (cut == len(CHUNKED_BODY))
    assert first + tracker.feed(stream[cut:]) == len(CHUNKED_BODY)
    assert tracker.complete


def test_chunked_body_byte_by_byte() -> None:
    tracker = tracker_for(b"Transfer-Encoding: chunked\r\n")
    counts = track(tracker, [CHUNKED_BODY[i : i + 1] for i in range(len(CHUNKED_BODY))])
    assert counts == [1] * len(CHUNKED_BODY)
    assert tracker.complete


def test_chunked_body_without_trailers_followed_by_newline_rich_data() -> None:
    tracker = tracker_for(b"Transfer-Encoding: chunked\r\n")
    body = b"3\r\na\nb\r\n0\r\n\r\n"
    assert tracker.feed(b"1\r\nx\r\n") == 6
    assert tracker.feed(body + b"\r\n\r\n\n\nGET") == len(body)


def test_malformed_chunked_body_is_400() -> None:
    tracker = tracker_for(b"Transfer-Encoding: chunked\r\n")
    with pytest.raises(HttpError) as info:
        tracker.feed(b"zz\r\nabc\r\n")
    assert info.value.status == 400
    assert "malformed request body" in info.value.reason


def test_body_tracker_needs_a_non_connect_request() -> None:
    parser = RequestHeadParser()
    with pytest.raises(RuntimeError):
        parser.body_tracker()
    parser.feed(b"CONNECT a.example:443 HTTP/1.1\r\n\r\n")
    with pytest.raises(RuntimeError):
        parser.body_tracker()


# --- response rewriting --------------------------------------------------------------

RESPONSE_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/html\r\n"
    b"Connection: keep-alive\r\n"
    b"Keep-Alive: timeout=5, max=100\r\n"
    b"Proxy-Connection: keep-alive\r\n"
    b"Content-Length: 12\r\n"
    b"\r\n"
)
REWRITTEN_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 12\r\nConnection: close\r\n\r\n"
)
BODY = b"\x00\r\n\r\nHTTP/1.1"  # looks like framing; must pass untouched


def test_response_head_rewritten_and_body_passed_through() -> None:
    rewriter = ResponseHeadRewriter()
    assert rewriter.feed(RESPONSE_HEAD + BODY) == REWRITTEN_HEAD + BODY
    assert rewriter.feed(b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\n\r\n") == (
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\n\r\n"
    )


def test_response_head_split_byte_by_byte() -> None:
    rewriter = ResponseHeadRewriter()
    out = b"".join(rewriter.feed(RESPONSE_HEAD[i : i + 1]) for i in range(len(RESPONSE_HEAD) - 1))
    assert out == b""
    assert rewriter.feed(RESPONSE_HEAD[-1:] + BODY[:3]) == REWRITTEN_HEAD + BODY[:3]
    assert rewriter.feed(BODY[3:]) == BODY[3:]


def test_response_without_reason_bare_lf_and_connection_named_fields() -> None:
    rewriter = ResponseHeadRewriter()
    out = rewriter.feed(
        b"HTTP/1.0 404\nConnection: X-Private, Transfer-Encoding\nX-Private: 1\n"
        b"Transfer-Encoding: chunked\n\n0\r\n\r\n"
    )
    assert out == (
        b"HTTP/1.0 404 \r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n"
    )


def test_interim_responses_pass_and_the_final_head_is_rewritten() -> None:
    rewriter = ResponseHeadRewriter()
    early = (
        b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\nConnection: keep-alive\r\n\r\n"
    )
    out = rewriter.feed(early + RESPONSE_HEAD[:20])
    assert out == b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
    assert rewriter.feed(RESPONSE_HEAD[20:] + BODY) == REWRITTEN_HEAD + BODY


@pytest.mark.parametrize(
    "raw",
    [
        b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
        b"HTTP/1.1 99 Too Low\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
    ],
)
def test_malformed_response_is_502(raw: bytes) -> None:
    with pytest.raises(HttpError) as info:
        ResponseHeadRewriter().feed(raw)
    assert info.value.status == 502
    assert "malformed upstream response head" in info.value.reason


def test_oversized_response_head_is_502() -> None:
    rewriter = ResponseHeadRewriter(max_header_bytes=64)
    assert rewriter.feed(b"HTTP/1.1 200 OK\r\n") == b""
    with pytest.raises(HttpError) as info:
        rewriter.feed(b"X-Pad: " + b"p" * 60 + b"\r\n")
    assert info.value.status == 502
    assert "exceeds 64 bytes" in info.value.reason


# --- client_a's own replies ----------------------------------------------------------


def test_render_connect_established() -> None:
    assert render_response(200, "Connection Established") == (
        b"HTTP/1.1 200 Connection Established\r\n\r\n"
    )


def test_render_error_with_body() -> None:
    assert render_response(502, "Bad Gateway", "agent unreachable") == (
        b"HTTP/1.1 502 Bad Gateway\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 17\r\n"
        b"Connection: close\r\n"
        b"\r\n"
        b"agent unreachable"
    )


def test_render_error_defaults_body_to_reason_and_adds_extra_headers() -> None:
    assert render_response(403, "Forbidden", extra_headers=[("X-Why", "policy\r\nX-Evil: 1")]) == (
        b"HTTP/1.1 403 Forbidden\r\n"
        b"X-Why: policy X-Evil: 1\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 9\r\n"
        b"Connection: close\r\n"
        b"\r\n"
        b"Forbidden"
    )


def test_error_page_uses_standard_phrase_precise_detail_and_reason_word() -> None:
    failure = HttpError(431, "request head exceeds 10 bytes").failure
    assert error_page(failure, "request head exceeds 10 bytes") == (
        b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 47\r\n"
        b"Connection: close\r\n"
        b"\r\n"
        b"request head exceeds 10 bytes (head_too_large)\n"
    )
    page = error_page(Failure.RESPONSE_TIMEOUT, "é")
    assert page.startswith(b"HTTP/1.1 504 Gateway Timeout\r\n")
    assert page.endswith(b"\r\n\r\n\xc3\xa9 (response_timeout)\n")


def test_origin_form_request_carries_method_target_and_headers() -> None:
    """client_a answers GET /proxy.pac itself; the parser hands it the request, still a 400
    HttpError for anything client_a does not serve."""
    raw = (
        b"HEAD /proxy.pac?v=2 HTTP/1.1\r\nHost: a\r\n"
        b'If-None-Match: "x"\r\nIF-NONE-MATCH: "y"\r\n\r\n'
    )
    with pytest.raises(OriginFormRequest) as info:
        RequestHeadParser().feed(raw)
    error = info.value
    assert isinstance(error, HttpError) and error.status == 400
    assert error.failure is Failure.BAD_REQUEST
    assert (error.method, error.target) == ("HEAD", "/proxy.pac?v=2")
    assert error.headers == {"host": "a", "if-none-match": '"x", "y"'}
    assert "origin-form request target '/proxy.pac?v=2'" in error.reason
