"""Limits on an HTTP/1.1 request head, checked before anyone parses it.

The relay's WebSocket port (in front of picows, see wsserver.py) and every
admin port read a request head before they answer. `HeadScanner` watches the
bytes as they arrive and stops at the first limit crossed, so an oversized head
gets `431 Request Header Fields Too Large` with the limit it broke instead of
a bare connection reset. It scans each byte about once (a slow head sent a byte
at a time costs no rescans) and runs only until the head is complete.

`refuse` answers and then half-closes: it sends FIN but keeps reading (and
discarding) until the peer closes, so that the rest of an oversized head,
still in flight, does not turn our close into an RST, which would destroy the
answer in the peer's receive queue. The caller's own deadline bounds the wait.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from fastrelay.protocol.status import phrase

# The relay's WebSocket upgrade. picows itself drops (no answer) a head of
# 16 KiB or more without its blank line and one with more than 128 headers,
# so these stay at or under those.
MAX_HEAD = 16 * 1024  # request line, header lines and the blank line, CRLFs included
MAX_LINE = 8 * 1024  # one line of the head, CRLF excluded
MAX_FIELDS = 100  # header lines


@dataclass(frozen=True, slots=True)
class HeadLimits:
    head: int = MAX_HEAD
    line: int = MAX_LINE
    fields: int = MAX_FIELDS


RELAY_LIMITS = HeadLimits()  # the WebSocket port's; admin.py has its own


@dataclass(frozen=True, slots=True)
class Refusal:
    """Which limit a head broke (`kind`, a metrics label) and the reason sent."""

    kind: str
    reason: str


# Also the `limit` labels of fastrelay_limit_hits_total (metrics.LIMITS).
HEAD_SIZE = "head_size"
HEAD_LINE = "head_line"
HEAD_FIELDS = "head_fields"


class HeadScanner:
    """Feed it the whole buffer each time (it grows, the start never moves).
    `scan` returns None while the head is incomplete and within the limits,
    the head's length (blank line included) once it is complete, or the
    `Refusal` for the first limit crossed."""

    __slots__ = ("fields", "limits", "line_start", "scanned")

    def __init__(self, limits: HeadLimits) -> None:
        self.limits = limits
        self.line_start = 0  # where the current, unfinished line starts
        self.scanned = 0  # bytes already searched for a CRLF
        self.fields = 0

    def scan(self, buf: bytes | bytearray) -> int | Refusal | None:
        limits = self.limits
        while True:
            start = self.line_start
            end = buf.find(b"\r\n", max(start, self.scanned - 1))
            if end < 0:
                self.scanned = len(buf)
                if len(buf) - start > limits.line + 1:  # +1: a CR may be half of the CRLF
                    return self._line()
                if len(buf) >= limits.head:  # the blank line can no longer fit
                    return self._size()
                return None
            if end - start > limits.line:
                return self._line()
            self.line_start = self.scanned = end + 2
            if end == start:  # the blank line: the head is complete
                return end + 2 if end + 2 <= limits.head else self._size()
            if start > 0:  # not the request line
                self.fields += 1
                if self.fields > limits.fields:
                    return Refusal(HEAD_FIELDS, f"more than {limits.fields} header fields")

    def _line(self) -> Refusal:
        return Refusal(HEAD_LINE, f"a line of the request head is over {self.limits.line} bytes")

    def _size(self) -> Refusal:
        return Refusal(HEAD_SIZE, f"request head over {self.limits.head} bytes")


STATUS_431 = f"431 {phrase(431)}"


def response(status: str, body: bytes, extra: bytes = b"") -> bytes:
    """A complete `Connection: close` plain-text HTTP/1.1 response."""
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n"
    ).encode()
    return head + extra + b"\r\n" + body


def send_and_linger(transport: asyncio.Transport, data: bytes) -> bool:
    """Write `data`, then half-close if the transport can (plain TCP). Returns
    True when the caller should keep reading, discard what comes and close on
    the peer's EOF (or its own deadline); False when it was closed here (TLS
    has no half-close)."""
    transport.write(data)
    if transport.can_write_eof():
        transport.write_eof()
        return True
    transport.close()
    return False
