"""`fastrelay demo`: relay, agent and client_a together on loopback.

It generates fresh tokens (passed through the environment, never argv), writes
an example rules file and a prometheus.yml for the demo's admin ports into a
temporary directory (removed on exit), starts a small page on 127.0.0.2 that the
rules send through the relay, and prints where to point a browser and where
/metrics is. Ctrl-C (or SIGTERM) stops all three.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from fastrelay.lifecycle import spawn_ready
from fastrelay.programs import Program

STOP_WAIT = 10.0  # seconds the three programs get, together, to stop on SIGTERM before SIGKILL
POLL = 0.2  # seconds between the supervisor's looks at the stop request and the programs
DEMO_PAGE_HOST = "127.0.0.2"
EXAMPLE_RULES = """\
# fastrelay filter list: one pattern per line.
#   example.com      that host only
#   *.example.com    its subdomains only
#   .example.com     the domain and its subdomains
#   203.0.113.0/24   IP literals in a network (IPv6 too)
.example.com
.example.org
{page_host}/32
"""


class DemoPage(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = (
            b"<!doctype html><title>fastrelay demo</title>"
            b"<h1>Hello through fastrelay</h1><p>client_a &rarr; relay &rarr; agent &rarr; "
            b"this page.</p>\n"
        )
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def start(program: str, args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, dict]:
    try:
        return spawn_ready([sys.executable, "-m", "fastrelay", program, *args], env)
    except RuntimeError:
        raise SystemExit(f"fastrelay demo: {program} failed to start (see its log above)") from None


def wait_ready(admin: str, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{admin}/readyz", timeout=1) as resp:
                if resp.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


PROMETHEUS_DEMO = """\
# Prometheus for `fastrelay demo`: scrapes the demo's three admin ports on loopback.
# Run: prometheus --config.file={path}
global:
  scrape_interval: 5s
  evaluation_interval: 5s
{rules}
scrape_configs:
  - job_name: fastrelay-relay
    static_configs:
      - targets: ["{relay}"]
  - job_name: fastrelay-agent
    static_configs:
      - targets: ["{agent}"]
  - job_name: fastrelay-client
    static_configs:
      - targets: ["{client}"]
