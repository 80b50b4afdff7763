"""client_a's own answer to a browser whose connection reset under it.

client_a answers a failed open itself (a 502 for a refused target, say), then shuts its side
down so that the answer is not overtaken by a reset. The browser may reset the connection
between that write and the shutdown: the kernel then refuses `shutdown()` with ENOTCONN, and
aiofastnet's `write_eof` raises it. Caught nowhere, it escaped from the stream's end into the
session, which logged an internal error and skipped the open's access-log line (seen once in
CI as `test_client_a_logs_one_line_per_request` waiting for its fourth line). The race is the
kernel's and cannot be timed from a test, so the transport here raises what aiofastnet raised.
"""

from __future__ import annotations

import asyncio
import errno

from client_a.browser import BrowserConnection, ConnectionGate
from client_a.config import load
from client_a.proxy import Proxy
from client_a.rules import Rules
from fastrelay.protocol.status import Failure


class ResetTransport:
    """A browser transport whose peer reset after the answer was written."""

    def __init__(self, protocol: object, reset: bool) -> None:
        self.protocol = protocol
        self.reset = reset
        self.written = b""
        self.eof = False
        self.aborted = False
        self.closed = False

    def get_protocol(self) -> object:
        return self.protocol

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default

    def is_closing(self) -> bool:
        return self.aborted or self.closed

    def write(self, data: bytes) -> None:
        self.written += data

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self.reset:
            raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")
        self.eof = True

    def resume_reading(self) -> None:
        pass

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.closed = True


def answer(reset: bool) -> tuple[BrowserConnection, ResetTransport]:
    loop = asyncio.new_event_loop()
    try:
        config = load(["--relay", "ws://127.0.0.1:1"], {"FASTRELAY_TOKEN": "t"})
        browser = BrowserConnection(Proxy(config, Rules()), ConnectionGate(loop, 10, 30.0))
        transport = ResetTransport(browser, reset)
        browser.transport = transport  # type: ignore[assignment]
        browser.reply(Failure.REFUSED, "connection refused by 127.0.0.1:9")
        return browser, transport
    finally:
        loop.close()


def test_an_answer_to_a_browser_that_reset_aborts_its_socket_and_raises_nothing() -> None:
    browser, transport = answer(reset=True)
    assert transport.written.startswith(b"HTTP/1.1 502 ")  # the answer was written
    assert transport.aborted and not transport.eof  # then the socket let go at once
    assert browser.linger is None  # no timer left to close it later


def test_an_answer_to_a_browser_still_there_is_followed_by_a_fin_and_a_linger() -> None:
    browser, transport = answer(reset=False)
    assert transport.written.startswith(b"HTTP/1.1 502 ")
    assert transport.eof and not transport.aborted and not transport.closed
    assert browser.linger is not None  # closed after its EOF, or LINGER seconds at most
    browser.linger.cancel()
