"""One browser connection to client_a: parse the request head, then hand the
socket to a route (the relay or a direct connection).

The first byte tells the protocols apart: 0x05 is a SOCKS5 greeting
(fastrelay/protocol/socks.py), anything else an HTTP request. A SOCKS5 CONNECT
becomes the same `ProxyRequest` as an HTTP CONNECT, so both take the same
routes and rules; only the answers differ (`established`, `reply`).

Until a route is chosen the socket is read only for the head; after that every
event goes to the route's `sink`, which has the same five methods whichever
route it is (RelayRoute for the relay, DirectPipe for direct), plus
`bad_request` for a request body that turns out malformed.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from prometheus_client.core import Metric

from fastrelay import metrics
from fastrelay.io.reset import rearm_if_closed, state_socket
from fastrelay.io.tunnel import StreamSocket
from fastrelay.lifecycle import format_address
from fastrelay.protocol.errors import HttpError
from fastrelay.protocol.http import (
    OriginFormRequest,
    ProxyRequest,
    RequestBodyTracker,
    RequestHeadParser,
    error_page,
    render_response,
)
from fastrelay.protocol.messages import format_authority
from fastrelay.protocol.session import Stream
from fastrelay.protocol.socks import (
    METHOD_REFUSED,
    SUCCEEDED,
    SocksError,
    SocksParser,
    SocksRequest,
    reply,
)
from fastrelay.protocol.status import CONNECTION_ESTABLISHED, Failure

if TYPE_CHECKING:
    from client_a.proxy import Proxy

log = logging.getLogger("fastrelay.client")
HTTP_ESTABLISHED = render_response(200, CONNECTION_ESTABLISHED)
SOCKS_VERSION = 0x05  # a first byte no HTTP request starts with
LINGER = 2.0  # seconds an answered connection may go on sending before it is closed

# Reads before a tunnel is open land here and are copied out at once, so one
# buffer serves every browser connection. A tunnel's reads go through
# StreamSocket instead (`start`).
_OWN_VIEW = memoryview(bytearray(64 * 1024))


class Sink(Protocol):
    def tcp_data(self, data: bytes) -> None: ...
    def tcp_eof(self) -> None: ...
    def tcp_lost(self, exc: BaseException | None) -> None: ...
    def tcp_paused_writing(self) -> None: ...
    def tcp_resumed_writing(self) -> None: ...
    def bad_request(self, failure: Failure, reason: str) -> None: ...


class ConnectionGate:
    """Limits shared by every browser connection: at most `max_connections`
    open at once (over it, a 503 and close), and `header_timeout` seconds for
    each to send a complete request head (else a 408 and close). client_a
    serves one request per connection (no keep-alive), so the head timer runs
    once per connection: one call_later, cancelled when the head is complete."""

    __slots__ = ("dropped", "header_timeout", "loop", "max_connections", "open")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, max_connections: int, header_timeout: float
    ) -> None:
        self.loop = loop
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.open = 0
        self.dropped = {"header_timeout": 0, "max_connections": 0}

    def collect(self) -> Iterable[Metric]:
        yield metrics.F_CLIENT_CONNECTIONS_DROPPED.build(metrics.by_label(self.dropped))


class BrowserConnection(asyncio.BufferedProtocol):
    def __init__(self, proxy: Proxy, gate: ConnectionGate) -> None:
        self.proxy = proxy
        self.gate = gate
        self.counted = False  # holds one of the gate's connection slots
        self.head_timer: asyncio.TimerHandle | None = None
        self.parser: RequestHeadParser | SocksParser | None = RequestHeadParser(
            proxy.config.max_header_bytes
        )
        self.socks: SocksParser | None = None  # a SOCKS5 client (the first byte was 0x05)
        self.proto = "http"  # "socks5" for a SOCKS5 client: the access log's proto
        self.sniffed = False  # the first byte was seen
        self.transport: asyncio.Transport | None = None
        self.sock: socket.socket | None = None  # the transport's socket (rearm_if_closed)
        self.sink: Sink | None = None
        self.request: ProxyRequest | None = None
        self.tracker: RequestBodyTracker | None = None  # plain-HTTP requests only
        self.early = b""  # bytes after the head, held until the route is open
        self.early_eof = False  # the browser's EOF came before the route was open
        self.closed = False
        self.linger: asyncio.TimerHandle | None = None  # set while closing after an answer
        self.received_at = 0.0  # the request head was complete (for the latency histograms)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # aiofastnet's own Transport class
        self.sock = state_socket(transport)
        gate = self.gate
        if gate.open >= gate.max_connections:
            gate.dropped["max_connections"] += 1
            self.parser = None
            # Not from inside connection_made: aiofastnet adds its reader in a callback
            # queued after this one, so a close here would leave that reader on the closed
            # fd, and on the stdlib loop the next socket with that fd number fails
            # (ENOENT from epoll). call_soon runs after aiofastnet's callback.
            gate.loop.call_soon(
                self.reply,
                Failure.CLIENT_BUSY,
                f"client_a is at its limit of {gate.max_connections} browser connections "
                "(--max-connections); try again later",
            )
            return
        gate.open += 1
        self.counted = True
        self.head_timer = gate.loop.call_later(gate.header_timeout, self._head_timeout)

    def _head_timeout(self) -> None:
        self.head_timer = None
        if self.parser is None or self.closed:
            return  # the head was complete (or refused) meanwhile
        self.parser = None
        self.gate.dropped["header_timeout"] += 1
        limit = self.gate.header_timeout
        self.reply(
            Failure.HEADER_TIMEOUT,
            f"no complete request head within {limit:g} s (--header-timeout)",
        )

    def get_buffer(self, sizehint: int) -> memoryview:
        return _OWN_VIEW

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(_OWN_VIEW[:nbytes]))
        if self.transport is not None:
            rearm_if_closed(self.transport, self.sock)  # see there: uvloop can hide a reset

    def data_received(self, data: bytes) -> None:
        if self.linger is not None:
            return  # answered and closing: what the browser still sends is dropped
        if self.sink is not None:
            self.forward(data)
        elif self.parser is None:
            # Bytes before the route is open (see _head_complete): held, and the
            # socket is not read again until the route takes them.
            self.early += data
            assert self.transport is not None
            self.transport.pause_reading()
        else:
            self._parse(data)

    def _parse(self, data: bytes) -> None:
        parser = self.parser
        assert parser is not None and self.transport is not None
        if not self.sniffed and data:
            self.sniffed = True  # the first byte decides, once
            if data[0] == SOCKS_VERSION:
                self.parser = parser = self.socks = SocksParser()
                self.proto = "socks5"
        if isinstance(parser, SocksParser):
            self._parse_socks(parser, data)
            return
        try:
            request = parser.feed(data)
        except OriginFormRequest as exc:
            # Not a proxy request; client_a answers a few itself (GET /proxy.pac).
            answer = self.proxy.local_request(exc, self.transport.get_extra_info("sockname"))
            if answer is not None:
                self.parser = None
                self.transport.write(answer)
                self.close_after_answer()
                return
            self.proxy.count(None, exc.failure.result)
            self.reply(exc.failure, exc.reason)
            return
        except HttpError as exc:
            self.proxy.count(None, exc.failure.result)
            self.reply(exc.failure, exc.reason)
            return
        if request is None:
            return
        self._head_complete(request, parser.rest)
        if not request.is_connect:
            self.tracker = parser.body_tracker()
        self.parser = None
        self.proxy.dispatch(self, request)

    def _parse_socks(self, parser: SocksParser, data: bytes) -> None:
        transport = self.transport
        assert transport is not None
        try:
            answer, socks = parser.feed(data)
        except SocksError as exc:
            self.proxy.count(None, Failure.BAD_REQUEST.result)
            log.debug("SOCKS5 client %s refused: %s", self.peer(), exc.reason)
            transport.write(exc.answer)
            self.close_after_answer()
            return
        if answer:
            transport.write(answer)
        if socks is None:
            return
        request = socks_request(socks)
        self._head_complete(request, parser.rest)
        self.parser = None
        self.proxy.dispatch(self, request)

    def _head_complete(self, request: ProxyRequest, rest: bytes) -> None:
        """The request is complete: stop its timer. Reading goes on until bytes
        arrive before the route is open: then those are held (`early`) and reading
        pauses (`data_received`). A client waits for the answer to its CONNECT, so
        usually nothing comes, and the socket is neither paused nor resumed (with
        aiofastnet a remove_reader and an add_reader: epoll_ctl calls and a new
        poll handle per open)."""
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
        self.received_at = time.monotonic()
        self.request = request
        self.early = rest

    def start(self, sink: Sink, stream: Stream | None = None) -> None:
        """The route is open: pass the held bytes on, then everything else.
        A CONNECT tunnel through the relay (`stream`) hands its socket's reads
        to a StreamSocket, which reads straight into the zero-copy buffer of
        fastrelay.io.tunnel and is compiled with it: this protocol's Python
        methods leave the per-message path. Its end still comes back here
        (`connection_lost`); EOF and write pauses go to the stream, as
        RelayRoute would pass them on."""
        self.sink = sink
        if stream is not None and self.tracker is None:
            assert self.transport is not None
            self.transport.set_protocol(StreamSocket(stream, self, self.transport))
        early, self.early = self.early, b""
        if early:
            self.forward(early)
        if self.early_eof:
            self.early_eof = False
            sink.tcp_eof()

    def forward(self, data: bytes) -> None:
        tracker = self.tracker
        if tracker is not None:
            if tracker.complete:
                return  # nothing after the one request may reach this target
            try:
                used = tracker.feed(data)
            except HttpError as exc:  # a malformed body (an overflowing chunk size, say)
                tracker.complete = True  # nothing more reaches the target
                self.proxy.count(None, exc.failure.result)
                if self.sink is not None:
                    self.sink.bad_request(exc.failure, exc.reason)
                return
            if used < len(data):
                data = data[:used]
        if data and self.sink is not None:
            self.sink.tcp_data(data)

    def eof_received(self) -> bool:
        if self.linger is not None:
            return False  # the browser is done too: close
        if self.sink is not None:
            self.sink.tcp_eof()
            return True
        if self.request is None:
            return False  # EOF before a complete head: just close
        self.early_eof = True  # before the route is open: it ends the request's bytes there
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.linger is not None:
            self.linger.cancel()
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
        if self.counted:
            self.counted = False
            self.gate.open -= 1
        if self.sink is not None:
            self.sink.tcp_lost(exc)
        # No transport event follows: drop the links back into the route and its stream
        # (each of which links to this connection), so the open's objects are freed by
        # reference counting, not left as cycles for the garbage collector.
        self.sink = None

    def pause_writing(self) -> None:
        if self.sink is not None:
            self.sink.tcp_paused_writing()

    def resume_writing(self) -> None:
        if self.sink is not None:
            self.sink.tcp_resumed_writing()

    def peer(self) -> str:
        """The browser's address, for the access log."""
        transport = self.transport
        peer = None if transport is None else transport.get_extra_info("peername")
        return format_address(peer) if peer else "unknown"

    def established(self) -> bytes:
        """The answer to a CONNECT whose route is open."""
        return HTTP_ESTABLISHED if self.socks is None else SUCCEEDED

    def reply(self, failure: Failure, detail: str) -> None:
        """Answer the browser ourselves (the failure's status, the detail and
        its reason word; a SOCKS5 client the failure's reply code) and end the
        connection."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        socks = self.socks
        if socks is None:
            transport.write(error_page(failure, detail))
        else:
            log.debug("SOCKS5 client %s: %s (%s)", self.peer(), detail, failure.reason)
            # Mid-greeting there is no request to reply to: refuse the greeting.
            transport.write(reply(failure.socks) if socks.greeted else METHOD_REFUSED)
        self.close_after_answer()

    def close_after_answer(self) -> None:
        """Close once the answer just written is through, without losing it.

        A socket closed with bytes of the browser's still unread sends an RST
        instead of a FIN, and the RST can overtake the answer (a browser that
        sends its request at once, refused over --max-connections, saw a reset
        rather than the 503). So: a FIN after the answer, then whatever the
        browser still sends is read and dropped until its own EOF, and the
        socket is closed then, or after LINGER seconds at most."""
        transport = self.transport
        if transport is None or transport.is_closing() or self.linger is not None:
            return
        if transport.get_protocol() is not self or not transport.can_write_eof():
            transport.close()  # a tunnel's socket (StreamSocket reads it now): nothing to drain
            return
        self.parser = None
        try:
            transport.write_eof()
        except OSError:
            # The browser reset the connection between the answer's write and this
            # shutdown (ENOTCONN): nothing is left to drain, and the answer's caller
            # (a failed open's stream end) must still get to its access-log line.
            transport.abort()
            return
        self.linger = self.gate.loop.call_later(LINGER, transport.close)
        transport.resume_reading()  # if the early bytes had paused it


def socks_request(socks: SocksRequest) -> ProxyRequest:
    """A SOCKS5 CONNECT as the HTTP CONNECT it stands for."""
    authority = format_authority(socks.host, socks.port)
    return ProxyRequest("CONNECT", socks.host, socks.port, f"https://{authority}", {}, b"")
