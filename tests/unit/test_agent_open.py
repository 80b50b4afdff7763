"""The agent's open: a dial that fails or outlasts --dial-timeout answers the stream's open
with the failure's status and message (the timeout is asyncio.timeout around the dial)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agent import app
from agent.config import load
from agent.dialer import DialFailure
from fastrelay.protocol.messages import OpenStream
from fastrelay.protocol.status import Failure, dial_timeout


class FakeStream:
    ended = False
    owner: object = None

    def __init__(self) -> None:
        self.refused: list[tuple[int, str, str | None]] = []

    def refuse(self, status: int, message: str, reason: str | None = None) -> None:
        self.refused.append((status, message, reason))


def _open(monkeypatch: pytest.MonkeyPatch, dial: Any) -> tuple[FakeStream, app.Agent]:
    config = load(
        ["--relay", "ws://127.0.0.1:1", "--dial-timeout", "0.05"], {"FASTRELAY_TOKEN": "t"}
    )
    agent = app.Agent(config)
    monkeypatch.setattr(app, "dial", dial)
    stream = FakeStream()
    request = OpenStream.__new__(OpenStream)
    object.__setattr__(request, "host", "192.0.2.7")
    object.__setattr__(request, "port", 443)
    asyncio.run(agent._open(stream, request))  # type: ignore[arg-type]
    return stream, agent


def test_a_dial_past_the_timeout_is_answered_with_the_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def hangs(*args: Any) -> None:
        await asyncio.sleep(60)

    stream, agent = _open(monkeypatch, hangs)
    failure, message = dial_timeout("192.0.2.7", 443, 0.05)
    assert stream.refused == [(failure.status, message, failure.reason)]
    assert agent.dials[Failure.DIAL_TIMEOUT.reason] == 1


def test_a_failed_dial_is_answered_with_its_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    async def refused(*args: Any) -> None:
        raise DialFailure(Failure.REFUSED, "connection refused by 192.0.2.7:443")

    stream, agent = _open(monkeypatch, refused)
    status = Failure.REFUSED.status
    assert stream.refused == [(status, "connection refused by 192.0.2.7:443", "refused")]
    assert agent.dials["refused"] == 1


def test_within_returns_the_result() -> None:
    async def quick() -> int:
        await asyncio.sleep(0)
        return 7

    assert asyncio.run(app.within(60, quick())) == 7


def test_within_times_out_and_the_task_goes_on() -> None:
    async def main() -> str:
        with pytest.raises(TimeoutError):
            await app.within(0.01, asyncio.sleep(60))
        await asyncio.sleep(0)  # not cancelled: the timeout's cancel was taken back
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0
        return "went on"

    assert asyncio.run(main()) == "went on"


def test_a_cancel_from_outside_is_not_a_timeout() -> None:
    async def main() -> None:
        task = asyncio.get_running_loop().create_task(app.within(60, asyncio.sleep(60)))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
