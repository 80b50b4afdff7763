#!/usr/bin/env python3
"""Fuzz harness: fastrelay.protocol.http.RequestBodyTracker (where a request body ends; chunked,
three times in four, by byte 0), fed whole and in pieces.

Expected exceptions: HttpError 400 "malformed request body"; the same outcome in any split.
Anything else escaping the check (fuzz/targets.py: check_chunked_body) is a finding.

    python fuzz/fuzz_chunked_body.py fuzz/corpus/chunked_body -runs=100000 -max_total_time=300
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fuzz._harness import run

if __name__ == "__main__":
    run("chunked_body")
