"""aiofastnet listeners that pause, rather than spin, when the process runs
out of file descriptors (the relay's WebSocket port, client_a's proxy port).

WORKAROUND for aiofastnet 1.2.0 (aiofastnet/api_utils.py,
`Server._accept_connection`): when accept() fails with EMFILE, ENFILE,
ENOBUFS or ENOMEM it logs the error and then calls
`listening_sock.remove_reader(...)`, a method sockets do not have. The
AttributeError skips its back-off, the listening socket stays readable and
the loop calls it again at once: 100 % CPU and two tracebacks per try
(60,000+ log lines a second) for as long as the fds are gone.

`create_server` therefore re-registers each listening socket with aiofastnet's
own accept loop behind `_Guard`, whose accept() handles those errors first:
it stops watching the socket for `PAUSE` seconds (asyncio's back-off),
counts the pause and logs one rate-limited warning, then raises
BlockingIOError, which aiofastnet's loop takes as "nothing more to accept".
The faulty branch is never reached, so a fixed aiofastnet changes nothing;
should its Server lose `_sockets` or `_accept_connection`, the guard is not
installed and says so (tests/e2e/test_fd_exhaustion.py then fails). On an
aiofastnet upgrade, check whether api_utils still calls
`listening_sock.remove_reader`; if not, this guard may go. The admin
endpoints use uvloop's create_server, which does not need it: on
EMFILE/ENFILE libuv accepts and closes the pending connections with a spare
fd it keeps (no spin, no log; the caller sees the connection closed).

The guard also accepts itself (`_accept_ready`), for a listener without TLS:
aiofastnet's accept loop starts a Task per connection, whose coroutine awaits
a second one that makes the transport (`_accept_connection2`,
`_create_connection_transport`); the guard makes the same transport
(`SelectorSocketTransport(loop, sock, protocol, server=server)`, tracked by
`server._attach`, exactly that coroutine's non-TLS path) at once. Should the
Server lose those attributes, aiofastnet's own loop is used (`direct` False).

While paused the process also hands back a small reserve of fds
(`FD_RESERVE`, held from the first listener on), so /healthz, a scrape or a
dial still get an fd during the episode; the reserve is taken again before
accepting resumes, so the listener alone never eats the last few.
"""

from __future__ import annotations

import _socket
import asyncio
import errno
import logging
import os
import resource
import socket
from collections.abc import Callable, Iterable
from typing import Any

import aiofastnet
from prometheus_client.core import Metric

from fastrelay import metrics
from fastrelay.lifecycle import BindError, format_address
from fastrelay.logs import RateLimitedLog

PAUSE = 0.5  # seconds a listening socket is left alone after running out
FD_RESERVE = 16
OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}

log = logging.getLogger("fastrelay.listener")
_warn = RateLimitedLog(log, period=10.0, burst=1)
_reserve: list[int] = []
_pauses = 0
_installed = False  # a guard exists in this process: export the counter
try:
    from aiofastnet.selector_transport import SelectorSocketTransport as _Transport
except ImportError:  # pragma: no cover - an aiofastnet without it: its own accept loop
    _Transport = None
_SERVER_PARTS = ("_attach", "_backlog", "_protocol_factory", "_ssl_context")


def _refill_reserve() -> None:
    while len(_reserve) < FD_RESERVE:
        try:
            _reserve.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
        except OSError:
            return  # still short; the next pause frees what we have


def _release_reserve() -> None:
    while _reserve:
        os.close(_reserve.pop())


class _Accepted(socket.socket):
    """A connection's socket whose `family` and `type` read as the ints they are (the C
    socket's own attributes), where `socket.socket` converts them to enums on every read:
    aiofastnet's transport reads them for each connection it is made for (set_nodelay)."""

    __slots__ = ()
    family = _socket.socket.family  # type: ignore[assignment]
    type = _socket.socket.type  # type: ignore[assignment]


