"""How soon a restarted relay carries tunnels again (issue 10, item 8).

Starts relay, agent and client_a on loopback with the default redial cap
(--reconnect-max 10), then RESTARTS times: lets the relay run UPTIME seconds,
SIGKILLs it, waits OUTAGE seconds, starts it again on the same port, and times
from its ready line to the agent's and client_a's /readyz and to the first
CONNECT that gets 200 through the chain.

    .venv/bin/python -m bench.reconnect_time [--restarts 10] [--outage 1.0]
"""

from __future__ import annotations

import argparse
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support.procs import Chain, is_ready  # noqa: E402

LISTED = "127.0.0.2"
UPTIME = 2.0  # a connection that drops within 1 s of HELLO is a flap, not a restart
PACING = ("--reconnect-max", "10")  # the programs' default cap (the tests' harness uses 1 s)


def tunnel_ok(proxy: tuple[str, int], port: int) -> bool:
    try:
        with socket.create_connection(proxy, timeout=2) as sock:
            sock.sendall(f"CONNECT {LISTED}:{port} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            return sock.recv(100).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False)
    parser.add_argument("--restarts", type=int, default=10)
    parser.add_argument("--outage", type=float, default=1.0)
    args = parser.parse_args()
    target = socket.create_server((LISTED, 0))
    port = target.getsockname()[1]
    work = Path(tempfile.mkdtemp(prefix="fastrelay-reconnect-"))
    rules = work / "rules.txt"
    rules.write_text(f"{LISTED}/32\n")
    chain = Chain(work)
    rows: list[tuple[float, float, float]] = []
    try:
        relay = chain.start_relay()
        agent = chain.start_agent("--allow", "127.0.0.0/8", *PACING)
        client = chain.start_client(rules, *PACING)
        host, _, proxy_port = client.ready["listen"].rpartition(":")
        proxy = (host, int(proxy_port))
        listen = relay.ready["listen"]
        for _ in range(args.restarts):
            time.sleep(UPTIME)
            relay.signal(signal.SIGKILL)
            relay.popen.wait(10)
            chain.procs.remove(relay)
            time.sleep(args.outage)
            relay = chain.start_relay(listen=listen)
            start = time.monotonic()
            agent_at = client_at = tunnel_at = float("nan")
            while time.monotonic() - start < 30:
                now = time.monotonic() - start
                if agent_at != agent_at and is_ready(agent.ready["admin"]):
                    agent_at = now
                if client_at != client_at and is_ready(client.ready["admin"]):
                    client_at = now
                if agent_at == agent_at and client_at == client_at and tunnel_ok(proxy, port):
                    tunnel_at = time.monotonic() - start
                    break
                time.sleep(0.01)
            rows.append((agent_at, client_at, tunnel_at))
            print(f"agent {agent_at:.2f} s  client_a {client_at:.2f} s  tunnel {tunnel_at:.2f} s")
    finally:
        chain.stop()
        target.close()
    tunnels = [row[2] for row in rows]
    print(
        f"first good tunnel after the relay was ready: median {statistics.median(tunnels):.2f} s, "
        f"max {max(tunnels):.2f} s over {len(tunnels)} restarts ({args.outage:g} s outage)"
    )


if __name__ == "__main__":
    main()
