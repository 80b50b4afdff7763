#!/usr/bin/env python3
"""Fuzz harness: client_a.rules.Rules.decode: the bytes of a rules file.

Expected exceptions: RuleError naming the source and line; accepted rules answer matches() for
any host.
Anything else escaping the check (fuzz/targets.py: check_rules) is a finding.

    python fuzz/fuzz_rules.py fuzz/corpus/rules -runs=100000 -max_total_time=300
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fuzz._harness import run

if __name__ == "__main__":
    run("rules")
