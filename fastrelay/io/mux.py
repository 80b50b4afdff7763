"""Writing mux frames to a picows WebSocket: small frames coalesced, large ones alone.

Every picows `send()` is one `send()` syscall, so a relay that writes each
small frame on its own tops out near 100k frames/s here. A `MuxWriter`
appends frames under `LARGE_FRAME` bytes to a pending buffer and a
`FlushScheduler` writes each dirty buffer once per read batch: right after the
last frame of a WebSocket read, or at the end of the event-loop iteration for
writes from anywhere else. A batch is one WebSocket message, so it never grows
past the largest message the peer accepts (its `--max-frame-size`), nor past
`FLUSH_AT`. A frame of `LARGE_FRAME` bytes or more is sent on its own straight
from the caller's buffer: picows (server side) writes it with `writev` without
a user-space copy, and aiofastnet copies only an unsent tail, so a view into
another connection's read buffer is safe.

`bound_reads` caps what one read of a WebSocket may take (`BoundedReads`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiofastnet.transport import Protocol as FastProtocol
from aiofastnet.transport import Transport as FastTransport
from picows import WSMsgType, WSTransport

from fastrelay.protocol.output import Output

# Frames under this are coalesced (one copy each), frames this big or more go alone.
# 8 KiB (where picows stops copying server-side payloads) made the relay send each frame
# of 1,000 busy tunnels (~25 KB: what the agent's reads find) with its own sendmsg(), 30
# per MB moved; at 64 KiB it sends 9, its CPU per MB falls ~15 % and 1,000 tunnels move
# ~10 % more, while one bulk tunnel's 256 KiB frames go alone as before (bench/README.md,
# scenario 4's fifth look). A copy of 25 KB costs less than a loopback sendmsg().
LARGE_FRAME = 64 * 1024
FLUSH_AT = 256 * 1024  # a pending batch this big goes out without waiting (at most)
_BINARY = WSMsgType.BINARY
# A C integer when compiled (mux.pxd): `write` compares a length with it per frame.
_LARGE_FRAME = LARGE_FRAME


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

    __slots__ = ("batch_limit", "closed", "messages", "pending", "scheduler", "transport")

    def __init__(self, transport: WSTransport, scheduler: FlushScheduler, max_message: int) -> None:
        self.transport = transport
        self.scheduler = scheduler
        self.pending = bytearray()
        self.closed = False
        self.messages = 0  # WebSocket messages written, for metrics and benchmarks
        self.peer_accepts(max_message)

    def peer_accepts(self, max_message: int) -> None:
        """The largest WebSocket message the peer takes: no batch of small
        frames grows past it. The peer closes the connection (1009) on a larger
        one, which would end every stream on it: with `--max-frame-size 64KiB`,
        100 tunnels each writing 4 KB at once made client_a send a 160 KB
        batch. A single frame is never larger (the endpoints' chunks follow the
        relay's limit, and the relay forwards only frames that were within its
        own, which the endpoints' limits are at least)."""
        self.batch_limit = max(1, min(FLUSH_AT, max_message))

    def write(self, frames: bytes | bytearray | memoryview) -> None:
        """Queue one or more complete mux frames (header and payload)."""
        if self.closed:
            return
        n = len(frames)
        if n >= _LARGE_FRAME:
            if self.pending:
                self.flush()
            self.messages += 1
            self.transport.send(_BINARY, frames)
            return
        pending = self.pending
        size = len(pending)
        if size and size + n > self.batch_limit:
            self.flush()  # this frame would take the batch past what the peer accepts
            pending = self.pending
            size = 0
        pending += frames
        if size + n >= self.batch_limit:
            self.flush()
        elif not size:
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


WS_READ_SIZE = 256 * 1024  # the most one read of a WebSocket takes
_WS_READ_SIZE = WS_READ_SIZE


class BoundedReads(FastProtocol):
    """Between a WebSocket's transport and its picows protocol: every read
    takes at most WS_READ_SIZE bytes; everything else passes straight on.

    picows reads into one buffer per connection that it doubles whenever a
    read leaves it nine tenths full and never shrinks, and it offers the
    socket the whole free part. So a read after a busy moment takes whatever
    the kernel queued (8 MB reads behind one bulk download here), and the
    buffer stays at 16 MB for the connection's lifetime, whatever
    `max_frame_size` says. Read at most WS_READ_SIZE at a time, the buffer
    stays under 2.25 x (max_frame_size + WS_READ_SIZE): a partial frame plus
    one read, doubled. aiofastnet reads again at once while a read fills
    what it was offered, so a burst takes more reads, not more iterations.
    A C extension type when compiled (mux.pxd), which aiofastnet's transports
    call in C: the cost per read is one C call on top of picows' own.
    """

    def __init__(self, ws: Any) -> None:  # picows' WSProtocol, which has no stubs
        self.ws = ws

    def is_buffered_protocol(self) -> bool:
        return True

    def get_buffer(self, sizehint: int) -> memoryview:
        view: memoryview = self.ws.get_buffer(sizehint)
        return view if len(view) <= _WS_READ_SIZE else view[:_WS_READ_SIZE]

    def buffer_updated(self, nbytes: int) -> None:
        self.ws.buffer_updated(nbytes)

    def eof_received(self) -> bool | None:
        return self.ws.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.ws.connection_lost(exc)

    def pause_writing(self) -> None:
        self.ws.pause_writing()

    def resume_writing(self) -> None:
        self.ws.resume_writing()


def bound_reads(transport: WSTransport) -> None:
    """Put `BoundedReads` in front of this WebSocket's picows protocol (an
    aiofastnet transport, as picows makes by default; any other is left)."""
    raw = transport.underlying_transport
    if isinstance(raw, FastTransport):
        ws = raw.get_protocol()
        if not isinstance(ws, BoundedReads):
            raw.set_protocol(BoundedReads(ws))
