"""Writing mux frames to a picows WebSocket: small frames coalesced, large ones alone.

Every picows `send()` is one `send()` syscall, so a relay that writes each
small frame on its own tops out near 100k frames/s here. A `MuxWriter`
appends frames under `LARGE_FRAME` bytes to a pending buffer and a
`FlushScheduler` writes each dirty buffer once per read batch: right after the
last frame of a WebSocket read, or at the end of the event-loop iteration for
writes from anywhere else (a TCP read, a timer). The one exception is a write
from outside a frame when the scheduler is quiet (no such write in the last
`QUIET_GAP` seconds): it goes out at once, since a lone message (an
interactive round trip) has nothing to be coalesced with, and the deferral
(a loop callback per message) was 14-16 % of an endpoint's instructions per
round trip. A frame of `LARGE_FRAME` bytes
or more is sent on its own straight from the caller's buffer: picows (server
side) writes it with `writev` without a user-space copy, and aiofastnet copies
only an unsent tail, so a view into another connection's read buffer is safe.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from picows import WSMsgType, WSTransport

LARGE_FRAME = 8192  # picows memcpy()s server-side payloads up to 8 KiB anyway
FLUSH_AT = 256 * 1024  # a pending batch this big goes out without waiting
_BINARY = WSMsgType.BINARY
# A write from outside a frame goes out at once when no other did in this many
# seconds; one that follows closer joins the batch flushed at the end of the
# loop iteration. Under load (many streams, many reads per iteration) the
# writes come closer than this, so each iteration still makes one write per
# WebSocket; a quiet scheduler makes at most one immediate write per
# QUIET_GAP, plus the iteration's batch.
QUIET_GAP = 50e-6


class FlushScheduler:
    """Flushes every dirty writer once per read batch.

    Inside a WebSocket frame's callback (`in_frame`), marking a writer
    schedules nothing: when the callback of the last frame of the read ends
    (picows' `last_in_buffer`), `frame_done` flushes at once, so a forwarded
    message leaves without waiting for another loop iteration. Anything marked
    elsewhere (a TCP read, a timer) is flushed at the end of the loop
    iteration, after all the reads of that iteration were handled, unless the
    scheduler is quiet: then that one write goes out at once (see QUIET_GAP).
    """

    __slots__ = ("call_soon", "clock", "dirty", "flush_cb", "in_frame", "quiet_after", "scheduled")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.call_soon = loop.call_soon
        self.flush_cb = self.flush_scheduled  # bound once, not per scheduling
        self.clock = clock
        self.dirty: list[MuxWriter] = []
        self.scheduled = False
        self.in_frame = False  # inside a WebSocket frame's callback
        # Writes from outside a frame before this time join the batch.
        self.quiet_after = float("-inf")

    def quiet_now(self) -> bool:
        """A writer with nothing pending has a write: may it go out at once?
        Only outside a frame, with no batch waiting for the end of the
        iteration, and no other such write in the last QUIET_GAP seconds;
        either way this write counts as the latest."""
        if self.in_frame:
            return False
        now = self.clock()
        quiet = now >= self.quiet_after and not self.scheduled
        self.quiet_after = now + QUIET_GAP
        return quiet

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

    def flush_scheduled(self) -> None:
        """The end of the loop iteration: the batch leaves, and the scheduler
        counts as busy for QUIET_GAP more (the next iteration's first write
        joins its own batch too)."""
        self.quiet_after = self.clock() + QUIET_GAP
        self.flush_all()

    def flush_all(self) -> None:
        dirty, self.dirty = self.dirty, []
        self.scheduled = False
        for writer in dirty:
            writer.flush()


class MuxWriter:
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
        if len(frames) >= LARGE_FRAME:
            if self.pending:
                self.flush()
            self.messages += 1
            self.transport.send(_BINARY, frames)
            return
        pending = self.pending
        if not pending:
            if self.scheduler.quiet_now():
                # A lone write: nothing to coalesce it with, and picows copies
                # it (under LARGE_FRAME), so it needs no copy into `pending`.
                self.messages += 1
                self.transport.send(_BINARY, frames)
                return
            pending += frames  # under LARGE_FRAME: below FLUSH_AT
            self.scheduler.mark(self)
            return
        pending += frames
        if len(pending) >= FLUSH_AT:
            self.flush()

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
