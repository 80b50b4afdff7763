"""RateLimitedLog: a burst, then the rest counted and summarised, on a test clock."""

from __future__ import annotations

import logging

import pytest

from fastrelay.logs import RateLimitedLog


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_burst_then_summary(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock(1000.0)
    caplog.set_level(logging.INFO, logger="t")
    limited = RateLimitedLog(
        logging.getLogger("t"), period=10.0, burst=3, what="conn events", clock=clock
    )
    for i in range(10):
        limited.info(f"event {i}", role="agent")
    limited.flush()  # the period is not over: nothing yet
    assert [r.getMessage() for r in caplog.records] == ["event 0", "event 1", "event 2"]
    assert all(r.levelno == logging.INFO for r in caplog.records)
    clock.now += 10.0
    limited.flush()
    assert caplog.records[-1].getMessage() == "7 more conn events suppressed in the last 10s"
    assert caplog.records[-1].levelno == logging.INFO
    limited.flush()  # said once
    assert len(caplog.records) == 4
    limited.info("after", role="agent")
    assert caplog.records[-1].getMessage() == "after"
    assert "suppressed" not in caplog.records[-1].fields


def test_suppressed_count_rides_on_the_next_line(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock(50.0)
    caplog.set_level(logging.INFO, logger="u")
    limited = RateLimitedLog(logging.getLogger("u"), period=10.0, burst=1, clock=clock)
    limited.warning("a")
    limited.warning("b")
    clock.now += 10.0
    limited.warning("c")
    assert [r.getMessage() for r in caplog.records] == ["a", "c"]
    assert caplog.records[-1].fields["suppressed"] == 1


def test_every_event_is_logged_or_counted(caplog: pytest.LogCaptureFixture) -> None:
    """The relay's auth log: 5 lines per 10 s; the next window's first line carries the rest."""
    clock = Clock(100.0)
    caplog.set_level(logging.WARNING, logger="auth")
    limited = RateLimitedLog(logging.getLogger("auth"), clock=clock)
    for _ in range(8):
        limited.warning("rejected WebSocket upgrade")
        clock.now += 0.1
    assert len(caplog.records) == 5
    clock.now = 109.9  # still the first window
    limited.flush()
    assert len(caplog.records) == 5
    clock.now = 110.0
    limited.warning("rejected WebSocket upgrade")
    assert len(caplog.records) == 6
    assert caplog.records[-1].fields == {"suppressed": 3}
    suppressed = sum(r.fields.get("suppressed", 0) for r in caplog.records)
    assert len(caplog.records) + suppressed == 9
