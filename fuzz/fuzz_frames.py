#!/usr/bin/env python3
"""Fuzz harness: fastrelay.protocol.frames.iter_frames over one WebSocket message of mux frames.

Expected exceptions: FrameError (kind malformed_frame) for a malformed header; the frames
yielded before it tile the message from its start.
Anything else escaping the check (fuzz/targets.py: check_frames) is a finding.

    python fuzz/fuzz_frames.py fuzz/corpus/frames -runs=100000 -max_total_time=300
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fuzz._harness import run

if __name__ == "__main__":
    run("frames")
