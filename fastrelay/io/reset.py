"""Ending a socket with an RST after everything already sent has reached the peer.

Inside a CONNECT tunnel nothing frames the length, so when the far side aborts
(the target reset, the agent died, the relay connection was lost) a FIN would
make a truncated transfer look complete. The socket is reset instead
(SO_LINGER {1, 0}, then close), but only once the bytes that arrived before the
abort are with the peer: an RST discards whatever is still in our transport's
write buffer or in the kernel's send queue, while bytes already in the peer's
receive queue stay readable there (Linux), ahead of the ECONNRESET.

So `reset_when_sent` stops reading, waits (polling, bounded) until the
transport's write buffer and the kernel's send queue (SIOCOUTQ) are empty, then
resets. If the bound passes first the peer is not reading, and it is reset
anyway. This runs only on aborts; nothing here touches the data path.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import socket
import struct
import termios
import time

__all__ = [
    "RESET_WAIT",
    "TCP_CLOSE",
    "TCP_INFO",
    "rearm",
    "rearm_if_closed",
    "reset_when_sent",
    "state_socket",
]

RESET_WAIT = 5.0  # seconds a peer gets to take the bytes before the reset
_FIRST_POLL = 0.002
_MAX_POLL = 0.1
_LINGER_ZERO = struct.pack("ii", 1, 0)
_SIOCOUTQ = getattr(termios, "TIOCOUTQ", None)  # SIOCOUTQ on Linux: bytes not yet acked
# Linux: struct tcp_info, tcpi_state first; -1 where there is none (state_socket gives None).
TCP_INFO: int = getattr(socket, "TCP_INFO", -1)
TCP_CLOSE = 7  # tcpi_state of a connection that is over (reset, or both FINs through)


def _unsent(transport: asyncio.Transport, fd: int) -> int:
    """Bytes not yet with the peer: our write buffer, then the kernel's queue."""
    buffered = transport.get_write_buffer_size()
    if buffered or fd < 0 or _SIOCOUTQ is None:
        return buffered
    out = array.array("i", [0])
    try:
        fcntl.ioctl(fd, _SIOCOUTQ, out)
    except OSError:
        return 0  # no such query here (or the socket is gone): nothing to wait for
    return out[0]


class _Reset:
    """One pending reset: polls until the bytes are sent or the time is up."""

    __slots__ = ("deadline", "delay", "fd", "sock", "transport")

    def __init__(self, transport: asyncio.Transport, wait: float) -> None:
        self.transport = transport
        self.sock = transport.get_extra_info("socket")
        fd = -1
        if self.sock is not None:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                fd = self.sock.fileno()
        self.fd = fd
        self.deadline = time.monotonic() + wait
        self.delay = _FIRST_POLL

    def poll(self) -> None:
        transport = self.transport
        if transport.is_closing():
            return  # the peer went first, or someone closed it meanwhile
        if _unsent(transport, self.fd) and time.monotonic() < self.deadline:
            asyncio.get_running_loop().call_later(self.delay, self.poll)
            self.delay = min(self.delay * 2, _MAX_POLL)
            return
        self.fire()

    def fire(self) -> None:
        if self.sock is not None:
            # Already closed, or not a TCP socket: then a plain abort is all there is.
            with contextlib.suppress(OSError, ValueError, AttributeError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
        self.transport.abort()


def reset_when_sent(transport: asyncio.Transport, wait: float = RESET_WAIT) -> None:
    """End `transport` with an RST once what was written to it has reached the
    peer (or after `wait` seconds, whichever comes first). If that means a
    wait, the socket is not read meanwhile; if not, the reset is immediate.

    The caller must already have let go of the transport: its protocol may
    still see `pause_writing`/`resume_writing` and `connection_lost`, but no
    more data from this socket.
    """
    if transport.is_closing():
        return
    reset = _Reset(transport, wait)
    if _unsent(transport, reset.fd):  # a wait: nothing more is read meanwhile
        with contextlib.suppress(Exception):  # after EOF, say: reading has stopped already
            transport.pause_reading()
    reset.poll()


def state_socket(transport: asyncio.BaseTransport) -> socket.socket | None:
    """The socket whose TCP state `rearm_if_closed` reads after each read from
    `transport`, or None where there is no TCP_INFO to read.

    The transport's own socket object, not the `asyncio.trsock.TransportSocket`
    that `get_extra_info("socket")` wraps it in: the wrapper's `getsockopt` is a
    Python call on every read (~1.4 us of client_a's ~30 us of user CPU per round
    trip, py-spy). Only `getsockopt` is ever called on it.
    """
    if TCP_INFO < 0:
        return None
    sock = transport.get_extra_info("socket")
    return getattr(sock, "_sock", sock)


def rearm(transport: asyncio.BaseTransport) -> None:
    """Have a transport whose connection is closed (TCP_CLOSE) read on, if it reads."""
    if transport.is_reading():  # type: ignore[attr-defined]
        transport.pause_reading()  # type: ignore[attr-defined]
        transport.resume_reading()  # type: ignore[attr-defined]


def rearm_if_closed(transport: asyncio.BaseTransport, sock: socket.socket | None) -> None:
    """After a read from one of aiofastnet's transports: if the connection is
    already closed (the peer's reset came), have the transport read on.

    On uvloop aiofastnet watches a socket with `add_reader`, which libuv stops
    for good once the kernel reports an error: the reader gets that event once
    more, and its read loop, which returns at a short read (or after 256 KiB),
    takes the bytes but never the reset behind them. The connection then never
    ends (a browser's last bytes and its reset arriving together, say, left
    the tunnel open until the target spoke). So after every read the socket's
    TCP state is read (TCP_INFO, its first byte: one syscall, ~0.5 us, and
    unlike SO_ERROR it leaves the error for the read to report). Closed, and
    still reading, the transport watches the socket afresh (a pause and a
    resume), so its next read takes what is left and then fails with the
    reset, as on any other loop. Only closes take that path.

    `sock` is `state_socket(transport)`. The compiled `StreamSocket`
    (fastrelay/io/tunnel.py) makes the same check inline, on every read of a
    tunnel's browser socket.
    """
    if sock is None:
        return
    try:
        state = sock.getsockopt(socket.IPPROTO_TCP, TCP_INFO, 1)
    except (OSError, ValueError):  # closed meanwhile: its end is on its way already
        return
    if state and state[0] == TCP_CLOSE:
        rearm(transport)
