#!/usr/bin/env python3
"""Fuzz harness: agent.policy.EgressPolicy: one --allow spec per line (a leading '-' makes it a
--deny).

Expected exceptions: PolicyError naming the spec; an accepted policy decides check() and
check_name().
Anything else escaping the check (fuzz/targets.py: check_policy) is a finding.

    python fuzz/fuzz_policy.py fuzz/corpus/policy -runs=100000 -max_total_time=300
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fuzz._harness import run

if __name__ == "__main__":
    run("policy")
