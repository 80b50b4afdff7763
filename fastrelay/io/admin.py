"""The admin HTTP endpoint of every program: /healthz, /readyz and /metrics, plus the
program's own `routes` (client_a's /proxy.pac).

A tiny HTTP/1.1 responder on its own port (one request per connection), so
health checks and scrapes never share a socket with tunnel traffic and need
no thread. Each connection gets READ_TIMEOUT seconds in all (request and
response; one call_later per connection): a request that has not arrived by
then gets 408, and a response the peer has not taken is aborted. At most
MAX_CONNECTIONS are open at once; the excess get 503 and are closed. A
request head over MAX_REQUEST_HEAD bytes in all, with a line over
MAX_REQUEST_LINE bytes or with more than MAX_HEADER_FIELDS header lines gets
431 with the limit it broke (httphead.py), and the rest of it is read and
discarded until the peer closes (or the timeout), so the answer is not lost
to a reset.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from fastrelay.io.httphead import HeadLimits, HeadScanner, Refusal, send_and_linger
from fastrelay.lifecycle import BindError
from fastrelay.metrics import render
from fastrelay.protocol.status import phrase

MAX_REQUEST_HEAD = 8192  # bytes, request line, header lines and blank line
MAX_REQUEST_LINE = 4096  # bytes, any one line of the head
MAX_HEADER_FIELDS = 100
HEAD_LIMITS = HeadLimits(head=MAX_REQUEST_HEAD, line=MAX_REQUEST_LINE, fields=MAX_HEADER_FIELDS)
READ_TIMEOUT = 5.0  # seconds per connection, request and response together
MAX_CONNECTIONS = 64  # open admin connections; the excess get 503
log = logging.getLogger("fastrelay.admin")
# A program's own GET/HEAD path: (method, header fields with lowercase names, the local
# address the request came to) -> the whole HTTP response; the connection closes after it.
Route = Callable[[str, dict[str, str], str | None], bytes]


class Readiness:
    """What /readyz answers: 503 while starting or draining, and (for the
    programs that dial the relay) while no relay connection is up."""

    def __init__(
        self,
        connected: Callable[[], bool] | None = None,
        unconnected: str = "not connected to a relay",
    ) -> None:
        self.phase = "starting"
        self.connected = connected
        self.unconnected = unconnected

    def set(self, phase: str) -> None:
        self.phase = phase

    def check(self) -> tuple[bool, str]:
        if self.phase != "ready":
            return False, self.phase
        if self.connected is not None and not self.connected():
            return False, self.unconnected
        return True, "ready"


class AdminLimits:
    """What one admin port's connections share: the timeout, the cap and
    how many are open."""

    __slots__ = ("loop", "max_connections", "open", "read_timeout")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, read_timeout: float, max_connections: int
    ) -> None:
        self.loop = loop
        self.read_timeout = read_timeout
        self.max_connections = max_connections
        self.open = 0


class AdminProtocol(asyncio.Protocol):
    def __init__(
        self,
        registry: CollectorRegistry,
        ready: Callable[[], tuple[bool, str]],
        limits: AdminLimits,
        routes: Mapping[bytes, Route] | None = None,
    ) -> None:
        self.routes = routes or {}
        self.registry = registry
        self.ready = ready
        self.limits = limits
        self.buffer = bytearray()
        self.scanner = HeadScanner(HEAD_LIMITS)
        self.transport: asyncio.Transport | None = None
        self.answered = False
        self.counted = False
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        limits = self.limits
        if limits.open >= limits.max_connections:
            self.respond(
                503, f"admin port busy: {limits.max_connections} connections open\n".encode()
            )
            return
        limits.open += 1
        self.counted = True
        self.timer = limits.loop.call_later(limits.read_timeout, self._expired)

    def _expired(self) -> None:
        self.timer = None
        if not self.answered:
            self.respond(408, f"no request within {self.limits.read_timeout:g} s\n".encode())
        elif self.transport is not None:
            self.transport.abort()  # the peer has not taken the response in time

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.counted:
            self.counted = False
            self.limits.open -= 1

    def data_received(self, data: bytes) -> None:
        if self.answered:
            return
        self.buffer += data
        found = self.scanner.scan(self.buffer)
        if found is None:
            return
        if isinstance(found, Refusal):
            self.buffer = bytearray()
            self.respond(431, f"{found.reason}\n".encode(), linger=True)
            return
        request_line = bytes(self.buffer.split(b"\r\n", 1)[0])
        parts = request_line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            self.respond(400, b"bad request line\n")
            return
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            self.respond(405, b"only GET\n", extra=b"Allow: GET, HEAD\r\n")
        elif target == b"/healthz":
            self.respond(200, b"ok\n")
        elif target == b"/readyz":
            ok, why = self.ready()
            self.respond(200 if ok else 503, (why + "\n").encode())
        elif target == b"/metrics":
            try:
                body = render(self.registry)
            except Exception:  # a broken collector must not take the endpoint down silently
                log.exception("rendering /metrics failed")
                self.respond(500, b"metrics collection failed; see the log\n")
                return
            self.respond(200, body, content_type=CONTENT_TYPE_LATEST)
        elif target in self.routes:
            self.answer_route(self.routes[target], method.decode("ascii", "replace"))
        else:
            paths = ", ".join(
                ["/healthz", "/readyz", "/metrics", *(p.decode() for p in self.routes)]
            )
            self.respond(404, f"not found: try {paths}\n".encode())

    def answer_route(self, route: Route, method: str) -> None:
        assert self.transport is not None
        head = bytes(self.buffer).replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]
        headers: dict[str, str] = {}
        for line in head.split(b"\n")[1:]:
            name, sep, value = line.partition(b":")
            if sep:
                key = name.strip().decode("latin-1").lower()
                text = value.strip().decode("latin-1")
                headers[key] = f"{headers[key]}, {text}" if key in headers else text
        sockname = self.transport.get_extra_info("sockname")
        local = sockname[0] if isinstance(sockname, tuple) else None
        self.answered = True
        self.transport.write(route(method, headers, local))
        self.transport.close()

    def respond(
        self,
        status: int,
        body: bytes,
        content_type: str = "text/plain; charset=utf-8",
        extra: bytes = b"",
        linger: bool = False,
    ) -> None:
        """Answer and close; with `linger`, half-close instead and read on
        (data_received discards it) until the peer closes or the timeout."""
        assert self.transport is not None
        self.answered = True
        head = (
            f"HTTP/1.1 {status} {phrase(status)}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n"
        ).encode()
        if linger:
            send_and_linger(self.transport, head + extra + b"\r\n" + body)
            return
        self.transport.write(head + extra + b"\r\n" + body)
        self.transport.close()


async def start_admin(
    host: str,
    port: int,
    registry: CollectorRegistry,
    ready: Callable[[], tuple[bool, str]],
    *,
    read_timeout: float = READ_TIMEOUT,
    max_connections: int = MAX_CONNECTIONS,
    routes: Mapping[bytes, Route] | None = None,
) -> asyncio.AbstractServer:
    loop = asyncio.get_running_loop()
    limits = AdminLimits(loop, read_timeout, max_connections)
    try:
        return await loop.create_server(
            lambda: AdminProtocol(registry, ready, limits, routes), host, port
        )
    except OSError as exc:
        raise BindError("--admin", host, port, exc) from None
