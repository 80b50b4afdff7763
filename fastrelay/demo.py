"""`fastrelay demo`: relay, agent and client_a together on loopback.

It generates fresh tokens (passed through the environment, never argv), writes
an example rules file, starts a small page on 127.0.0.2 that the rules send
through the relay, and prints where to point a browser and where /metrics is.
Ctrl-C (or SIGTERM) stops all three.
"""

from __future__ import annotations

import argparse
import http.server
import json
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from fastrelay.lifecycle import spawn_ready

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


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fastrelay demo", allow_abbrev=False)
    parser.add_argument(
        "--ephemeral",
        action="store_true",
        help="use free ports instead of 8080/8765/9101-9103 (for tests)",
    )
    args = parser.parse_args(argv)
    port = (lambda p: "0") if args.ephemeral else (lambda p: str(p))
    workdir = Path(tempfile.mkdtemp(prefix="fastrelay-demo-"))
    page = http.server.ThreadingHTTPServer((DEMO_PAGE_HOST, int(port(8081))), DemoPage)
    threading.Thread(target=page.serve_forever, daemon=True).start()
    page_url = f"http://{DEMO_PAGE_HOST}:{page.server_address[1]}/"
    rules = workdir / "rules.txt"
    rules.write_text(EXAMPLE_RULES.format(page_host=DEMO_PAGE_HOST))
    client_token, agent_token = secrets.token_urlsafe(24), secrets.token_urlsafe(24)

    procs: list[subprocess.Popen] = []
    try:
        relay, r = start(
            "relay",
            ["--listen", f"127.0.0.1:{port(8765)}", "--admin", f"127.0.0.1:{port(9101)}"],
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
                f"127.0.0.1:{port(9102)}",
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
                f"127.0.0.1:{port(8080)}",
                "--relay",
                relay_url,
                "--rules",
                str(rules),
                "--admin",
                f"127.0.0.1:{port(9103)}",
            ],
            {"FASTRELAY_TOKEN": client_token},
        )
        procs.append(client)
        if not (wait_ready(a["admin"]) and wait_ready(c["admin"])):
            print("fastrelay demo: agent or client_a did not connect", file=sys.stderr)
            return 1
        print_banner(c["listen"], r, a, c, page_url, rules)
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
                }
            )
            + "\n"
        )
        sys.stdout.flush()
        return supervise(procs)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        page.shutdown()


def supervise(procs: list[subprocess.Popen]) -> int:
    """Wait for Ctrl-C/SIGTERM (exit 0) or for a program to die (exit 1)."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        for proc in procs:
            if proc.poll() is not None:
                print(
                    f"fastrelay demo: {proc.args[3]} exited with {proc.returncode}", file=sys.stderr
                )
                return 1
    return 0


def print_banner(proxy: str, r: dict, a: dict, c: dict, page_url: str, rules: Path) -> None:
    print(
        f"""
fastrelay demo is running: client_a -> relay -> agent, all on loopback.

  Point a browser's HTTP and HTTPS proxy at:  http://{proxy}
  Try it:     curl -x http://{proxy} {page_url}
              (127.0.0.2 is on the filter list, so it goes through the relay;
               other hosts go direct)
  Rules:      {rules}  (edit it: it reloads by itself)
  Metrics:    relay    http://{r["admin"]}/metrics
              agent    http://{a["admin"]}/metrics
              client_a http://{c["admin"]}/metrics
  Grafana:    scrape them with deploy/prometheus/prometheus.yml (targets 127.0.0.1 and
              the ports above), then import deploy/grafana/fastrelay.json (deploy/README.md)

Ctrl-C stops everything.
""",
        flush=True,
    )
