"""RateLimitedLog: a burst, then the rest counted and summarised (issue 11, item 3)."""

from __future__ import annotations

import logging

import pytest

from fastrelay import logs
from fastrelay.logs import RateLimitedLog


def test_burst_then_summary(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    now = [1000.0]
    monkeypatch.setattr(logs.time, "monotonic", lambda: now[0])
    caplog.set_level(logging.INFO, logger="t")
    limited = RateLimitedLog(logging.getLogger("t"), period=10.0, burst=3, what="conn events")
    for i in range(10):
        limited.info(f"event {i}", role="agent")
    limited.flush()  # the period is not over: nothing yet
    assert [r.getMessage() for r in caplog.records] == ["event 0", "event 1", "event 2"]
    assert all(r.levelno == logging.INFO for r in caplog.records)
    now[0] += 10.0
    limited.flush()
    assert caplog.records[-1].getMessage() == "7 more conn events suppressed in the last 10s"
    assert caplog.records[-1].levelno == logging.INFO
    limited.flush()  # said once
    assert len(caplog.records) == 4
    limited.info("after", role="agent")
    assert caplog.records[-1].getMessage() == "after"
    assert "suppressed" not in caplog.records[-1].fields


def test_suppressed_count_rides_on_the_next_line(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    now = [0.0]
    monkeypatch.setattr(logs.time, "monotonic", lambda: now[0] + 50.0)
    caplog.set_level(logging.INFO, logger="u")
    limited = RateLimitedLog(logging.getLogger("u"), period=10.0, burst=1)
    limited.warning("a")
    limited.warning("b")
    now[0] += 10.0
    limited.warning("c")
    assert [r.getMessage() for r in caplog.records] == ["a", "c"]
    assert caplog.records[-1].fields["suppressed"] == 1
