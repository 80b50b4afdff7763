"""bench/report.py: a quick (CI) run says it checks the instruments, not the targets,
and judges no target; a full run still does (issue 11, item 9)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import report

ROWS = [
    ("1. bulk down", "MB/s ratio", 500.0, 1000.0, 0.5, ">= 0.8", False),
    ("2. setups", "per s ratio", 900.0, 1000.0, 0.9, ">= 0.8", True),
]
DATA = {
    "environment": {"command": "python -m bench", "cpus": 2, "loadavg_at_start": ["0.1"] * 3,
                    "python": "3.11"},
    "processes": {},
    "results": {},
}  # fmt: skip


@pytest.fixture(autouse=True)
def stub_sections(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report, "rows", lambda data: ROWS)
    for name in ("scrape_section", "workers_section", "noisy_section"):
        monkeypatch.setattr(report, name, lambda data: [])
    monkeypatch.setattr(report, "charts", lambda data, out: None)


def table(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith("| 1.") or ln.startswith("| 2.")]


def test_quick_run_judges_no_target(tmp_path: Path) -> None:
    text = report.write({**DATA, "quick": True}, tmp_path)
    assert "checks that the instruments work" in text and "not the targets" in text
    rows = table(text)
    assert len(rows) == 2
    assert all(row.endswith("| not judged (quick) |") for row in rows), rows
    assert "**no**" not in text


def test_full_run_judges_the_targets(tmp_path: Path) -> None:
    text = report.write(DATA, tmp_path)
    assert "Quick mode" not in text
    assert table(text)[0].endswith("| **no** |") and table(text)[1].endswith("| yes |")


def test_the_summary_names_the_chains_hot_path(tmp_path: Path) -> None:
    modes = {"relay": "compiled", "agent": "compiled", "client_a": "python"}
    text = report.write({**DATA, "hot_path": modes}, tmp_path)
    assert "The chain's hot path: relay compiled, agent compiled, client_a python." in text
    assert "hot path" not in report.write(DATA, tmp_path)  # nothing recorded, nothing said
