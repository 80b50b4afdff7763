"""bench/icount.py's open and relay scenarios drive the real codec and the real switch:
each one, run a few times in-process (no callgrind), does its work."""

from __future__ import annotations

import pytest

from bench import icount

OPEN_SCENARIOS = [
    name for name in icount.SCENARIOS if name.startswith(("open_", "answer_", "switch_"))
]


def test_the_open_scenarios_are_listed() -> None:
    assert OPEN_SCENARIOS == [
        "open_head",
        "open_encode",
        "open_decode",
        "answer_encode",
        "answer_decode",
        "switch_open",
    ]


@pytest.mark.parametrize("scenario", OPEN_SCENARIOS)
def test_an_open_scenario_runs(scenario: str) -> None:
    icount.run_ops(scenario, 5)  # its own set-up asserts that the operation did its work


@pytest.mark.parametrize("scenario", ["relay_data", "relay_data_down", "relay_window_update"])
def test_a_relay_scenario_forwards_its_frame(scenario: str) -> None:
    icount.run_ops(scenario, 5)  # its set-up asserts that the first frame went through whole
