"""HTTP/1.1 for client_a, the browser-facing proxy, as pure code.

httptools (llhttp) does all the parsing; this module decides what a proxy does
with the result: turn a proxy request head into a target and an origin-form head
for upstream, find where that request's body ends, rewrite the upstream
response head to `Connection: close`, and render client_a's own replies.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import httptools

from fastrelay.protocol.errors import HttpError
from fastrelay.protocol.messages import format_authority, split_authority
from fastrelay.protocol.status import Failure, phrase

MAX_HEADER_BYTES = 64 * 1024

_RESPONSE_HOP_BY_HOP = frozenset({"connection", "proxy-connection", "keep-alive"})
_REQUEST_HOP_BY_HOP = _RESPONSE_HOP_BY_HOP | {"proxy-authorization", "te", "trailer", "upgrade"}
# `Connection` may name any field as hop-by-hop, but the body bytes are relayed
# raw, so dropping their framing fields would desynchronise head and body.
_FRAMING = frozenset({"content-length", "transfer-encoding"})
_HOSTNAME = re.compile(r"[A-Za-z0-9_.-]+")
_AUTHORITY_END = re.compile(r"[/?#]")  # where an absolute URL's authority ends
# llhttp is strict about CRLF in requests, so a request head ends at the first
# CRLFCRLF. Responses are parsed leniently (old servers send bare LF).
_REQUEST_HEAD_END = re.compile(rb"\r\n\r\n")
_RESPONSE_HEAD_END = re.compile(rb"\n\r?\n")
# Empty lines before the start-line are skipped (RFC 9112 2.2), with the same
# line endings as the rest of the head. A blank line is not a head end until
# the start-line has been seen.
_REQUEST_EMPTY_LINES = re.compile(rb"(?:\r\n)*")
_RESPONSE_EMPTY_LINES = re.compile(rb"(?:\r?\n)*")
_CR, _LF = 0x0D, 0x0A

Fields = list[tuple[bytes, bytes]]


# Not frozen, as the control messages of an open are not (fastrelay/protocol/messages.py):
# one is made per browser request, and nothing changes it once made.
@dataclass(slots=True)
class ProxyRequest:
    method: str
    host: str
    port: int
    url: str
    headers: dict[str, str]
    head: bytes
    # Set from `method` when made (and by dataclasses.replace): client_a asks it ~7 times
    # per open, and a property is a Python call each time.
    is_connect: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.is_connect = self.method == "CONNECT"


class OriginFormRequest(HttpError):
    """An origin-form request (``GET /proxy.pac``): not a proxy request, so a 400 for the
    proxy, but client_a answers a few of them itself (its PAC file).  Carries the method,
    the request target and the header fields (lowercase names)."""

    def __init__(self, method: str, target: str, headers: dict[str, str], reason: str) -> None:
        super().__init__(400, reason)
        self.method = method
        self.target = target
        self.headers = headers


class _HeadFields:
    """What llhttp reports of one head (its callbacks; span callbacks may arrive in pieces
    across feeds)."""

    __slots__ = ("done", "fields", "reason", "url")

    def __init__(self) -> None:
        self.fields: Fields = []
        self.url = b""
        self.reason = b""
        self.done = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value.strip()))

    def on_headers_complete(self) -> None:
        self.done = True


class _HeadReader:
    """Buffers one message head and feeds llhttp exactly up to its end.

    Stopping at the blank line keeps body bytes (or a pipelined request) out
    of the head parser, and tells us where the head ends in the buffer, which
    llhttp does not report for ordinary (non-upgrade) messages.

    Empty lines before the start-line are skipped here and never reach llhttp
    (CRLF for a request, CRLF or LF for a response); a bare CR, or a bare LF
    before a request, is malformed. Those lines count towards `max_bytes`, so
    the reader buffers at most `max_bytes` before it answers or fails.
    """

    def __init__(self, response: bool, max_bytes: int, what: str) -> None:
        self.max_bytes = max_bytes
        self.buf = bytearray()
        self.head = _HeadFields()
        self._what = what
        self._first_line = "status line" if response else "request line"
        # `_start` is where the start-line begins (None while only empty lines
        # have arrived); `_fed` is how much of `buf` llhttp has seen; `_scan`
        # is where the next search for the head's blank line begins.
        self._start: int | None = None
        self._skipped = 0
        self._fed = self._scan = 0
        # A bad browser head is the browser's fault (400/431); a bad upstream
        # head is a gateway failure (502) whatever went wrong.
        self._bad, self._big = (502, 502) if response else (400, 431)
        self._end = _RESPONSE_HEAD_END if response else _REQUEST_HEAD_END
        self._empty = _RESPONSE_EMPTY_LINES if response else _REQUEST_EMPTY_LINES
        cls = httptools.HttpResponseParser if response else httptools.HttpRequestParser
        # The parser calls back into `head`, not into this reader: a parser holding the
        # reader that holds it would be a reference cycle, freed only by the garbage
        # collector, once per browser request (bench/README.md, "Setup").
        self.parser = cls(self.head)
        if response:
            self.parser.set_dangerous_leniencies(lenient_optional_cr_before_lf=True)

    @property
    def url(self) -> bytes:
        return self.head.url

    @property
    def reason(self) -> bytes:
        return self.head.reason

    @property
    def fields(self) -> Fields:
        return self.head.fields

    @property
    def done(self) -> bool:
        return self.head.done

    def _too_big(self) -> HttpError:
        detail = ""
        if self._start is None:
            detail = f" ({self._skipped} bytes of empty lines and no {self._first_line} yet)"
        return HttpError(self._big, f"{self._what} head exceeds {self.max_bytes} bytes{detail}")

    def _find_start(self) -> bool:
        """Skip empty lines; True once the start-line's first byte is in `buf`."""
        buf = self.buf
        empty = self._empty.match(buf, self._skipped)
        assert empty is not None  # the pattern matches the empty string too
        pos = empty.end()
        self._skipped = pos
        if pos == len(buf) or (buf[pos] == _CR and pos + 1 == len(buf)):
            return False  # more empty lines, or a CR whose LF is still on its way
        if buf[pos] in (_CR, _LF):
            bare = "CR" if buf[pos] == _CR else "LF"
            allowed = "CRLF or LF" if self._empty is _RESPONSE_EMPTY_LINES else "CRLF"
            raise HttpError(
                self._bad,
                f"malformed {self._what} head: bare {bare} at byte {pos} before the "
                f"{self._first_line} (only empty lines, {allowed}, may precede it)",
            )
        self._start = self._fed = self._scan = pos
        return True

    def read(self, data: bytes) -> int | None:
        """Buffer `data`; return the head's length once it is complete.

        The length counts from the start of everything read, empty lines
        before the start-line included. Every call ends after at most one
        search and one feed: it cannot spin however the bytes arrive.
        """
        head = self.head  # its fields, not this reader's properties: a Python call each
        if head.done:
            raise RuntimeError(f"the {self._what} head is already complete")
        self.buf += data
        if self._start is None and not self._find_start():
            if len(self.buf) > self.max_bytes:
                raise self._too_big()
            return None
        match = self._end.search(self.buf, self._scan)
        stop = match.end() if match else len(self.buf)
        if stop > self.max_bytes:
            raise self._too_big()
        chunk, self._fed = bytes(self.buf[self._fed : stop]), stop
        try:
            self.parser.feed_data(chunk)
        except httptools.HttpParserUpgrade:
            pass  # CONNECT/Upgrade: llhttp pauses after the head, where we stopped anyway
        except httptools.HttpParserError as exc:
            raise HttpError(self._bad, f"malformed {self._what} head: {exc}") from None
        if match is None and head.done:
            # llhttp ended the head without the blank line this reader looks for: an
            # HTTP/0.9 request line (no version, so no fields) ends at its LF. Waiting for
            # more would feed llhttp after the end (RuntimeError on the next read).
            raise HttpError(
                self._bad,
                f"malformed {self._what} head: it ended at byte {stop} without an empty line",
            )
        if match is None:
            # No blank line in buf[_scan:]; the next one may begin in its last
            # 3 bytes (the longest head end is 4) and end in the next read.
            start = self._start
            assert start is not None  # _find_start() set it before the scan
            self._scan = max(start, len(self.buf) - 3)
            return None
        if not head.done:
            # The start-line is not blank, so its first blank line ends the head.
            raise HttpError(
                self._bad,
                f"malformed {self._what} head: the empty line at byte {match.start()} "
                "did not end it",
            )
        return stop


