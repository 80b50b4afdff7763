#!/usr/bin/env python3
"""Fuzz harness: fastrelay.protocol.http.RequestHeadParser (client_a's browser request heads), fed
whole and in pieces; byte 0 >= 0x80 sets a small head limit.

Expected exceptions: HttpError with status 400 or 431 and a reason; the same outcome in any
split.
Anything else escaping the check (fuzz/targets.py: check_request_head) is a finding.

    python fuzz/fuzz_request_head.py fuzz/corpus/request_head -runs=100000 -max_total_time=300
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fuzz._harness import run

if __name__ == "__main__":
    run("request_head")
