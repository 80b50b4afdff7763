"""Fixtures for the unit tests."""

from __future__ import annotations

import pytest
from support.loops import LOOPS, Runner, runner


@pytest.fixture(params=LOOPS)
def run(request: pytest.FixtureRequest) -> Runner:
    """`run(main)`: the test's coroutine on asyncio's loop, then on uvloop's."""
    return runner(request.param)
