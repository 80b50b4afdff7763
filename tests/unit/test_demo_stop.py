"""fastrelay demo's stop request: set from a signal handler at any moment, it never hangs.

The demo used a threading.Event set from its SIGINT/SIGTERM handler. A handler runs in
the main thread between bytecodes, also while that thread holds the Event's lock inside
`wait`, and then it waited for that lock for ever: the demo ignored a SIGTERM now and then.
Here a child process stops the demo's supervisor loop with a burst of signals, a thousand
times over; every stop must come through, within a bound no healthy run gets near.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

ROUNDS = 1000
BOUND = 60.0  # seconds for all rounds; a healthy run takes well under a second

SCRIPT = textwrap.dedent(
    f"""
    import os, signal, sys, time
    from fastrelay.demo import StopRequest, supervise

    parent = os.getpid()
    child = os.fork()
    if child == 0:  # signals at every moment of the supervisor's loop, until the parent is done
        while os.getppid() == parent:
            os.kill(parent, signal.SIGUSR1)
            time.sleep(0.0002)
        os._exit(0)
    stopped = 0
    for _ in range({ROUNDS}):
        stop = StopRequest()
        signal.signal(signal.SIGUSR1, stop.handle)
        stopped += supervise([], stop, poll=0.0001) == 0 and stop.requested
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    os.kill(child, signal.SIGKILL)
    os.waitpid(child, 0)
    print(stopped)
    """
)


def test_a_stop_request_set_by_signals_at_any_moment_always_ends_the_supervisor() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=BOUND, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [str(ROUNDS)], done.stderr[-2000:]
