"""What every harness runs: atheris over one check from fuzz/targets.py.

The repository root goes on sys.path so `python fuzz/fuzz_NAME.py` works from anywhere; the
fastrelay, client_a and agent modules (and fuzz.targets) are instrumented for coverage.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(name: str) -> None:
    """libFuzzer's command line is sys.argv: corpus directories and -flags."""
    import atheris  # type: ignore[import-untyped,import-not-found,unused-ignore]

    sys.path.insert(0, str(ROOT))
    with atheris.instrument_imports(include=["fastrelay", "client_a", "agent", "fuzz", "idna"]):
        from fuzz.targets import TARGETS
    atheris.Setup(sys.argv, TARGETS[name])
    atheris.Fuzz()
