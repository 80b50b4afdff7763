"""`fastrelay demo` (what `make run` starts) as an operator meets it (issue 11, items 8-10):
ports can be chosen and a taken one is named; on a terminal only the banner is printed,
on a pipe the JSON ready line follows it; the demo's prometheus.yml scrapes its real admin
ports; and nothing is left in /tmp once it stops."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import signal
import socket
import subprocess
import sys
from pathlib import Path

from helpers import free_port
from support.procs import ROOT

DEMO = [sys.executable, "-m", "fastrelay", "demo"]


def stop_group(demo: subprocess.Popen) -> None:
    """Whatever happened, nothing the demo started outlives the test: a demo
    killed here (it did not stop in time) would leave its relay, agent and
    client_a running, so the whole process group goes."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(demo.pid, signal.SIGKILL)
    demo.wait(5)


def test_taken_port_is_named_and_nothing_is_left(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        taken = sock.getsockname()[1]
        # The relay starts first: its admin port (free) binds, then its --listen (taken)
        # fails; the agent's and client_a's ports are never reached.
        admin = next(p for p in iter(free_port, None) if p < 65000)
        ports = ["--port", str(free_port()), "--page-port", str(free_port())]
        result = subprocess.run(
            [*DEMO, "--relay-port", str(taken), "--admin-port", str(admin), *ports],
            cwd=ROOT,
            env={**os.environ, "TMPDIR": str(tmp_path)},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode != 0
    assert f"--listen 127.0.0.1:{taken}: address already in use" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "errno" not in result.stderr.lower()
    assert list(tmp_path.iterdir()) == []  # the demo's directory went with it


def test_pipe_gets_the_ready_line_and_the_demo_cleans_up(tmp_path: Path) -> None:
    demo = subprocess.Popen(
        [*DEMO, "--ephemeral"],
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(tmp_path)},
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # its programs share its group: stop_group ends them all
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert demo.stdout is not None
        ready = None
        for line in demo.stdout:
            if line.startswith("{"):
                ready = json.loads(line)
                break
        assert ready is not None, "no JSON ready line on a pipe"
        workdir = Path(ready["workdir"])
        assert workdir.parent == tmp_path and workdir.is_dir()
        prometheus = Path(ready["prometheus"]).read_text()
        for program in ("relay", "agent", "client"):
            assert f'"{ready[program]["admin"]}"' in prometheus, prometheus
        assert "example.internal" not in prometheus
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(30) == 0
        assert not workdir.exists()
        assert list(tmp_path.iterdir()) == []
    finally:
        stop_group(demo)


def test_terminal_gets_the_banner_without_json(tmp_path: Path) -> None:
    primary, secondary = pty.openpty()
    demo = subprocess.Popen(
        [*DEMO, "--ephemeral"],
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(tmp_path)},
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # its programs share its group: stop_group ends them all
        stdout=secondary,
        stderr=subprocess.DEVNULL,
    )
    os.close(secondary)
    out = b""
    try:
        while b"Ctrl-C stops everything" not in out:
            chunk = os.read(primary, 4096)
            assert chunk, out
            out += chunk
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(30) == 0
        while True:  # everything it printed, up to its exit
            try:
                chunk = os.read(primary, 4096)
            except OSError:  # EIO: the terminal's other end is closed
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(primary)
        stop_group(demo)
    text = out.decode(errors="replace")
    assert "prometheus --config.file=" in text, text
    assert '"event"' not in text and "{" not in text, text
    assert list(tmp_path.iterdir()) == []
