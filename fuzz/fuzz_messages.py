#!/usr/bin/env python3
"""Fuzz harness: The control-message decoders (OpenStream, ConnectResponse, TunnelError, Hello,
GoAway, Members); byte 0 picks the frame type, the rest is the JSON payload.

Expected exceptions: ControlMessageError (kind malformed_control); a decoded message encodes to
a payload that decodes again.
Anything else escaping the check (fuzz/targets.py: check_messages) is a finding.

    python fuzz/fuzz_messages.py fuzz/corpus/messages -runs=100000 -max_total_time=300
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fuzz._harness import run

if __name__ == "__main__":
    run("messages")
