"""`make run` starts `fastrelay demo`: the three programs work together out of the box."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from support.procs import ROOT, metric, wait_until


def test_demo_carries_a_page_through_the_relay_and_stops_cleanly() -> None:
    demo = subprocess.Popen(
        [sys.executable, "-m", "fastrelay", "demo", "--ephemeral"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    children: list[int] = []
    try:
        assert demo.stdout is not None
        ready = None
        banner = []
        for _ in range(100):  # the banner, then one JSON line
            line = demo.stdout.readline()
            banner.append(line)
            if not line:
                break
            if line.startswith("{"):
                ready = json.loads(line)
                break
        assert ready is not None, "demo printed no ready line"
        children = [ready[p]["pid"] for p in ("relay", "agent", "client")]
        banner_proxy = ready["proxy"]
        result = subprocess.run(
            ["curl", "-sS", "--max-time", "10", "-x", f"http://{banner_proxy}", ready["page"]],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert "Hello through fastrelay" in result.stdout, result.stderr
        assert (
            metric(ready["relay"]["admin"], "fastrelay_stream_bytes_total", direction="downstream")
            > 0
        )
        # The PAC URL the demo shows serves the PAC, sending the page's host to client_a.
        assert ready["pac"] == f"http://{banner_proxy}/proxy.pac"
        assert any(ready["pac"] in line for line in banner), banner
        pac = subprocess.run(
            ["curl", "-sS", "--max-time", "10", "--noproxy", "*", ready["pac"]],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert "FindProxyForURL" in pac.stdout, pac.stderr
        assert f'"PROXY {banner_proxy}"' in pac.stdout
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(15) == 0
        wait_until(
            lambda: not any(_alive(pid) for pid in children),
            timeout=10,
            what="demo children to exit",
        )
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(5)
        for pid in children:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return False
