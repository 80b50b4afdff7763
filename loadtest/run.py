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
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench import topology

ROOT = Path(__file__).resolve().parents[1]
STOP_TIMEOUT = 10  # seconds Locust lets running tasks finish after --run-time


def parse_timespan(text: str) -> int:
    """Locust's `-t` syntax (`90`, `15s`, `1m30s`, `1h`) in seconds."""
    parts = re.fullmatch(r"\s*(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:(\d+)s?)?\s*", text)
    if not parts or not any(parts.groups()):
        raise argparse.ArgumentTypeError(f"not a run time: {text!r} (e.g. 15s, 1m30s)")
    h, m, s = (int(g or 0) for g in parts.groups())
    return h * 3600 + m * 60 + s


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start_chain(log_dir: Path) -> tuple[list[topology.Process], str, str]:
    """The bench target and a fastrelay chain (bench/topology.py) on loopback;
    returns (processes, proxy address, target address)."""
    target, port = topology.start_target(log_dir)
    try:
        chain = topology.chain(log_dir)
    except RuntimeError as exc:
        target.stop()
        raise SystemExit(f"loadtest: the chain did not start ({exc}); logs in {log_dir}") from None
    host, listen = chain.entry
    target_addr = f"{topology.TARGET_HOST}:{port}"
    print(f"loadtest: chain up: client_a {host}:{listen}, target {target_addr}", flush=True)
    return [target, *chain.processes], f"{host}:{listen}", target_addr


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
        allow_abbrev=False, prog="python -m loadtest.run", description=__doc__.split("\n")[0]
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

    os.environ["PYTHONPATH"] = str(ROOT)  # `python -m bench.target` from anywhere
    log_dir = out / "logs"
    procs: list[topology.Process] = []
    started = time.monotonic()
    cpu: dict[str, float | None] = {}
    try:
        procs, proxy, target = start_chain(log_dir)
        cpu_before = {p.name: p.cpu_seconds() for p in procs}
        locust_rc = run_locust(args, out, proxy, target)
        for p in procs:
            cpu[p.name] = (
                round(p.cpu_seconds() - cpu_before[p.name], 2) if p.popen.poll() is None else None
            )
        dead = [p for p in procs if p.popen.poll() is not None]
    finally:
        for p in reversed(procs):  # client_a and the agent leave before the relay
            p.stop()
    wall = time.monotonic() - started

    problems = []
    if locust_rc:
        problems.append(f"locust exited with {locust_rc}")
    for p in dead:
        problems.append(
            f"{p.name} died during the run (exit {p.popen.returncode}); "
            f"log tail:\n{tail(log_dir / f'{p.name}.log')}"
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
