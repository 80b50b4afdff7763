"""Running a test's coroutine on each event loop the programs support."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

LOOPS = ("asyncio", "uvloop")
Runner = Callable[[Callable[[], Coroutine[Any, Any, Any]]], Any]


def runner(loop: str) -> Runner:
    """Runs `main()` to completion on a fresh loop of that kind; returns its result."""
    factory = None if loop == "asyncio" else pytest.importorskip("uvloop").new_event_loop

    def run(main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
        with asyncio.Runner(loop_factory=factory) as each:
            return each.run(main())

    return run