def _strip_hop_by_hop(fields: Fields, always: frozenset[str]) -> Fields:
    drop = set(always)
    for name, value in fields:
        if name.lower() == b"connection":
            drop.update(token.strip().lower() for token in value.decode("latin-1").split(","))
    drop -= _FRAMING
    return [(n, v) for n, v in fields if n.decode("latin-1").lower() not in drop]


def _render_fields(fields: Fields) -> bytes:
    return b"".join(name + b": " + value + b"\r\n" for name, value in fields)


def _joined_headers(fields: Fields) -> dict[str, str]:
    headers: dict[str, str] = {}
    keys: dict[str, str] = {}  # lower-case name -> the spelling first received
    for raw_name, raw_value in fields:
        name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
        key = keys.setdefault(name.lower(), name)
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers


def _target(authority: str, default_port: int | None, what: str) -> tuple[str, int]:
    try:
        host, port = split_authority(authority, default_port)
    except ValueError as exc:
        raise HttpError(400, f"{what}: {exc}") from None
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise HttpError(400, f"{what}: invalid IPv6 address {host!r}") from None
    elif not _HOSTNAME.fullmatch(host):
        raise HttpError(400, f"{what}: invalid host name {host!r}")
    return host, port


class RequestHeadParser:
    """Feed bytes from the browser until a complete request head has been parsed."""

    def __init__(self, max_header_bytes: int = MAX_HEADER_BYTES) -> None:
        self._reader = _HeadReader(False, max_header_bytes, "request")
        self._request: ProxyRequest | None = None
        self._rest = b""

    @property
    def rest(self) -> bytes:
        """Bytes after the head (body or early tunnel data), once feed() returned a request."""
        return self._rest

    def feed(self, data: bytes) -> ProxyRequest | None:
        if self._request is not None:
            raise RuntimeError("the request head is already parsed; use rest and body_tracker()")
        end = self._reader.read(data)
        if end is None:
            return None
        self._request = self._build()
        self._rest = bytes(self._reader.buf[end:])
        self._reader.buf.clear()
        return self._request

    def body_tracker(self) -> RequestBodyTracker:
        """A tracker for the body of the non-CONNECT request feed() returned."""
        if self._request is None or self._request.is_connect:
            raise RuntimeError("body_tracker() needs a parsed non-CONNECT request")
        return RequestBodyTracker(self._request.head)

    def _build(self) -> ProxyRequest:
        reader = self._reader
        parser = reader.parser
        assert isinstance(parser, httptools.HttpRequestParser)
        method = parser.get_method().decode("ascii")
        version = parser.get_http_version()
        if version not in ("1.0", "1.1"):
            raise HttpError(400, f"HTTP/{version} is not supported; send HTTP/1.1")
        got = reader.head
        url = got.url.decode("latin-1")
        headers = _joined_headers(got.fields)
        if method == "CONNECT":
            host, port = _target(url, None, f"CONNECT target must be host:port, got {url!r}")
            return ProxyRequest(
                method, host, port, f"https://{format_authority(host, port)}", headers, b""
            )
        if url.startswith("/") or url == "*":
            hint = "a proxy needs an absolute URL (http://host/path) or CONNECT host:port"
            lowered = {name.lower(): value for name, value in headers.items()}
            reason = f"origin-form request target {url!r}: {hint}"
            raise OriginFormRequest(method, url, lowered, reason)
        try:
            parsed = httptools.parse_url(got.url)
        except httptools.HttpParserInvalidURLError:
            raise HttpError(400, f"invalid request URL {url!r}") from None
        scheme = (parsed.schema or b"").decode("latin-1").lower()
        if scheme == "https":
            raise HttpError(400, f"https:// URL {url!r} in a plain request: use CONNECT for TLS")
        if scheme != "http" or not parsed.host:
            raise HttpError(400, f"unsupported request URL {url!r}: only http:// is proxied")
        # The authority as written (minus userinfo) becomes the Host header.
        authority = _AUTHORITY_END.split(url[len("http://") :], 1)[0].rpartition("@")[2]
        host, port = _target(authority, 80, f"invalid authority in {url!r}")
        target = (parsed.path or b"/") + (b"" if parsed.query is None else b"?" + parsed.query)
        # Host is replaced by the URL's authority (RFC 9112 3.2.2), hop-by-hop
        # fields end here, and `Connection: close` makes upstream end the
        # exchange after one response.
        kept = _strip_hop_by_hop(got.fields, _REQUEST_HOP_BY_HOP | {"host"})
        line = f"{method} ".encode() + target + f" HTTP/{version}\r\nHost: {authority}\r\n".encode()
        head = line + _render_fields(kept) + b"Connection: close\r\n\r\n"
        return ProxyRequest(method, host, port, url, headers, head)


