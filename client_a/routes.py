"""The two routes a browser connection can take.

* RelayRoute: a session `Stream` on a carrier WebSocket, opened with CONNECT
  or REQUEST, answered by the agent through the relay.
* DirectPipe: a plain TCP connection from client_a to the target.

For plain-HTTP requests both rewrite the response head to `Connection: close`
and end the exchange after one response.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from client_a.browser import BrowserConnection
from fastrelay.io.reset import reset_when_sent
from fastrelay.protocol.errors import HttpError
from fastrelay.protocol.http import ProxyRequest, ResponseHeadRewriter
from fastrelay.protocol.session import End, Stream
from fastrelay.protocol.status import Failure, failure_of

if TYPE_CHECKING:
    from client_a.proxy import Proxy
    from client_a.rules import Rule
    from fastrelay.io.carrier import Carrier

# Refusals that another relay (or carrier) may not share: retried once.
RETRYABLE = frozenset(
    {
        Failure.NO_AGENT,
        Failure.NO_POOL_AGENT,
        Failure.DRAINING,
        Failure.OPEN_LIMIT,
        Failure.TOKEN_SHARE,
    }
)
# Counted by the relay across all of this token's connections: the same on every
# carrier to that relay, so retried only on another relay.
RELAY_WIDE = frozenset({Failure.TOKEN_SHARE})


class ResponseDeadline:
    """The response-head deadline of a plain-HTTP request (--response-timeout),
    shared by both routes: past it, with nothing of the response sent on,
    the route fails with RESPONSE_TIMEOUT (504)."""

    proxy: Proxy
    request: ProxyRequest
    response_started: bool
    response_timer: asyncio.TimerHandle | None = None

    def fail(self, failure: Failure, detail: str) -> None:
        raise NotImplementedError

    def start_response_timer(self) -> None:
        timeout = self.proxy.config.response_timeout
        if timeout > 0:
            self.response_timer = asyncio.get_running_loop().call_later(
                timeout, self.response_timed_out
            )

    def head_arrived(self) -> None:
        if self.response_timer is not None:
            self.response_timer.cancel()
            self.response_timer = None

    def response_timed_out(self) -> None:
        self.response_timer = None
        if not self.response_started:
            timeout = self.proxy.config.response_timeout
            self.fail(
                Failure.RESPONSE_TIMEOUT,
                f"no response head from {self.request.host} within {timeout:g} s "
                "(--response-timeout)",
            )


class RelayRoute(ResponseDeadline):
    """A browser request carried by a session `Stream` (its `owner`): answers
    the browser as the stream's open turns out, and is the browser
    connection's sink once the tunnel is open."""

    def __init__(
        self,
        proxy: Proxy,
        browser: BrowserConnection,
        carrier: Carrier,
        request: ProxyRequest,
        first_try: str | None,
        rule: Rule,
    ) -> None:
        self.proxy = proxy
        self.browser = browser
        self.carrier = carrier
        self.request = request
        # The one retry after a retryable failure has its first try's "RELAY:REASON".
        self.first_try = first_try
        self.rule = rule  # the host's rule: its pool and its fallback
        self.stream: Stream | None = None
        self.result = ""  # why it failed, for the access log
        self.reason = ""  # the failure's precise reason word, for the access log
        self.response_started = False  # some of the response reached the browser

    @property
    def retried(self) -> bool:
        """This open is the retry (there is only one)."""
        return self.first_try is not None

    def opened(self, stream: Stream) -> None:
        """The agent answered 200."""
        browser = self.browser
        if browser.closed or browser.transport is None or browser.transport.is_closing():
            stream.abort("browser went away")
            return
        if self.request.is_connect:
            browser.transport.write(browser.established())
        else:
            stream.send(self.request.head)
            self.start_response_timer()
        self.proxy.count("relay", "ok")
        self.proxy.stats.connect_latency["relay"].observe(time.monotonic() - browser.received_at)
        browser.start(self, stream)

    def ended(self, stream: Stream) -> None:
        """The stream left its session. Before the open succeeded the browser's
        socket is still ours: answer it, or retry once on another relay."""
        self.head_arrived()
        if stream.opened or self.browser.closed:
            return
        end = stream.end
        if end is End.REFUSED:
            response = stream.response
            assert response is not None
            failure = failure_of(response.status_code, response.reason)
            pool = self.proxy.pool
            if failure is Failure.DRAINING and pool is not None:
                # Its relay is going away, over every carrier to it: not there.
                pool.relay_draining(self.carrier)
            if (
                failure in RETRYABLE
                and not self.retried
                and (
                    failure not in RELAY_WIDE
                    or (pool is not None and pool.another_relay(self.carrier))
                )
            ):
                self.reason = failure.reason
                self.retry_elsewhere()
                return
            self.fail_open(failure, response.error or "refused by the relay")
        elif end is End.EXPIRED:
            timeout = self.proxy.config.open_timeout
            self.fail_open(Failure.OPEN_TIMEOUT, f"no answer from the relay within {timeout:g} s")
        elif end is End.LOST and not self.retried:
            # Nothing reaches the target before the 200, so an open whose relay
            # connection died (a relay killed mid-open) is safe to retry.
            self.reason = Failure.RELAY_LOST.reason
            self.retry_elsewhere()
        elif end is End.LOST:
            self.fail_open(Failure.RELAY_LOST, "the connection to the relay was lost")
        else:
            self.fail_open(Failure.TUNNEL_ERROR, stream.error or "the open was aborted")

    def tried(self) -> str:
        """This try, for the retry's access-log line: "RELAY:REASON"."""
        return f"{self.carrier.instance_id}:{self.reason}"

    def log_fields(self) -> dict[str, str]:
        """The relay route's own access-log fields: the relay instance that
        answered, the precise reason of a failure, and a retry's first try."""
        fields = {"relay": self.carrier.instance_id or "-"}
        if self.reason:
            fields["reason"] = self.reason
        if self.first_try is not None:
            fields["retry_of"] = self.first_try
        return fields

    def retry_elsewhere(self) -> None:
        """A relay without an agent (still joining), a draining one or a lost
        connection: try once more, on another relay if the pool has one."""
        self.result = "retried"
        self.proxy.stats.retries += 1
        self.proxy.open_relay(self.browser, self.request, retry_of=self)

    def fail_open(self, failure: Failure, detail: str) -> None:
        """The open failed: the browser hears it, or (a fallback=direct rule, and no relay
        or agent could take it) client_a dials the host itself."""
        if self.proxy.fall_back(self.browser, self.rule, failure, detail):
            self.result = "fallback"
            return
        self.result = failure.result
        self.reason = failure.reason
        self.proxy.count("relay", failure.result)
        self.browser.reply(failure, detail)

    def fail(self, failure: Failure, detail: str) -> None:
        """The open succeeded but the exchange failed: the browser gets
        `failure` if nothing of the response reached it yet; else the stream
        and the browser's connection are aborted."""
        stream = self.stream
        if stream is None or stream.ended:
            return
        self.result = failure.result
        self.reason = failure.reason
        if not self.response_started:
            stream.detach()  # the browser gets the answer, not an abort
        stream.abort(detail)
        if not self.response_started:
            self.browser.reply(failure, detail)

    def bad_request(self, failure: Failure, reason: str) -> None:
        """The request body is malformed."""
        self.fail(failure, reason)

    # --- the browser connection's sink ---

    def tcp_data(self, data: bytes) -> None:
        if self.stream is not None:
            self.stream.send(data)

    def tcp_eof(self) -> None:
        if self.stream is not None:
            self.stream.eof()

    def tcp_lost(self, exc: BaseException | None) -> None:
        if self.stream is not None:
            self.stream.socket_lost(exc)

    def tcp_paused_writing(self) -> None:
        if self.stream is not None:
            self.stream.socket_paused_writing()

    def tcp_resumed_writing(self) -> None:
        if self.stream is not None:
            self.stream.socket_resumed_writing()


