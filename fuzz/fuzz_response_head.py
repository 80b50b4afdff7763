#!/usr/bin/env python3
"""Fuzz harness: fastrelay.protocol.http.ResponseHeadRewriter (upstream response heads), fed whole
and in pieces; byte 0 >= 0x80 sets a small head limit.

Expected exceptions: HttpError 502 whose reason names the upstream response head; the same
outcome in any split.
Anything else escaping the check (fuzz/targets.py: check_response_head) is a finding.

    python fuzz/fuzz_response_head.py fuzz/corpus/response_head -runs=100000 -max_total_time=300
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fuzz._harness import run

if __name__ == "__main__":
    run("response_head")