class _BodyEvents:
    """What llhttp reports of one request body (its callbacks)."""

    __slots__ = ("chunked", "done")

    def __init__(self) -> None:
        self.done = False
        self.chunked = False

    def on_chunk_header(self) -> None:
        self.chunked = True

    def on_message_complete(self) -> None:
        self.done = True


class _CountingEvents(_BodyEvents):
    # A separate class because httptools copies body bytes out only for a
    # protocol that has on_body.
    __slots__ = ("body",)

    def __init__(self) -> None:
        super().__init__()
        self.body = 0

    def on_body(self, data: bytes) -> None:
        self.body += len(data)


class _BodyProbe:
    """llhttp primed with a request head, reporting when the message ends.

    The parser calls back into `events`, not into the probe that holds it: a parser
    holding its holder would be a reference cycle per plain request, freed only by the
    garbage collector (as `_HeadReader` and `_HeadFields`)."""

    def __init__(self, head: bytes, events: _BodyEvents) -> None:
        self.events = events
        self._parser = httptools.HttpRequestParser(events)
        self.feed(head)

    @property
    def done(self) -> bool:
        return self.events.done

    def feed(self, data: bytes | memoryview) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            # After a `Connection: close` message llhttp rejects further bytes;
            # those belong to the next request, not to this body.
            if not self.events.done:
                raise HttpError(400, f"malformed request body: {exc}") from None