class BrowserSocket:
    """The browser's transport as the stream's `Socket` until the first byte
    of the response went through: it times the first byte and, for a
    plain-HTTP request, rewrites the response head (`Connection: close`).
    Then the stream writes to the transport directly."""

    __slots__ = ("rewriter", "route", "transport")

    def __init__(self, route: RelayRoute, transport: asyncio.Transport) -> None:
        self.route = route
        self.transport = transport
        self.rewriter = None if route.request.is_connect else ResponseHeadRewriter()

    def write(self, data: bytes | memoryview) -> None:
        route = self.route
        stream = route.stream
        rewriter = self.rewriter
        if rewriter is not None:
            try:
                data = rewriter.feed(bytes(data))
            except HttpError as exc:
                route.fail(exc.failure, exc.reason)
                return
            if not data:
                return  # the head is not complete yet
            route.head_arrived()
        if stream is not None and not route.response_started:
            route.proxy.stats.first_byte["relay"].observe(time.monotonic() - stream.opened_at)
        route.response_started = True
        if stream is not None and (rewriter is None or rewriter.done):
            stream.socket = self.transport  # from now on, straight to the transport
        self.transport.write(data)

    def write_eof(self) -> None:
        self.transport.write_eof()

    def can_write_eof(self) -> bool:
        return self.transport.can_write_eof()

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def close(self) -> None:
        self.transport.close()

    def abort(self) -> None:
        reset_when_sent(self.transport)

    def pause_reading(self) -> None:
        self.transport.pause_reading()

    def resume_reading(self) -> None:
        self.transport.resume_reading()


