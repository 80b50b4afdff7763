"""bench/probe_ramp.py: the ramp it reads from a transfer's slices, and one real run of it
(a chain behind a delay line, a small download), which has to report the bytes it moved."""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.probe_ramp import ramp

ROOT = Path(__file__).resolve().parents[2]


def test_the_ramp_ends_at_the_first_slice_near_the_steady_rate() -> None:
    # One round trip with nothing, then the window doubling, then steady at ~670.
    took, steady = ramp([0, 84, 168, 336, 671, 650, 671, 660, 671])
    assert took == 4
    assert steady == 671


def test_too_few_slices_read_as_no_ramp() -> None:
    took, steady = ramp([500.0, 600.0])
    assert took == 0 and steady != steady  # NaN: nothing to read


@given(st.lists(st.floats(min_value=0, max_value=1e4), min_size=3, max_size=60))
def test_the_ramp_is_every_slice_before_the_first_near_the_later_median(
    slices: list[float],
) -> None:
    took, steady = ramp(slices)
    mark = 0.9 * statistics.median(slices[len(slices) // 2 :])
    assert all(v < mark for v in slices[:took])
    assert took < len(slices)  # the later half's median is reached in that half at the latest
    assert slices[took] >= mark
    assert steady == statistics.median(slices[took:])


@pytest.mark.timeout(120)
def test_a_real_run_reports_what_it_moved(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            *(sys.executable, "-m", "bench.probe_ramp", "--rtt-ms", "10", "--bytes", "8MiB"),
            *("--slice-ms", "20", "--repeats", "1", "--log-dir", str(tmp_path)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    found = re.search(r"repeat 1: (\d+) MB/s, idle CPU (\d+)%", out.stdout)
    assert found is not None, out.stdout
    assert int(found.group(1)) > 0
    assert 0 <= int(found.group(2)) <= 100
    slices = re.search(r"MB/s per slice: ([\d ]*)", out.stdout)
    assert slices is not None, out.stdout
