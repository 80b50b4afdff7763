"""MuxWriter + FlushScheduler on a real event loop, with a recording transport."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from picows import WSMsgType, WSTransport
from support.loops import Runner
from support.nosocket import NoSocket

from fastrelay.io.mux import FLUSH_AT, LARGE_FRAME, FlushScheduler, MuxWriter
from fastrelay.protocol.frames import FrameType, encode_frame


class _Underlying:
    """What picows' WSTransport asks of the socket transport under it."""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return NoSocket() if name == "socket" else default

    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, data: Any) -> None:
        raise AssertionError("FakeTransport.send writes nothing below it")


class FakeTransport(WSTransport):
    """Records each send. A subclass of picows' own transport because the compiled
    writer (fastrelay/io/mux.pxd) holds a WSTransport and calls its `send` in C."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        super().__init__(False, _Underlying(), logging.getLogger("test.mux"), loop)
        self.sent: list[bytes] = []  # copies taken at call time
        self.objects: list[Any] = []  # what send() was handed, to check later

    def send(self, msg_type: WSMsgType, data: Any, *flags: bool) -> None:  # type: ignore[override]
        assert msg_type is WSMsgType.BINARY
        self.sent.append(bytes(data))
        self.objects.append(data)


def frame(sid: int, size: int, fill: int = 0x61) -> bytes:
    """A TUNNEL_DATA frame of `size` bytes in all (header included)."""
    return encode_frame(FrameType.TUNNEL_DATA, sid, bytes([fill]) * (size - 10))


async def next_iteration() -> None:
    """Let the loop run the callbacks scheduled so far (the flush among them)."""
    for _ in range(3):
        await asyncio.sleep(0)


PEER_LIMIT = 1024 * 1024  # the programs' default --max-frame-size


def make(max_message: int = PEER_LIMIT) -> tuple[FakeTransport, MuxWriter, FlushScheduler]:
    transport = FakeTransport()
    scheduler = FlushScheduler(asyncio.get_running_loop())
    writer = MuxWriter(transport, scheduler, max_message)  # type: ignore[arg-type]
    return transport, writer, scheduler


def test_small_frames_of_one_iteration_leave_in_one_send(run: Runner) -> None:
    async def main() -> None:
        transport, writer, _ = make()
        frames = [frame(sid, 100 + sid, fill=sid) for sid in range(1, 21)]
        for f in frames:
            writer.write(f)
        assert transport.sent == []  # nothing before the loop iteration ends
        await next_iteration()
        assert transport.sent == [b"".join(frames)]
        assert writer.messages == 1
        writer.write(frames[0])  # a later iteration is a new batch
        writer.write(frames[1])
        await next_iteration()
        assert transport.sent[1:] == [frames[0] + frames[1]]

    run(main)


def test_large_frame_goes_alone_after_pending_small_frames(run: Runner) -> None:
    async def main() -> None:
        transport, writer, _ = make()
        small1, small2 = frame(1, 50, 1), frame(2, LARGE_FRAME - 1, 2)
        large = frame(3, LARGE_FRAME, 3)
        writer.write(small1)
        writer.write(small2)  # one byte short of LARGE_FRAME: still coalesced
        assert transport.sent == []
        writer.write(large)
        assert transport.sent == [small1 + small2, large]  # order preserved, at once
        assert transport.objects[1] is large  # sent straight from the caller's buffer
        await next_iteration()
        assert len(transport.sent) == 2  # the scheduled flush finds nothing left
        writer.write(large)
        assert transport.sent[2:] == [large]
        assert writer.messages == 3

    run(main)


def test_batch_over_flush_at_is_flushed_immediately(run: Runner) -> None:
    """A batch goes out, before the loop gets a turn, once it holds FLUSH_AT, and a
    frame that would take it past FLUSH_AT starts the next one instead."""

    async def main() -> None:
        transport, writer, _ = make()
        f = frame(7, 4096)  # FLUSH_AT holds 64 of them exactly
        for _ in range(FLUSH_AT // 4096 - 1):
            writer.write(f)
        assert transport.sent == []
        writer.write(f)  # reaches FLUSH_AT: out at once
        assert transport.sent == [f * 64]
        g = frame(8, 5000)
        fit = FLUSH_AT // 5000
        for _ in range(fit):
            writer.write(g)
        assert transport.sent == [f * 64]
        writer.write(g)  # would pass FLUSH_AT: the batch leaves without it
        assert transport.sent == [f * 64, g * fit]
        await next_iteration()
        assert transport.sent == [f * 64, g * fit, g]

    run(main)


def test_a_batch_never_outgrows_what_the_peer_accepts(run: Runner) -> None:
    """A peer with a 64 KiB --max-frame-size closes the connection (1009) on a larger
    message: batches stay within it, and within a smaller limit announced later."""

    async def main() -> None:
        transport, writer, _ = make(64 * 1024)
        frames = [frame(sid, 4000, sid) for sid in range(1, 101)]
        for f in frames:
            writer.write(f)
        await next_iteration()
        assert max(map(len, transport.sent)) <= 64 * 1024
        assert len(transport.sent) == -(-len(frames) // (64 * 1024 // 4000))
        assert b"".join(transport.sent) == b"".join(frames)
        writer.peer_accepts(10_000)  # HELLO from a relay that takes less
        for f in frames[:10]:
            writer.write(f)
        await next_iteration()
        assert [len(m) for m in transport.sent[-5:]] == [8000] * 5
        writer.peer_accepts(64 * 1024 * 1024)  # more than FLUSH_AT: FLUSH_AT still holds
        assert writer.batch_limit == FLUSH_AT

    run(main)


@settings(max_examples=60, deadline=None)
@given(
    limit=st.integers(min_value=16, max_value=FLUSH_AT + 4096),
    sizes=st.lists(st.integers(min_value=10, max_value=2 * LARGE_FRAME), max_size=80),
    flushes=st.sets(st.integers(min_value=0, max_value=80)),
)
def test_every_message_is_a_lone_frame_or_a_batch_within_the_limit(
    limit: int, sizes: list[int], flushes: set[int]
) -> None:
    """Whatever the frames and the loop turns between them: the messages carry the
    frames in order, each whole, and a message of more than one frame is at most
    `limit` (and FLUSH_AT) bytes."""
    sizes = [min(size, limit) for size in sizes]  # a frame never exceeds the peer's limit
    frames = [frame(i + 1, max(size, 10), i % 250) for i, size in enumerate(sizes)]

    async def main() -> list[bytes]:
        transport, writer, _ = make(limit)
        for i, f in enumerate(frames):
            if i in flushes:
                await next_iteration()
            writer.write(f)
        await next_iteration()
        return transport.sent

    sent = asyncio.run(main())
    assert b"".join(sent) == b"".join(frames)
    rest = list(frames)
    for message in sent:  # whole frames, in order
        count = size = 0
        while size < len(message):
            size += len(rest.pop(0))
            count += 1
        assert size == len(message), "a message split a frame"
        if count > 1:
            assert len(message) <= min(limit, FLUSH_AT), f"{count} frames in {len(message)} B"


def test_nothing_is_sent_after_close(run: Runner) -> None:
    async def main() -> None:
        transport, writer, _ = make()
        writer.write(frame(1, 100))
        writer.close()
        await next_iteration()
        writer.write(frame(1, 100))
        writer.write(frame(1, LARGE_FRAME * 2))
        writer.flush()
        await next_iteration()
        assert transport.sent == []
        assert writer.messages == 0

    run(main)


def test_buffer_handed_to_send_is_never_mutated(run: Runner) -> None:
    async def main() -> None:
        transport, writer, _ = make()
        a, b, c = frame(1, 300, 1), frame(2, 400, 2), frame(3, 500, 3)
        writer.write(a)
        await next_iteration()
        writer.write(b)
        writer.write(c)
        await next_iteration()
        writer.write(a)
        writer.write(frame(4, LARGE_FRAME, 4))  # flushes the pending `a` first
        f = frame(5, LARGE_FRAME - 1)
        for _ in range(FLUSH_AT // len(f) + 1):
            writer.write(f)
        writer.write(c)
        await next_iteration()
        assert len(transport.objects) == 6
        assert len({id(obj) for obj in transport.objects}) == 6  # a new buffer each time
        for copy, obj in zip(transport.sent, transport.objects, strict=True):
            assert bytes(obj) == copy, "a buffer changed after it was handed to send()"

    run(main)


def test_each_dirty_writer_flushes_once_per_iteration(run: Runner) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        scheduler = FlushScheduler(loop)
        t1, t2 = FakeTransport(), FakeTransport()
        w1 = MuxWriter(t1, scheduler, PEER_LIMIT)  # type: ignore[arg-type]
        w2 = MuxWriter(t2, scheduler, PEER_LIMIT)  # type: ignore[arg-type]
        for i in range(10):
            w1.write(frame(1, 20 + i))
            w2.write(frame(2, 30 + i))
        assert len(scheduler.dirty) == 2  # marked once each, not once per frame
        await next_iteration()
        assert (len(t1.sent), len(t2.sent)) == (1, 1)
        assert t1.sent[0] == b"".join(frame(1, 20 + i) for i in range(10))
        assert not scheduler.dirty and not scheduler.scheduled

    run(main)


# --- flushing at the end of a WebSocket read (picows' last_in_buffer) ---


def test_frames_of_one_read_leave_in_one_send_right_after_the_last(run: Runner) -> None:
    async def main() -> None:
        transport, writer, scheduler = make()
        for sid, last in ((1, False), (2, False), (3, True)):  # one read, three frames
            scheduler.in_frame = True
            writer.write(frame(sid, 100))
            if not last:
                assert transport.sent == []  # nothing leaves before the read's last frame
            scheduler.frame_done(last)
        assert transport.sent == [frame(1, 100) + frame(2, 100) + frame(3, 100)]
        assert not scheduler.in_frame
        await next_iteration()  # the safety flush the first frames scheduled finds nothing
        assert len(transport.sent) == 1

    run(main)


def test_a_read_whose_last_frame_never_comes_is_still_flushed(run: Runner) -> None:
    """picows drops the rest of a read at a parse error: the frames already
    handled still leave, at the end of the loop iteration."""

    async def main() -> None:
        transport, writer, scheduler = make()
        scheduler.in_frame = True
        writer.write(frame(1, 100))
        scheduler.frame_done(False)
        assert transport.sent == []
        await next_iteration()
        assert transport.sent == [frame(1, 100)]

    run(main)


def test_writes_outside_a_frame_still_wait_for_the_end_of_the_iteration(run: Runner) -> None:
    async def main() -> None:
        transport, writer, scheduler = make()
        writer.write(frame(1, 100))  # a TCP read's frame: coalesced with the iteration's others
        scheduler.in_frame = True
        scheduler.frame_done(True)  # a WebSocket read in the same iteration flushes it too
        assert transport.sent == [frame(1, 100)]
        writer.write(frame(2, 100))
        assert transport.sent == [frame(1, 100)]
        await next_iteration()
        assert transport.sent == [frame(1, 100), frame(2, 100)]

    run(main)
