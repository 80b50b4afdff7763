"""An open's objects are freed by reference counting, not left to the garbage collector.

client_a's browser connection, its route and the stream link to each other while the open
lives; once the stream has ended and the browser's connection is lost those links are
dropped, and the request head parser holds no cycle. With the collector off, each object
is gone as soon as the last outside reference goes (bench/README.md, "Setup": cyclic
garbage of ~23 objects per open made the collector run every few opens).
"""

from __future__ import annotations

import asyncio
import weakref
from types import SimpleNamespace

import pytest

from client_a.browser import BrowserConnection, ConnectionGate
from client_a.config import load
from client_a.proxy import Proxy
from client_a.routes import RelayRoute
from client_a.rules import DEFAULT_RULE, Rules
from fastrelay.io.tunnel import StreamSocket
from fastrelay.protocol.http import RequestBodyTracker, RequestHeadParser
from fastrelay.protocol.session import End

CONNECT = b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n"


class FakeTransport:
    """The browser's transport, as far as a tunnel's start and end go: like
    aiofastnet's, it lets go of its protocol once it told it the connection
    was lost."""

    def __init__(self) -> None:
        self.protocol: object = None

    def set_protocol(self, protocol: object) -> None:
        self.protocol = protocol

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default  # no socket: nothing to ask for a pending reset

    def is_closing(self) -> bool:
        return self.protocol is None

    def lose(self, exc: Exception | None) -> None:
        protocol, self.protocol = self.protocol, None
        protocol.connection_lost(exc)  # type: ignore[attr-defined]


class FakeStream:
    """What the route and the proxy read of a finished session Stream."""

    opened = True
    ended = True
    end = End.FINISHED
    session_id = "s"
    bytes_up = bytes_down = 0

    def __init__(self) -> None:
        self.owner: object = None
        self.lost: list[BaseException | None] = []

    def socket_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)


def test_a_parsed_request_head_leaves_no_cycle(no_collector: None) -> None:
    parser = RequestHeadParser()
    request = parser.feed(CONNECT)
    assert request is not None and request.host == "a.test"
    reader = weakref.ref(parser._reader)
    del parser
    assert reader() is None


@pytest.mark.parametrize(
    ("head", "body"),
    [
        (b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n", b"hello"),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", b"5\r\nhello\r\n0\r\n\r\n"),
        (b"GET / HTTP/1.1\r\n\r\n", b""),
    ],
    ids=["content_length", "chunked", "no_body"],
)
def test_a_plain_request_body_tracker_leaves_no_cycle(
    no_collector: None, head: bytes, body: bytes
) -> None:
    """client_a follows each plain request's body with two llhttp parsers, which call
    back into plain event objects, never into the probes that hold them."""
    tracker = RequestBodyTracker(head)
    assert tracker.feed(body + b"GET") == len(body) and tracker.complete
    probes = [weakref.ref(tracker._ahead), weakref.ref(tracker._behind)]
    del tracker
    assert [ref() for ref in probes] == [None, None]


@pytest.mark.parametrize("stream_ends_first", [True, False])
def test_a_finished_relay_open_leaves_no_cycle(no_collector: None, stream_ends_first: bool) -> None:
    loop = asyncio.new_event_loop()
    try:
        config = load(["--relay", "ws://127.0.0.1:1"], {"FASTRELAY_TOKEN": "t"})
        proxy = Proxy(config, Rules())
        browser = BrowserConnection(proxy, ConnectionGate(loop, 10, 30.0))
        request = browser.parser.feed(CONNECT)  # type: ignore[union-attr]
        assert request is not None
        browser.request = request
        carrier = SimpleNamespace(instance_id="relay-1")
        route = RelayRoute(proxy, browser, carrier, request, None, DEFAULT_RULE)  # type: ignore[arg-type]
        stream = FakeStream()
        stream.owner, route.stream = route, stream  # type: ignore[assignment]
        transport = FakeTransport()
        browser.transport = transport  # type: ignore[assignment]
        browser.start(route, stream)  # type: ignore[arg-type]
        # The tunnel's reads go through the stream's own protocol from now on.
        assert browser.sink is route
        assert isinstance(transport.protocol, StreamSocket)
        assert transport.protocol.stream is stream
        refs = [weakref.ref(browser), weakref.ref(route)]
        if stream_ends_first:
            proxy.on_stream_end(object(), stream)  # type: ignore[arg-type]
            transport.lose(None)
        else:
            transport.lose(None)
            proxy.on_stream_end(object(), stream)  # type: ignore[arg-type]
        assert stream.lost == [None]  # the route still heard the browser go
        assert browser.closed  # and so did the browser connection (its slot)
        del browser, route, stream, request, transport, carrier
        assert [ref() for ref in refs] == [None, None]
    finally:
        loop.close()
