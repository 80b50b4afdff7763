"""How much one socket read may take (fastrelay/io/tunnel.py `read_buffer`): never
more than the stream's credit, so bytes it cannot send yet wait in the kernel's
receive queue instead of in a backlog at the endpoint."""

from __future__ import annotations

import pytest

from fastrelay.io.tunnel import PAUSED_READ_SIZE, READ_SIZE, read_buffer
from fastrelay.protocol.pair import Pair
from fastrelay.protocol.session import Stream


def stream(credit: int, link_paused: bool = False) -> Stream:
    """A real session Stream (the compiled read_buffer takes no other) with
    `credit` to send, on a WebSocket over its high-water mark or not."""
    client = Pair().client()
    stream = client.streams[client.open()].stream
    stream.send_window.available = credit
    stream.session.paused = link_paused
    return stream


@pytest.mark.parametrize(
    ("credit", "size"),
    [
        (READ_SIZE * 4, READ_SIZE),  # plenty: one full read, sent from the buffer itself
        (READ_SIZE, READ_SIZE),
        (READ_SIZE - 1, READ_SIZE - 1),  # exactly the credit
        (50_000, 50_000),
        (PAUSED_READ_SIZE + 1, PAUSED_READ_SIZE + 1),
        (100, PAUSED_READ_SIZE),  # a sliver of credit still reads a useful amount
        (0, PAUSED_READ_SIZE),  # a read in flight after the credit ran out
    ],
)
def test_a_read_takes_at_most_the_credit(credit: int, size: int) -> None:
    view = read_buffer(stream(credit))
    assert len(view) == size and not view.readonly


def test_a_stream_on_a_full_websocket_gets_one_small_read() -> None:
    assert len(read_buffer(stream(READ_SIZE * 4, link_paused=True))) == PAUSED_READ_SIZE


def test_every_view_starts_where_a_full_read_does() -> None:
    """The header goes in front of the read (send_in_place), so every view is
    the same buffer from the same offset, only shorter."""
    full = read_buffer(stream(READ_SIZE))
    short = read_buffer(stream(50_000))
    full[:4] = b"abcd"
    assert bytes(short[:4]) == b"abcd"
