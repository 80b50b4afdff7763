"""The program skeleton (`serve_service`) and the task helpers it relies on."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Coroutine
from typing import Any

import pytest

from fastrelay.io.admin import Readiness
from fastrelay.lifecycle import Service, all_of, cancel_all, serve_service


class Recorder(Service):
    program = "demo-program"
    name = "recorder"
    log = logging.getLogger("test.lifecycle")

    def __init__(self) -> None:
        self.readiness = Readiness()
        self.events: list[str] = []

    async def start(self) -> dict[str, Any]:
        self.events.append(f"start {self.readiness.phase}")
        return {"admin": "127.0.0.1:1"}

    def background(self, stop: asyncio.Event) -> list[Coroutine[Any, Any, None]]:
        async def worker() -> None:
            self.events.append(f"worker {self.readiness.phase}")
            await stop.wait()
            await asyncio.sleep(0.01)
            self.events.append("worker done")

        return [worker()]

    async def drain(self) -> None:
        self.events.append(f"drain {self.readiness.phase}")

    async def close(self) -> None:
        self.events.append("close")


def test_serve_service_runs_the_phases_in_order(capsys: pytest.CaptureFixture[str]) -> None:
    service = Recorder()

    async def main() -> int:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.05, stop.set)
        return await serve_service(service, stop)

    assert asyncio.run(main()) == 0
    # close comes only once the background work has ended: nothing outlives the program
    assert service.events == [
        "start starting",
        "worker ready",
        "drain draining",
        "worker done",
        "close",
    ]
    ready = json.loads(capsys.readouterr().out)
    assert ready["event"] == "ready"
    assert ready["program"] == "demo-program"
    assert ready["admin"] == "127.0.0.1:1"


def test_all_of_returns_at_the_timeout_and_reaps_what_is_left() -> None:
    async def main() -> None:
        never = asyncio.get_running_loop().create_future()
        quick = asyncio.sleep(0)
        started = asyncio.get_running_loop().time()
        await all_of([never, quick], 0.05)
        assert asyncio.get_running_loop().time() - started < 1.0
        assert never.cancelled()

    asyncio.run(main())


def test_cancel_all_waits_for_each_task_to_finish() -> None:
    finished: list[str] = []

    async def slow_to_stop() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            await asyncio.sleep(0.01)
            finished.append("cleaned up")

    async def main() -> None:
        task = asyncio.create_task(slow_to_stop())
        await asyncio.sleep(0)
        await cancel_all([task])
        assert task.done()

    asyncio.run(main())
    assert finished == ["cleaned up"]


def test_tune_gc_freezes_start_up_objects_and_raises_gen0(monkeypatch: pytest.MonkeyPatch) -> None:
    import gc

    from fastrelay import lifecycle

    before = gc.get_threshold()
    try:
        lifecycle.tune_gc()
        assert gc.get_freeze_count() > 0  # the imports and start-up objects are out of reach
        assert gc.get_threshold() == (lifecycle.GC_GEN0_THRESHOLD, before[1], before[2])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_run_tunes_the_collector_before_the_loop_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    from fastrelay import lifecycle

    calls: list[str] = []
    monkeypatch.setattr(lifecycle, "tune_gc", lambda: calls.append("tune_gc"))
    monkeypatch.setattr(lifecycle, "raise_fd_limit", lambda: 1024)

    async def main(stop: asyncio.Event) -> int:
        calls.append("main")
        return 0

    assert lifecycle.run(main) == 0
    assert calls == ["tune_gc", "main"]
