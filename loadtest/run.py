"""Run the Locust load test against a fresh fastrelay chain on loopback.

    python -m loadtest.run [--users 20] [--spawn-rate 20] [--run-time 15s] [--out DIR]

Starts the bench target on 127.0.0.2, a relay, an agent (`--allow 127.0.0.2/32`) and client_a
(rules: `127.0.0.2/32`), all on port 0 with fresh tokens in the environment, then runs
`locust -f loadtest/locustfile.py --headless ...` with the proxy and target in its environment.
Everything is stopped by PID afterwards, whatever happened. Writes into OUT: locust_*.csv,
report.html, summary.json and logs/ (each program's stderr). Exits 1 if any request failed, if no
tunnel opened, if Locust failed or if a chain program died during the run.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from fastrelay.demo import wait_ready
from fastrelay.lifecycle import spawn_ready

ROOT = Path(__file__).resolve().parents[1]
TARGET_HOST = "127.0.0.2"
STOP_TIMEOUT = 10  # seconds Locust lets running tasks finish after --run-time


def parse_timespan(text: str) -> int:
    """Locust's `-t` syntax (`90`, `15s`, `1m30s`, `1h`) in seconds."""
    parts = re.fullmatch(r"\s*(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:(\d+)s?)?\s*", text)
    if not parts or not any(parts.groups()):
        raise argparse.ArgumentTypeError(f"not a run time: {text!r} (e.g. 15s, 1m30s)")
    h, m, s = (int(g or 0) for g in parts.groups())
    return h * 3600 + m * 60 + s


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a live process, from /proc (Linux only)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Chain:
    """The target, relay, agent and client_a processes, each logging to OUT/logs/NAME.log."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        self._files: list = []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> dict:
        path = self.log_dir / f"{name}.log"
        log = open(path, "wb")  # noqa: SIM115 - closed in stop()
        self._files.append(log)
        self.logs[name] = path
        try:
            proc, ready = spawn_ready(argv, env, stderr=log, timeout=20.0)
        except RuntimeError:
            raise SystemExit(f"loadtest: {name} did not start; its log:\n{tail(path)}") from None
        self.procs[name] = proc
        return ready

    def dead(self) -> list[str]:
        return [name for name, proc in self.procs.items() if proc.poll() is not None]

    def stop(self) -> None:
        """Newest first, each gone before the next one is told (client_a and the agent
        leave before the relay, so their logs show no lost-relay warnings)."""
        for name, proc in reversed(self.procs.items()):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    print(f"loadtest: {name} ignored SIGTERM for 10 s, killing it", file=sys.stderr)
                    proc.kill()
                    proc.wait(5)
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()
        for log in self._files:
            log.close()


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start_chain(chain: Chain, out: Path) -> tuple[str, str]:
    """Start everything; returns (proxy address, target address)."""
    fastrelay = [sys.executable, "-m", "fastrelay"]
    client_token, agent_token = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    rules = out / "rules.txt"
    rules.write_text(f"# the bench target goes through the relay\n{TARGET_HOST}/32\n")

    ready = chain.start(
        "target",
        [sys.executable, "-m", "bench.target", "--bind", TARGET_HOST],
        {"PYTHONPATH": str(ROOT)},
    )
    target = f"{TARGET_HOST}:{ready['ports'][TARGET_HOST]}"
    r = chain.start(
        "relay",
        [*fastrelay, "relay", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"],
        {"FASTRELAY_CLIENT_TOKENS": client_token, "FASTRELAY_AGENT_TOKENS": agent_token},
    )
    relay_url = f"ws://{r['listen']}"
    a = chain.start(
        "agent",
        [
            *fastrelay,
            "agent",
            "--relay",
            relay_url,
            "--admin",
            "127.0.0.1:0",
            "--allow",
            f"{TARGET_HOST}/32",
            "--reconnect-max",
            "1",
        ],
        {"FASTRELAY_TOKEN": agent_token},
    )
    c = chain.start(
        "client",
        [
            *fastrelay,
            "client",
            "--listen",
            "127.0.0.1:0",
            "--relay",
            relay_url,
            "--admin",
            "127.0.0.1:0",
            "--rules",
            str(rules),
            "--reconnect-max",
            "1",
        ],
        {"FASTRELAY_TOKEN": client_token},
    )
    for name, admin in (("agent", a["admin"]), ("client", c["admin"])):
        if not wait_ready(admin):
            raise SystemExit(
                f"loadtest: {name} did not connect to the relay; its log:\n{tail(chain.logs[name])}"
            )
    print(
        f"loadtest: chain up: relay {r['listen']}, client_a {c['listen']}, target {target}",
        flush=True,
    )
    return c["listen"], target


def run_locust(args: argparse.Namespace, out: Path, proxy: str, target: str) -> int:
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(ROOT / "loadtest" / "locustfile.py"),
        "--headless",
        "-u",
        str(args.users),
        "-r",
        str(args.spawn_rate),
        "-t",
        args.run_time,
        "--stop-timeout",
        str(STOP_TIMEOUT),
        "--csv",
        str(out / "locust"),
        "--html",
        str(out / "report.html"),
        "--only-summary",
    ]
    if not args.no_pin and shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        cmd = ["taskset", "-c", "1", *cmd]
    env = {
        **os.environ,
        "FASTRELAY_LOADTEST_PROXY": proxy,
        "FASTRELAY_LOADTEST_TARGET": target,
        "FASTRELAY_LOADTEST_BULK_BYTES": str(args.bulk_bytes),
        "FASTRELAY_LOADTEST_SUMMARY": str(out / "locust_final.json"),
    }
    budget = parse_timespan(args.run_time) + STOP_TIMEOUT + 60
    print(f"loadtest: {' '.join(cmd)}", flush=True)
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT)
    try:
        return proc.wait(budget)
    except subprocess.TimeoutExpired:
        print(f"loadtest: locust still running after {budget} s, killing it", file=sys.stderr)
        proc.kill()
        proc.wait(5)
        return 124
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def read_stats(path: Path) -> dict[str, dict[str, str]]:
    """locust_stats.csv rows keyed by Name ("open", "rtt_1k", ..., "Aggregated")."""
    with path.open(newline="") as f:
        return {row["Name"]: row for row in csv.DictReader(f)}


def summarize(rows: dict[str, dict[str, str]], seconds: float) -> dict:
    def num(row: dict[str, str], key: str) -> float:
        try:
            return float(row.get(key) or 0)
        except ValueError:  # "N/A" percentiles when a name has no samples
            return 0.0

    summary: dict = {}
    for name, row in rows.items():
        summary[name] = {
            "requests": int(num(row, "Request Count")),
            "failures": int(num(row, "Failure Count")),
            "p50_ms": num(row, "50%"),
            "p95_ms": num(row, "95%"),
            "p99_ms": num(row, "99%"),
            "avg_ms": round(num(row, "Average Response Time"), 2),
            "rps": round(num(row, "Requests/s"), 1),
        }
    bulk = rows.get("bulk")
    if bulk:
        count, size, avg_ms = (
            num(bulk, k) for k in ("Request Count", "Average Content Size", "Average Response Time")
        )
        summary["bulk"]["bytes"] = int(count * size)
        summary["bulk"]["MBps_per_transfer"] = round(size / avg_ms / 1e3, 1) if avg_ms else 0.0
        summary["bulk"]["MBps_aggregate"] = round(count * size / seconds / 1e6, 1)
    return summary


def print_summary(summary: dict) -> None:
    print(
        f"{'name':<12}{'requests':>10}{'failures':>10}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
        f"{'req/s':>9}"
    )
    for name, s in summary.items():
        if not isinstance(s, dict) or "requests" not in s:
            continue
        print(
            f"{name:<12}{s['requests']:>10}{s['failures']:>10}{s['p50_ms']:>9.0f}"
            f"{s['p95_ms']:>9.0f}{s['p99_ms']:>9.0f}{s['rps']:>9.1f}"
        )
    bulk = summary.get("bulk")
    if bulk and "bytes" in bulk:
        print(
            f"bulk: {bulk['bytes'] / 1e6:.0f} MB in {bulk['requests']} transfers, "
            f"{bulk['MBps_per_transfer']} MB/s per transfer, {bulk['MBps_aggregate']} MB/s "
            "aggregate over the run"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.run", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--spawn-rate", type=float, default=20)
    parser.add_argument("--run-time", default="15s", help="Locust -t (15s, 1m, 1m30s)")
    parser.add_argument("--out", type=Path, help="report directory (loadtest/results/<timestamp>)")
    parser.add_argument("--bulk-bytes", type=int, default=16 * 1024 * 1024)
    parser.add_argument("--no-pin", action="store_true", help="do not pin Locust to CPU 1")
    args = parser.parse_args(argv)
    run_seconds = parse_timespan(args.run_time)

    out = (args.out or ROOT / "loadtest" / "results" / time.strftime("%Y%m%d-%H%M%S")).resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    # the chain is self-contained: no FASTRELAY_* settings leak in from the caller's shell
    for key in [k for k in os.environ if k.startswith("FASTRELAY_")]:
        del os.environ[key]

    chain = Chain(out / "logs")
    started = time.monotonic()
    cpu: dict[str, float | None] = {}
    try:
        proxy, target = start_chain(chain, out)
        cpu_before = {name: cpu_seconds(p.pid) for name, p in chain.procs.items()}
        locust_rc = run_locust(args, out, proxy, target)
        for name, p in chain.procs.items():
            now, before = cpu_seconds(p.pid), cpu_before.get(name)
            cpu[name] = round(now - before, 2) if now is not None and before is not None else None
        dead = chain.dead()
    finally:
        chain.stop()
    wall = time.monotonic() - started

    problems = []
    if locust_rc:
        problems.append(f"locust exited with {locust_rc}")
    for name in dead:
        problems.append(
            f"{name} died during the run (exit {chain.procs[name].returncode}); "
            f"log tail:\n{tail(chain.logs[name])}"
        )
    final = out / "locust_final.json"  # written by the locustfile when the run stops
    stats_csv = out / "locust_stats.csv"
    summary: dict = {}
    if final.exists():
        summary = json.loads(final.read_text())
    elif stats_csv.exists():  # Locust rewrites it once a second: may miss the last moments
        print(f"loadtest: no {final.name}, falling back to {stats_csv.name}", file=sys.stderr)
        summary = summarize(read_stats(stats_csv), run_seconds)
    else:
        problems.append(f"neither {final.name} nor {stats_csv.name} was written")
    if summary:
        failures = summary.get("Aggregated", {}).get("failures", 0)
        opened = summary.get("open", {}).get("requests", 0) - summary.get("open", {}).get(
            "failures", 0
        )
        if failures:
            problems.append(f"{failures} requests failed (see {out / 'locust_failures.csv'})")
            for error in summary.get("errors", [])[:10]:
                problems.append(f"  {error['occurrences']} x {error['name']}: {error['error']}")
        if opened <= 0:
            problems.append("no tunnel opened")
    if not stats_csv.exists():
        problems.append(f"no {stats_csv.name}")
    if not (out / "report.html").exists():
        problems.append("no report.html")

    summary["cpu_seconds"] = cpu
    summary["wall_seconds"] = round(wall, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    print()
    print_summary(summary)
    print(f"chain CPU seconds during the run: {cpu}")
    print(
        f"wall time {wall:.1f} s; reports: {out}/report.html, {out}/locust_stats.csv, "
        f"{out}/summary.json; logs: {out}/logs/"
    )
    if problems:
        print("loadtest: FAILED\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    print("loadtest: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
