#!/usr/bin/env python3
"""Fuzz harness: fastrelay.protocol.socks.SocksParser (client_a's SOCKS5 greeting and request),
fed whole and in pieces.

Expected exceptions: SocksError only, with a reason and the answer its stage calls for
(`05 FF` for a greeting, a reply for a request); any split gives the same outcome.
Anything else escaping the check (fuzz/targets.py: check_socks) is a finding.

    python fuzz/fuzz_socks.py fuzz/corpus/socks -runs=100000 -max_total_time=300
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fuzz._harness import run

if __name__ == "__main__":
    run("socks")
