#!/usr/bin/env python3
"""Fuzz harness: fastrelay.protocol.hostname: normalize_hostname, parse_ipv4, canonical_ipv4 on the
input as text (invalid UTF-8 as lone surrogates).

Expected exceptions: HostnameError from normalize_hostname only (parse_ipv4 and canonical_ipv4
never raise); a normalised name normalises to itself.
Anything else escaping the check (fuzz/targets.py: check_hostname) is a finding.

    python fuzz/fuzz_hostname.py fuzz/corpus/hostname -runs=100000 -max_total_time=300
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fuzz._harness import run

if __name__ == "__main__":
    run("hostname")