class DirectPipe(ResponseDeadline):
    """Browser <-> target over plain TCP, with pause/resume and half-close."""

    def __init__(
        self, proxy: Proxy, browser: BrowserConnection, request: ProxyRequest, route: str = "direct"
    ) -> None:
        self.proxy = proxy
        self.stats = proxy.stats
        self.browser = browser
        self.request = request
        self.route = route  # "direct", or "fallback" (for the access log)
        self.upstream: asyncio.Transport | None = None
        self.rewriter = None if request.is_connect else ResponseHeadRewriter()
        self.eof_up = self.eof_down = False
        self.opened_at = 0.0
        self.bytes_up = self.bytes_down = 0
        self.aborted = False
        self.result = ""  # why it failed, for the access log
        self.response_started = False  # some of the response reached the browser

    def opened(self) -> None:
        self.opened_at = time.monotonic()
        self.stats.direct_open += 1
        self.stats.connect_latency["direct"].observe(self.opened_at - self.browser.received_at)
        if not self.request.is_connect:
            self.start_response_timer()

    def ended(self, exc: BaseException | None) -> None:
        """The target socket closed: the pipe is over (every end closes it)."""
        self.head_arrived()
        stats = self.stats
        stats.direct_open -= 1
        stats.direct_duration.observe(time.monotonic() - self.opened_at)
        result = self.result or ("aborted" if exc is not None or self.aborted else "ok")
        self.proxy.log_access(self.browser, self.route, result, "-", self.bytes_up, self.bytes_down)

    # browser -> target (the Sink interface)
    def tcp_data(self, data: bytes) -> None:
        if self.upstream is not None:
            n = len(data)
            self.bytes_up += n
            self.stats.direct_bytes_up += n
            self.upstream.write(data)

    def tcp_eof(self) -> None:
        self.eof_up = True
        if self.upstream is not None and self.upstream.can_write_eof():
            self.upstream.write_eof()
        self._maybe_close()

    def tcp_lost(self, exc: BaseException | None) -> None:
        if self.upstream is not None and not self.upstream.is_closing():
            self.aborted = exc is not None or not (self.eof_up and self.eof_down)
            if exc is not None:  # the browser aborted: so does the target's socket
                reset_when_sent(self.upstream)
            else:
                self.upstream.abort()

    def bad_request(self, failure: Failure, reason: str) -> None:
        """The request body is malformed."""
        self.fail(failure, reason)

    def fail(self, failure: Failure, detail: str) -> None:
        """The browser gets `failure` if nothing of the response reached it
        yet; else both sides are aborted (the browser's socket with an RST,
        as on the relay route)."""
        self.aborted = True
        self.result = failure.result
        browser = self.browser.transport
        if browser is not None and not browser.is_closing():
            if self.response_started:
                reset_when_sent(browser)
            else:
                self.browser.reply(failure, detail)
        if self.upstream is not None and not self.upstream.is_closing():
            self.upstream.abort()

    # After a side's EOF its reading must stay untouched: resuming a socket
    # that already reported EOF makes its transport report it again (aiofastnet then closes it).
    def tcp_paused_writing(self) -> None:
        if self.upstream is not None and not self.eof_down:
            self.upstream.pause_reading()

    def tcp_resumed_writing(self) -> None:
        if self.upstream is not None and not self.eof_down and not self.upstream.is_closing():
            self.upstream.resume_reading()

    # target -> browser (called by DirectUpstream)
    def upstream_data(self, data: bytes) -> None:
        n = len(data)
        if not self.bytes_down:
            self.stats.first_byte["direct"].observe(time.monotonic() - self.opened_at)
        self.bytes_down += n
        self.stats.direct_bytes_down += n
        browser = self.browser.transport
        if browser is None or browser.is_closing():
            return
        if self.rewriter is not None:
            try:
                data = self.rewriter.feed(data)
            except HttpError as exc:
                self.fail(exc.failure, exc.reason)
                return
            if data and self.rewriter.done:
                self.rewriter = None
        if data:
            self.response_started = True
            self.head_arrived()
        browser.write(data)

    def upstream_eof(self) -> None:
        self.eof_down = True
        browser = self.browser.transport
        if not self.request.is_connect:
            self.eof_up = True  # one request, one response
        elif browser is not None and not browser.is_closing() and browser.can_write_eof():
            browser.write_eof()
        self._maybe_close()

    def _maybe_close(self) -> None:
        if self.eof_up and self.eof_down:
            self._close_all()

    def _close_all(self) -> None:
        for transport in (self.upstream, self.browser.transport):
            if transport is not None and not transport.is_closing():
                transport.close()


