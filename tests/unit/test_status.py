"""The failure table (fastrelay/protocol/status.py): one row per failure, used everywhere."""

from __future__ import annotations

import errno

import pytest

from fastrelay import metrics
from fastrelay.protocol.errors import HttpError
from fastrelay.protocol.messages import ConnectResponse, status_description
from fastrelay.protocol.status import (
    BY_REASON,
    PHRASES,
    RESULTS,
    Failure,
    dial_failure,
    dial_timeout,
    failure_of,
)


def test_every_failure_has_a_phrase_a_unique_reason_and_a_counted_result() -> None:
    assert len(BY_REASON) == len(Failure)
    for failure in Failure:
        assert failure.status in PHRASES and failure.status >= 400
        assert failure.result in RESULTS
        assert failure.reason.isidentifier()
    assert RESULTS[0] == "ok" and len(set(RESULTS)) == len(RESULTS)


def test_the_relays_stream_results_are_rows_of_the_table() -> None:
    assert set(metrics.STREAM_RESULTS) <= set(RESULTS)


@pytest.mark.parametrize(
    ("exc", "failure"),
    [
        (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), Failure.REFUSED),
        (OSError(errno.EHOSTUNREACH, "No route to host"), Failure.UNREACHABLE),
        (OSError(errno.ENETUNREACH, "Network is unreachable"), Failure.UNREACHABLE),
        (OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address"), Failure.DIAL_ERROR),
    ],
)
def test_a_failed_connect_maps_to_one_failure_for_both_routes(
    exc: OSError, failure: Failure
) -> None:
    got, detail = dial_failure(exc, "h.test", 443)
    assert got is failure and "h.test:443" in detail


def test_a_dial_timeout_is_a_504_on_every_route() -> None:
    failure, detail = dial_timeout("h.test", 80, 2.5)
    assert (failure.status, failure.reason) == (504, "timeout") and "2.5 s" in detail


@pytest.mark.parametrize(
    ("status", "reason", "failure"),
    [
        (503, "draining", Failure.DRAINING),
        (504, "open_timeout", Failure.OPEN_TIMEOUT),
        (502, "refused", Failure.REFUSED),
        (403, None, Failure.DENIED),  # an agent that names no reason
        (504, None, Failure.DIAL_TIMEOUT),
        (503, "something new", Failure.NO_AGENT),
        (500, None, Failure.DIAL_ERROR),
    ],
)
def test_a_connect_response_is_read_through_the_table(
    status: int, reason: str | None, failure: Failure
) -> None:
    assert failure_of(status, reason) is failure


def test_http_errors_and_connect_responses_use_the_same_phrases() -> None:
    assert HttpError(431, "x").failure is Failure.HEAD_TOO_LARGE
    assert HttpError(502, "x").failure is Failure.BAD_RESPONSE
    assert status_description(200) == "Connection Established"
    assert status_description(504) == PHRASES[504] == "Gateway Timeout"
    response = ConnectResponse("s", 503, "busy", reason="agent_busy")
    assert b'"statusDescription":"Service Unavailable"' in response.encode(1)


def test_operations_md_lists_every_row_of_the_table() -> None:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "OPERATIONS.md").read_text()
    for failure in Failure:
        row = f"| `{failure.reason}` | {failure.status} | `{failure.result}` |"
        assert row in text, f"OPERATIONS.md lacks the row for {failure.name}: {row}"


def test_fallback_failures_are_only_no_relay_or_agent() -> None:
    """fallback=direct dials directly on exactly these (docs/OPERATIONS.md, "Fail closed or
    fail open"): never on an answer from an agent or on a limit."""
    from fastrelay.protocol.status import NO_RELAY_OR_AGENT

    assert {f.reason for f in NO_RELAY_OR_AGENT} == {
        "not_connected",
        "no_agent",
        "no_agent_in_pool",
        "draining",
        "relay_lost",
    }
    for failure in (Failure.DENIED, Failure.REFUSED, Failure.DIAL_TIMEOUT, Failure.AGENT_BUSY):
        assert failure not in NO_RELAY_OR_AGENT