class _Guard:
    """Stands in for a listening socket in aiofastnet's accept loop, which
    calls only its accept() and fileno()."""

    __slots__ = ("address", "direct", "kind", "loop", "server", "sock")

    def __init__(self, loop: asyncio.AbstractEventLoop, server: Any, sock: Any) -> None:
        self.loop, self.server, self.sock = loop, server, sock
        self.address = format_address(sock.getsockname())
        # What `accept` makes each connection's socket of: the family, type and protocol
        # as plain ints, once (socket.socket's properties convert them to enums per call).
        self.kind = (
            (int(sock.family), int(sock.type), int(sock.proto))
            if hasattr(sock, "_accept")
            else None
        )
        self.direct = (
            _Transport is not None
            and all(hasattr(server, name) for name in _SERVER_PARTS)
            and server._ssl_context is None
        )

    def fileno(self) -> int:
        return self.sock.fileno()

    def watch(self) -> None:
        if self.direct:
            self.loop.add_reader(self.sock.fileno(), self._accept_ready)
        else:
            self.loop.add_reader(self.sock.fileno(), self.server._accept_connection, self)

    def _accept_ready(self) -> None:
        """aiofastnet's accept loop, with each transport made here and now."""
        server = self.server
        for _ in range(server._backlog + 1):
            try:
                conn, _ = self.accept()
            except ConnectionAbortedError:
                continue
            except (BlockingIOError, InterruptedError):
                return  # nothing more to accept now (or paused: see accept)
            if server._sockets is None:  # the server was closed meanwhile
                conn.close()
                return
            try:
                conn.setblocking(False)
                transport = _Transport(self.loop, conn, server._protocol_factory(), server=server)
            except BaseException:
                conn.close()
                raise
            server._attach(transport)

    def accept(self) -> tuple[Any, Any]:
        """The next connection. `socket.accept` reads the listening socket's `family` and
        `type`, which `socket.socket` converts to enums on every read; the guard knows
        them as ints already (bench/README.md, "Instructions per open")."""
        try:
            kind = self.kind
            if kind is None:  # not a socket.socket: whatever its accept() gives
                return self.sock.accept()
            fd, addr = self.sock._accept()
            return _Accepted(kind[0], kind[1], kind[2], fd), addr
        except OSError as exc:
            if exc.errno not in OUT_OF_RESOURCES:
                raise
            self._pause(exc.errno)
            raise BlockingIOError(errno.EAGAIN, "accepting paused") from None

    def _pause(self, code: int) -> None:
        global _pauses
        _pauses += 1
        self.loop.remove_reader(self.sock.fileno())
        _release_reserve()
        self.loop.call_later(PAUSE, self._resume)
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        what = "file descriptors" if code in (errno.EMFILE, errno.ENFILE) else "kernel memory"
        _warn.warning(
            f"out of {what} ({errno.errorcode[code]}, fd limit {soft}): "
            f"accepting on {self.address} paused for {PAUSE:g} s",
        )

    def _resume(self) -> None:
        if self.server._sockets is None or self.sock.fileno() < 0:
            return  # the server was closed meanwhile
        _refill_reserve()
        self.watch()


async def create_server(
    loop: asyncio.AbstractEventLoop,
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    host: str,
    port: int,
    **kwargs: Any,
) -> asyncio.AbstractServer:
    """aiofastnet.create_server, with the accept guard described above."""
    global _installed
    try:
        server = await aiofastnet.create_server(loop, protocol_factory, host, port, **kwargs)
    except OSError as exc:  # every listener here is a program's --listen
        raise BindError("--listen", host, port, exc) from None
    sockets = getattr(server, "_sockets", None)
    if sockets is None or not hasattr(server, "_accept_connection"):
        log.warning(
            "aiofastnet %s: accept guard not installed (Server has changed); "
            "running out of fds may make the accept loop spin",
            aiofastnet.__version__,
        )
        return server
    _installed = True
    _refill_reserve()
    for sock in sockets:
        _Guard(loop, server, sock).watch()  # replaces aiofastnet's own reader
    return server


def collect() -> Iterable[Metric]:
    if _installed:
        yield metrics.F_ACCEPT_PAUSES.one(_pauses)