class DirectUpstream(asyncio.Protocol):
    """The target's socket. What it sends before `release()` (a server that speaks first,
    such as SSH or SMTP, can be read before the dial's coroutine resumes) is held, so it
    never overtakes the answer to the browser's CONNECT. Not pause_reading() in
    connection_made: the loop starts reading after connection_made returns, and on the
    stdlib loop a transport paused then kept its fd in the selector after it closed."""

    def __init__(self, pipe: DirectPipe) -> None:
        self.pipe = pipe
        self.held: list[bytes] | None = []  # None once released
        self.held_eof = False

    def release(self) -> None:
        """The browser has its answer: pass on what the target sent meanwhile."""
        held, self.held = self.held, None
        for data in held or ():
            self.pipe.upstream_data(data)
        if self.held_eof:
            self.pipe.upstream_eof()

    def data_received(self, data: bytes) -> None:
        if self.held is not None:
            self.held.append(data)
            return
        self.pipe.upstream_data(data)

    def eof_received(self) -> bool:
        if self.held is not None:
            self.held_eof = True
            return True
        self.pipe.upstream_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.pipe.opened_at:
            self.pipe.ended(exc)
        browser = self.pipe.browser.transport
        if browser is not None and not browser.is_closing():
            if exc is None:
                browser.close()
            else:  # the target reset or failed: the browser gets what came, then an RST
                reset_when_sent(browser)

    def pause_writing(self) -> None:
        browser = self.pipe.browser.transport
        if browser is not None and not self.pipe.eof_up:
            browser.pause_reading()

    def resume_writing(self) -> None:
        browser = self.pipe.browser.transport
        if browser is not None and not self.pipe.eof_up and not browser.is_closing():
            browser.resume_reading()
