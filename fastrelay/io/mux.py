"""Writing mux frames to a picows WebSocket: small frames coalesced, large ones alone.

Every picows `send()` is one `send()` syscall, so a relay that writes each
small frame on its own tops out near 100k frames/s here. A `MuxWriter`
appends frames under `LARGE_FRAME` bytes to a pending buffer and a
`FlushScheduler` writes each dirty buffer once per read batch: right after the
last frame of a WebSocket read, or at the end of the event-loop iteration for
writes from anywhere else. A frame of `LARGE_FRAME` bytes
or more is sent on its own straight from the caller's buffer: picows (server
side) writes it with `writev` without a user-space copy, and aiofastnet copies
only an unsent tail, so a view into another connection's read buffer is safe.
"""

from __future__ import annotations

import asyncio

from picows import WSMsgType, WSTransport

from fastrelay.protocol.output import Output

LARGE_FRAME = 8192  # picows memcpy()s server-side payloads up to 8 KiB anyway
FLUSH_AT = 256 * 1024  # a pending batch this big goes out without waiting
_BINARY = WSMsgType.BINARY
# C integers when compiled (mux.pxd): `write` compares a length with each per frame.
_LARGE_FRAME = LARGE_FRAME
_FLUSH_AT = FLUSH_AT


class FlushScheduler:
    """Flushes every dirty writer once per read batch.

    Inside a WebSocket frame's callback (`in_frame`), marking a writer
    schedules nothing: when the callback of the last frame of the read ends
    (picows' `last_in_buffer`), `frame_done` flushes at once, so a forwarded
    message leaves without waiting for another loop iteration. Anything marked
    elsewhere (a TCP read, a timer) is flushed at the end of the loop
    iteration, after all the reads of that iteration were handled.
    """

    __slots__ = ("call_soon", "dirty", "flush_cb", "in_frame", "scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.call_soon = loop.call_soon
        self.flush_cb = self.flush_all  # bound once, not per scheduling
        self.dirty: list[MuxWriter] = []
        self.scheduled = False
        self.in_frame = False  # inside a WebSocket frame's callback

    def mark(self, writer: MuxWriter) -> None:
        self.dirty.append(writer)
        if not self.scheduled and not self.in_frame:
            self.scheduled = True
            self.call_soon(self.flush_cb)

    def frame_done(self, last_in_buffer: bool) -> None:
        """A frame's callback ended (call it in a `finally`): at the read's last
        frame flush now; otherwise make sure a flush is scheduled, in case no
        later frame of this read is ever delivered (a parse error closes the
        connection first)."""
        self.in_frame = False
        if self.dirty:
            if last_in_buffer:
                self.flush_all()
            elif not self.scheduled:
                self.scheduled = True
                self.call_soon(self.flush_cb)

    def flush_all(self) -> None:
        dirty, self.dirty = self.dirty, []
        self.scheduled = False
        for writer in dirty:
            writer.flush()


class MuxWriter(Output):
    """The outgoing side of one WebSocket, in whole mux frames."""

    __slots__ = ("closed", "messages", "pending", "scheduler", "transport")

    def __init__(self, transport: WSTransport, scheduler: FlushScheduler) -> None:
        self.transport = transport
        self.scheduler = scheduler
        self.pending = bytearray()
        self.closed = False
        self.messages = 0  # WebSocket messages written, for metrics and benchmarks

    def write(self, frames: bytes | bytearray | memoryview) -> None:
        """Queue one or more complete mux frames (header and payload)."""
        if self.closed:
            return
        if len(frames) >= _LARGE_FRAME:
            if self.pending:
                self.flush()
            self.messages += 1
            self.transport.send(_BINARY, frames)
            return
        pending = self.pending
        was_empty = not pending
        pending += frames
        if len(pending) >= _FLUSH_AT:
            self.flush()
        elif was_empty:
            self.scheduler.mark(self)

    def write_external(self, buf: bytearray, offset: int) -> None:
        """Send `buf[offset:]`, one complete mux frame, as its own message with
        picows writing the WebSocket header into `buf[:offset]` (no copy)."""
        if self.closed:
            return
        if self.pending:
            self.flush()
        self.messages += 1
        self.transport.send_reuse_external_bytearray(_BINARY, buf, offset)

    def flush(self) -> None:
        pending = self.pending
        if not pending or self.closed:
            return
        # A new buffer rather than clear(): the transport may still hold a
        # view of the old one if the socket took only part of it.
        self.pending = bytearray()
        self.messages += 1
        self.transport.send(_BINARY, pending)

    def close(self) -> None:
        self.closed = True
        self.pending = bytearray()
