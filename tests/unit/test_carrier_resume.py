"""A carrier resumes the streams held for its relay connection in steps
(Carrier.link_resumed): as many as the room up to the high-water mark takes,
then the rest on a timer while the link has room, and none once it is full."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from fastrelay.io.carrier import WS_BUFFER_HIGH, Carrier, CarrierStats, RelayLink


class FakeSession:
    """Records the rooms it is given; each call resumes one held stream."""

    def __init__(self, held: int) -> None:
        self.waiting = list(range(held))
        self.paused = True
        self.lost = False
        self.rooms: list[int] = []

    def set_paused(self, paused: bool, room: int = -1) -> None:
        self.paused = paused
        if not paused:
            self.resume_waiting(room)

    def resume_waiting(self, room: int = -1) -> None:
        self.rooms.append(room)
        self.waiting.pop(0)


def make_carrier(held: int, buffered: int) -> tuple[Carrier, FakeSession]:
    link = RelayLink("ws://127.0.0.1:1/v1/agent", "agent", "t", None, 20, 1 << 20, 1, 1 << 20)
    carrier = Carrier(link, handler=None, owner=None, stats=CarrierStats())  # type: ignore[arg-type]
    session = FakeSession(held)
    carrier.session = session  # type: ignore[assignment]
    transport = SimpleNamespace(get_write_buffer_size=lambda: buffered)
    carrier.transport = SimpleNamespace(underlying_transport=transport)  # type: ignore[assignment]
    return carrier, session


def test_held_streams_resume_within_the_room_then_on_a_timer_while_there_is_room() -> None:
    async def run() -> None:
        carrier, session = make_carrier(held=3, buffered=WS_BUFFER_HIGH // 4)
        carrier.link_resumed()
        assert session.rooms == [WS_BUFFER_HIGH * 3 // 4]  # up to the high-water mark
        assert carrier.resumer is not None  # two still held: the next step is scheduled
        carrier.resumer.cancel()
        carrier._resume_more()
        assert len(session.rooms) == 2 and carrier.resumer is not None
        carrier.resumer.cancel()
        carrier._resume_more()
        assert not session.waiting and carrier.resumer is None  # nobody left: no timer

    asyncio.run(run())


def test_a_full_link_stops_the_steps_and_its_next_drain_restarts_them() -> None:
    async def run() -> None:
        carrier, session = make_carrier(held=3, buffered=WS_BUFFER_HIGH + 1)
        carrier.link_resumed()
        assert session.rooms == [0]  # over the mark already: one stream, the oldest
        assert carrier.resumer is not None
        carrier.resumer.cancel()
        session.paused = True  # the link filled up again
        carrier._resume_more()
        assert session.rooms == [0] and carrier.resumer is None  # resume_writing takes over
        carrier.link_resumed()
        assert session.rooms == [0, 0] and carrier.resumer is not None
        carrier.resumer.cancel()

    asyncio.run(run())
