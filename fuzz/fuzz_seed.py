#!/usr/bin/env python3
"""Fuzz harness: the seed dialect (fastrelay/protocol/seed.py): `decode_text` on the input,
then the input as a sequence of WebSocket frames (fuzz/targets.py: seed_frames) fed to one
`SeedConnection`.

Expected exceptions: SeedError (close 1002), SeedRefusal (a CONNECT answered 400),
BudgetExceeded (1008). Anything else escaping the check (fuzz/targets.py: check_seed) is a
finding.

    python fuzz/fuzz_seed.py fuzz/corpus/seed -runs=100000 -max_total_time=300
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fuzz._harness import run

if __name__ == "__main__":
    run("seed")
