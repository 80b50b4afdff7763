#!/usr/bin/env python3
"""Fuzz harness: Each program's config loading (client_a, agent, relay: by byte 0) from a TOML file
holding the rest of the input: fastrelay.config.load_options and the programs' load().

Expected exceptions: ConfigError, never another exception (argparse is not involved: only
--config is given).
Anything else escaping the check (fuzz/targets.py: check_config) is a finding.

    python fuzz/fuzz_config.py fuzz/corpus/config -runs=100000 -max_total_time=300
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fuzz._harness import run

if __name__ == "__main__":
    run("config")
