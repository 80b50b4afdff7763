"""bench/report.py's targets table for scenario 4: the run with the target's send buffers
bounded is judged, the autotuned one beside it is reported and judged against nothing."""

from __future__ import annotations

from bench import report


def median(values: dict[str, float]) -> dict:
    return {"median": values}


DATA = {
    "results": {
        "bulk": {"fastrelay": median({"down_MBps": 600.0, "up_MBps": 600.0})},
        "many_active": {
            "fastrelay": median(
                {
                    "aggregate_MBps_10": 590.0,
                    "aggregate_MBps_1000": 330.0,
                    "jain_1000": 0.93,
                    "tcp_mem_peak_pages_1000": 227_000.0,
                    "tcp_mem_pressure_mark_pages_1000": 383_866.0,
                    "autotuned_aggregate_MBps_1000": 180.0,
                    "autotuned_jain_1000": 0.8,
                    "autotuned_tcp_mem_peak_pages_1000": 470_000.0,
                    "autotuned_tcp_mem_pressure_mark_pages_1000": 383_866.0,
                }
            )
        },
    }
}


def test_scenario_4_judges_the_bounded_run_and_reports_the_autotuned_one() -> None:
    rows = {(r[0], r[1]): r for r in report.rows(DATA) if r[0].startswith("4.")}
    judged = rows[("4. 1000 active tunnels", "aggregate MB/s, ratio to scenario 1 down")]
    assert judged[2] == 330.0 and judged[4] == 330.0 / 600.0 and judged[6] is False
    assert rows[("4. 1000 active tunnels", "Jain's fairness index")][6] is True
    name = "4. 1000 active tunnels, target's send buffers autotuned"
    autotuned = rows[(name, "aggregate MB/s, ratio to scenario 1 down")]
    assert autotuned[2] == 180.0 and autotuned[4] == 180.0 / 600.0 and autotuned[6] is None
    assert rows[(name, "Jain's fairness index")][4] == 0.8
    memory = rows[(name, "kernel TCP memory, peak pages (baseline: tcp_mem pressure mark)")]
    assert memory[2] == 470_000.0 and memory[3] == 383_866.0 and memory[6] is None
