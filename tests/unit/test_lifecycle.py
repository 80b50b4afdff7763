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


def test_run_tunes_the_collector_and_malloc_before_the_loop_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fastrelay import lifecycle

    calls: list[str] = []
    monkeypatch.setattr(lifecycle, "tune_gc", lambda: calls.append("tune_gc"))
    monkeypatch.setattr(lifecycle, "tune_malloc", lambda: calls.append("tune_malloc") or "x")
    monkeypatch.setattr(lifecycle, "raise_fd_limit", lambda: 1024)

    async def main(stop: asyncio.Event) -> int:
        calls.append("main")
        return 0

    assert lifecycle.run(main) == 0
    assert calls == ["tune_gc", "tune_malloc", "main"]


# A fresh interpreter allocates 4 MiB with malloc, frees it, and reports glibc's mallinfo2:
# bytes in mmapped blocks while the block lived, and the heap's size before, while and after.
_MALLOC_PROBE = """
import ctypes, json, sys
from fastrelay import lifecycle

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)
result = lifecycle.tune_malloc() if sys.argv[1] == "tune" else "untouched"
before = libc.mallinfo2()
block = libc.malloc(4 << 20)
ctypes.memset(block, 1, 4 << 20)
during = libc.mallinfo2()
libc.free(block)
after = libc.mallinfo2()
print(json.dumps({"result": result, "mapped": during.hblkhd - before.hblkhd,
                  "heap_grew": during.arena - before.arena,
                  "heap_kept": after.arena - before.arena}))
"""


def _malloc_probe(mode: str, **env: str) -> dict[str, Any]:
    import os
    import subprocess
    import sys

    if not os.confstr("CS_GNU_LIBC_VERSION"):
        pytest.skip("glibc only")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUN"))}
    out = subprocess.run(
        [sys.executable, "-c", _MALLOC_PROBE, mode],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return json.loads(out)  # type: ignore[no-any-return]


def test_tune_malloc_keeps_large_blocks_in_a_heap_it_does_not_hand_back() -> None:
    untouched = _malloc_probe("plain")
    assert untouched["mapped"] >= 4 << 20  # glibc's default: a 4 MiB block is mmapped
    tuned = _malloc_probe("tune")
    assert tuned["result"] == "tuned"
    assert tuned["mapped"] == 0 and tuned["heap_grew"] >= 4 << 20  # from the heap instead
    assert tuned["heap_kept"] >= 4 << 20  # and freeing it does not shrink the heap


def test_tune_malloc_leaves_an_operators_own_setting_alone() -> None:
    from fastrelay import lifecycle

    for env in (
        {"MALLOC_TRIM_THRESHOLD_": "131072"},
        {"MALLOC_MMAP_THRESHOLD_": "131072"},
        {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=131072"},
    ):
        assert lifecycle.tune_malloc(env) == "environment"
        probe = _malloc_probe("tune", **env)
        assert probe["result"] == "environment"
        assert probe["mapped"] >= 4 << 20  # the operator's threshold still maps the block
    assert lifecycle.tune_malloc({"GLIBC_TUNABLES": "glibc.pthread.rseq=0"}) != "environment"
