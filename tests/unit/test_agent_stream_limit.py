"""The agent keeps to the streams the relay's HELLO allows per connection."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from agent import config as agent_config
from agent.app import Agent
from fastrelay.protocol.flow import CreditPool
from fastrelay.protocol.frames import FrameType, iter_frames
from fastrelay.protocol.messages import ConnectResponse, OpenStream


def test_an_open_past_the_connections_stream_limit_gets_503_stream_limit() -> None:
    async def scenario() -> list[bytes]:
        agent = Agent(agent_config.load([], {"FASTRELAY_TOKEN": "t"}))
        sent: list[bytes] = []
        credit = CreditPool(budget=1 << 20, max_streams=2, want=1 << 16)
        credit.open(), credit.open()  # the connection carries its two streams already
        carrier = SimpleNamespace(streams={}, credit=credit, send=sent.append)
        request = OpenStream(FrameType.CONNECT, "s-3", "127.0.0.1", 9, window=1 << 16)
        agent.on_open(carrier, 65539, request)  # type: ignore[arg-type]
        assert not carrier.streams  # nothing dialled, nothing held
        return sent

    sent = asyncio.run(scenario())
    assert len(sent) == 1
    [(frame_type, _flags, sid, start, length)] = list(iter_frames(sent[0]))
    assert (frame_type, sid) == (FrameType.CONNECT_RESPONSE, 65539)
    response = ConnectResponse.decode(memoryview(sent[0])[start : start + length])
    assert (response.status_code, response.reason) == (503, "stream_limit")
    assert "2 streams" in (response.error or "")