"""


def write_prometheus_config(workdir: Path, r: dict, a: dict, c: dict) -> Path:
    """A prometheus.yml whose targets are this demo's real admin addresses (and,
    from a source checkout, the shipped alert rules)."""
    path = workdir / "prometheus.yml"
    alerts = Path(__file__).resolve().parents[1] / "deploy" / "prometheus" / "alerts.yml"
    rules = f"rule_files:\n  - {alerts}\n" if alerts.is_file() else ""
    path.write_text(
        PROMETHEUS_DEMO.format(
            path=path, rules=rules, relay=r["admin"], agent=a["admin"], client=c["admin"]
        )
    )
    return path


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="fastrelay demo",
        allow_abbrev=False,
        description="relay, agent and client_a on loopback with generated tokens and an "
        "example rules file (what `make run` starts). Ctrl-C stops everything.",
        epilog="make run takes the same ports: make run PORT=8090 RELAY_PORT=8766 "
        "ADMIN_PORT=9201 PAGE_PORT=8082 (or EPHEMERAL=1).",
    )
    parser.add_argument(
        "--port", type=int, default=8080, metavar="PORT",
        help="client_a's proxy port, where the browser points (default 8080)",
    )  # fmt: skip
    parser.add_argument(
        "--relay-port", type=int, default=8765, metavar="PORT",
        help="the relay's WebSocket port (default 8765)",
    )  # fmt: skip
    parser.add_argument(
        "--admin-port", type=int, default=9101, metavar="PORT",
        help="the relay's /metrics port; the agent's is PORT+1, client_a's PORT+2 "
        "(default 9101)",
    )  # fmt: skip
    parser.add_argument(
        "--page-port", type=int, default=8081, metavar="PORT",
        help=f"the demo page on {DEMO_PAGE_HOST} (default 8081)",
    )  # fmt: skip
    parser.add_argument(
        "--ephemeral",
        action="store_true",
        help="use free ports instead of the ones above (for tests and busy machines)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the JSON ready line after the banner even on a terminal (always printed "
        "when stdout is not a terminal)",
    )
    args = parser.parse_args(argv)
    for name in ("port", "relay_port", "admin_port", "page_port"):
        if not 0 < getattr(args, name) < 65536 - (2 if name == "admin_port" else 0):
            parser.error(f"--{name.replace('_', '-')}: not a port: {getattr(args, name)}")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    # From here on Ctrl-C/SIGTERM ask for a clean stop (children stopped, files removed),
    # even while the programs are still starting.
    stop = StopRequest()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop.handle)
    port = (lambda p: "0") if args.ephemeral else (lambda p: str(p))
    try:
        page = http.server.ThreadingHTTPServer(
            (DEMO_PAGE_HOST, int(port(args.page_port))), DemoPage
        )
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        print(
            f"fastrelay demo: error: --page-port {DEMO_PAGE_HOST}:{args.page_port}: "
            f"{reason.lower()} (choose another with --page-port, or --ephemeral)",
            file=sys.stderr,
        )
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="fastrelay-demo-"))
    threading.Thread(target=page.serve_forever, daemon=True).start()
    page_url = f"http://{DEMO_PAGE_HOST}:{page.server_address[1]}/"
    rules = workdir / "rules.txt"
    rules.write_text(EXAMPLE_RULES.format(page_host=DEMO_PAGE_HOST))
    client_token, agent_token = secrets.token_urlsafe(24), secrets.token_urlsafe(24)

    procs: list[subprocess.Popen] = []
    try:
        relay, r = start(
            "relay",
            [
                "--listen",
                f"127.0.0.1:{port(args.relay_port)}",
                "--admin",
                f"127.0.0.1:{port(args.admin_port)}",
            ],
            {"FASTRELAY_CLIENT_TOKENS": client_token, "FASTRELAY_AGENT_TOKENS": agent_token},
        )
        procs.append(relay)
        relay_url = f"ws://{r['listen']}"
        agent, a = start(
            "agent",
            [
                "--relay",
                relay_url,
                "--admin",
                f"127.0.0.1:{port(args.admin_port + 1)}",
                "--allow",
                f"{DEMO_PAGE_HOST}/32",
            ],
            {"FASTRELAY_TOKEN": agent_token},
        )
        procs.append(agent)
        client, c = start(
            "client",
            [
                "--listen",
                f"127.0.0.1:{port(args.port)}",
                "--relay",
                relay_url,
                "--rules",
                str(rules),
                "--admin",
                f"127.0.0.1:{port(args.admin_port + 2)}",
            ],
            {"FASTRELAY_TOKEN": client_token},
        )
        procs.append(client)
        if not (wait_ready(a["admin"]) and wait_ready(c["admin"])):
            print("fastrelay demo: agent or client_a did not connect", file=sys.stderr)
            return 1
        prometheus = write_prometheus_config(workdir, r, a, c)
        print_banner(c["listen"], r, a, c, page_url, rules, prometheus)
        if args.json or not sys.stdout.isatty():  # machine output for pipes and supervisors
            sys.stdout.write(
                json.dumps(
                    {
                        "event": "ready",
                        "program": "demo",
                        "proxy": c["listen"],
                        "relay": r,
                        "agent": a,
                        "client": c,
                        "page": page_url,
                        "pac": c["pac"],
                        "workdir": str(workdir),
                        "prometheus": str(prometheus),
                    }
                )
                + "\n"
            )
            sys.stdout.flush()
        return supervise(procs, stop)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_WAIT  # one wait for all three, not one each
        for proc in procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        page.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)  # rules and prometheus.yml: this run's only


class StopRequest:
    """Ctrl-C or SIGTERM came: a plain flag, which a signal handler can set at any moment.

    Not a `threading.Event`: its `set` takes the lock that `Event.wait` holds around its
    wait, and a signal handler runs in the main thread between any two bytecodes, inside
    that wait too. A signal landing while the main thread held the lock left the handler
    waiting for that lock for ever: `fastrelay demo` then ignored SIGTERM now and then
    (tests/unit/test_demo_stop.py).
    """

    __slots__ = ("requested",)

    def __init__(self) -> None:
        self.requested = False

    def handle(self, signum: int, frame: object) -> None:
        self.requested = True


def supervise(procs: list[subprocess.Popen], stop: StopRequest, poll: float = POLL) -> int:
    """Wait for Ctrl-C/SIGTERM (exit 0) or for a program to die (exit 1)."""
    while not stop.requested:
        time.sleep(poll)  # a signal runs its handler and the sleep goes on (PEP 475)
        for proc in procs:
            if proc.poll() is not None:
                name = proc.args[3] if isinstance(proc.args, list) else proc.args
                print(f"fastrelay demo: {name!s} exited with {proc.returncode}", file=sys.stderr)
                return 1
    return 0


def print_banner(
    proxy: str, r: dict, a: dict, c: dict, page_url: str, rules: Path, prometheus: Path
) -> None:
    print(
        f"""
fastrelay demo is running: client_a -> relay -> agent, all on loopback.

  Point a browser's HTTP and HTTPS proxy at:  http://{proxy}
  or its automatic proxy configuration (PAC) URL at:  {c["pac"]}
              (listed hosts to client_a, everything else direct)
  Try it:     curl -x http://{proxy} {page_url}
              (127.0.0.2 is on the filter list, so it goes through the relay;
               other hosts go direct)
  Rules:      {rules}  (edit it: it reloads by itself)
  Metrics:    relay    http://{r["admin"]}/metrics
              agent    http://{a["admin"]}/metrics
              client_a http://{c["admin"]}/metrics
  Prometheus: prometheus --config.file={prometheus}
              (scrapes the three ports above), then import deploy/grafana/fastrelay.json
              into Grafana (deploy/README.md)
  Files:      {rules.parent}  (removed when the demo stops)

Ctrl-C stops everything.
""",
        flush=True,
    )


PROGRAM = Program(
    "demo", "all three on loopback with generated tokens (what `make run` starts)", main
)