class RequestBodyTracker:
    """Counts the body of one request (Content-Length, chunked, or none).

    llhttp reports that a message ended, not where. So one parser sees each
    chunk whole and learns whether the body ends inside it; a second parser
    lags one chunk behind and, for chunked bodies, locates the exact end.
    """

    def __init__(self, head: bytes) -> None:
        """`head` is the request head as sent upstream (ProxyRequest.head)."""
        self._counted = _CountingEvents()
        self._ahead = _BodyProbe(head, self._counted)
        self._behind = _BodyProbe(head, _BodyEvents())
        self.complete: bool = self._ahead.done

    def feed(self, data: bytes) -> int:
        """How many leading bytes of `data` belong to this request's body."""
        if self.complete or not data:
            return 0
        counted = self._counted
        before = counted.body
        self._ahead.feed(data)
        if not counted.done:
            self._behind.feed(data)
            return len(data)
        self.complete = True
        if not counted.chunked:
            # A Content-Length body has no framing: it is exactly what on_body saw.
            return counted.body - before
        # A chunked body ends with the LF closing its trailer section, so only
        # offsets just after an LF can be the end.
        view, pos = memoryview(data), 0
        while not self._behind.done and pos < len(data):
            lf = data.find(b"\n", pos)
            start, pos = pos, (len(data) if lf < 0 else lf + 1)
            self._behind.feed(view[start:pos])
        return pos


class ResponseHeadRewriter:
    """Rewrites the first response head from upstream so the browser sees
    `Connection: close` (Connection/Keep-Alive/Proxy-Connection removed), then
    passes all later bytes through unchanged."""

    def __init__(self, max_header_bytes: int = MAX_HEADER_BYTES) -> None:
        self._max = max_header_bytes
        self._reader: _HeadReader | None = self._new_reader()

    @property
    def done(self) -> bool:
        """The final head went out; from now on feed() returns its input unchanged."""
        return self._reader is None

    def _new_reader(self) -> _HeadReader:
        return _HeadReader(True, self._max, "upstream response")

    def feed(self, data: bytes) -> bytes:
        out = b""
        while self._reader is not None:
            end = self._reader.read(data)
            if end is None:
                return out
            reader, data = self._reader, bytes(self._reader.buf[end:])
            parser = reader.parser
            assert isinstance(parser, httptools.HttpResponseParser)
            status = parser.get_status_code()
            if status < 100:
                # llhttp reads "004" as 4; re-written as "4" it would be no status line at all.
                raise HttpError(
                    502,
                    f"malformed upstream response head: status code {status:03d} is below 100",
                )
            line = f"HTTP/{parser.get_http_version()} {status} ".encode() + reader.reason
            kept = _strip_hop_by_hop(reader.fields, _RESPONSE_HOP_BY_HOP)
            # Interim responses (100 Continue, 103 Early Hints) come before the
            # final head, which still needs rewriting.
            interim = 100 <= status < 200 and status != 101
            close = b"" if interim else b"Connection: close\r\n"
            out += line + b"\r\n" + _render_fields(kept) + close + b"\r\n"
            self._reader = self._new_reader() if interim else None
        return out + data


def _one_line(text: str) -> str:
    # CR or LF in a reason or header value would inject header lines.
    return re.sub(r"[\r\n]+", " ", text)


def render_response(
    status: int, reason: str, body: str = "", extra_headers: Iterable[tuple[str, str]] = ()
) -> bytes:
    """A complete response for client_a's own replies.

    A 2xx without a body is a bare head (a 2xx answer to CONNECT must carry no
    framing fields); anything else is text/plain with `Connection: close`, and
    the body defaults to the reason.
    """
    reason = _one_line(reason)
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{_one_line(name)}: {_one_line(value)}" for name, value in extra_headers]
    payload = b""
    if not (200 <= status < 300 and not body):
        payload = (body or reason).encode()
        lines += [
            "Content-Type: text/plain; charset=utf-8",
            f"Content-Length: {len(payload)}",
            "Connection: close",
        ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace") + payload


def error_page(failure: Failure, detail: str) -> bytes:
    """client_a's answer for a failure: the status and its standard phrase,
    and as the body the precise detail and the failure's reason word."""
    return render_response(failure.status, phrase(failure.status), failure.body(detail))
