"""The systems under test, each started as real processes on loopback.

Every topology gives the load client one thing: `entry`, the address to dial,
and whether a CONNECT handshake is needed there. All of them reach the same
bench target (bench/target.py) on TARGET_HOST.
"""

from __future__ import annotations

import contextlib
import os
import resource
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fastrelay.eventloop import ENV
from fastrelay.lifecycle import spawn_ready, stop_process

TARGET_HOST = "127.0.0.2"


def raise_fd_limit() -> int:
    """Scenarios hold tens of thousands of sockets; children inherit this."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return want


@dataclass
class Process:
    name: str
    popen: subprocess.Popen
    ready: dict

    @property
    def pid(self) -> int:
        return self.popen.pid

    def rss_kib(self) -> int:
        return _status_kib(self.pid, "VmRSS")

    def peak_rss_kib(self) -> int:
        return _status_kib(self.pid, "VmHWM")

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def stop(self) -> None:
        stop_process(self.popen, 10)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process (clock-tick resolution)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def start(name: str, argv: list[str], env: dict[str, str] | None = None, log: Path | None = None):
    stderr = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - lives with the child
    popen, ready = spawn_ready(argv, env, stderr=stderr)
    return Process(name, popen, ready)


@dataclass
class Topology:
    name: str
    entry: tuple[str, int]
    uses_connect: bool
    processes: list[Process] = field(default_factory=list)
    client_token: str = ""  # for scenarios that speak the mux protocol to the relay themselves

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()

    def describe(self) -> dict:
        return {p.name: p.pid for p in self.processes}


def start_target(log_dir: Path, sndbuf: int = 0) -> tuple[Process, int]:
    proc = start(
        "target",
        [sys.executable, "-m", "bench.target", "--bind", TARGET_HOST, "--sndbuf", str(sndbuf)],
        log=log_dir / "target.log",
    )
    return proc, int(proc.ready["ports"][TARGET_HOST])


def direct(target_port: int) -> Topology:
    return Topology("direct", (TARGET_HOST, target_port), uses_connect=False)


def forwarder(target_port: int, log_dir: Path) -> Topology:
    proc = start(
        "forwarder",
        [
            sys.executable,
            "-m",
            "bench.baselines.forwarder",
            "--target",
            f"{TARGET_HOST}:{target_port}",
        ],
        log=log_dir / "forwarder.log",
    )
    return Topology("forwarder", _addr(proc.ready["listen"]), False, [proc])


def connect_proxy(log_dir: Path) -> Topology:
    proc = start(
        "connect_proxy",
        [sys.executable, "-m", "bench.baselines.connect_proxy"],
        log=log_dir / "connect_proxy.log",
    )
    return Topology("connect_proxy", _addr(proc.ready["listen"]), True, [proc])


PPROXY_LABEL = "pproxy, one CONNECT hop (Python, uvloop)"


def pproxy_missing() -> str:
    """Why the pproxy peer cannot run here ("" if it can): it is in the bench extra, not a
    dependency of fastrelay, so a venv without it skips the peer rather than failing."""
    import importlib.util

    if importlib.util.find_spec("pproxy") is None:
        return "pproxy is not installed (pip install -e '.[bench]', or pip install pproxy)"
    return ""


def pproxy(log_dir: Path) -> Topology:
    """A peer: pproxy (PyPI), a one-hop HTTP CONNECT proxy in Python on uvloop, run through
    its own command line by bench/baselines/pproxy_peer.py, quiet (no -v), on loopback."""
    argv = [sys.executable, "-m", "bench.baselines.pproxy_peer", "-l", "http://127.0.0.1:0"]
    proc = start("pproxy", argv, log=log_dir / "pproxy.log")
    return Topology("pproxy", _addr(proc.ready["listen"]), True, [proc])


def chain(
    log_dir: Path,
    extra: tuple[str, ...] = (),
    *,
    relay_args: tuple[str, ...] = (),
    client_args: tuple[str, ...] = (),
    log_prefix: str = "",
    agent_path: Callable[[str], tuple[str, Process | None]] | None = None,
) -> Topology:
    """client_a -> relay -> agent, with the target's address on the filter list.

    `extra` options go to both client_a and the agent (say, --window 4MiB);
    `relay_args` to the relay only (say, --workers 2), `client_args` to client_a
    only (say, --carriers 8). Logs go to `<log_prefix><program>.log`.
    `agent_path`, given the relay's listen address, returns the address the agent dials
    instead and the process that carries it there, if any (scenario 11: a delay line, for an
    agent in another network); that process is part of the topology."""
    client_token, agent_token = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    rules = Path(tempfile.mkdtemp(prefix="fastrelay-bench-")) / "rules.txt"
    rules.write_text(f"{TARGET_HOST}/32\n")
    fr = [sys.executable, "-m", "fastrelay"]
    started: list[Process] = []
    try:
        relay = start(
            "relay",
            [
                *fr,
                "relay",
                "--listen",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
                "--log-level",
                "warning",
                *relay_args,
            ],
            {"FASTRELAY_CLIENT_TOKENS": client_token, "FASTRELAY_AGENT_TOKENS": agent_token},
            log_dir / f"{log_prefix}relay.log",
        )
        started.append(relay)
        url = f"ws://{relay.ready['listen']}"
        agent_url = url
        if agent_path is not None:
            agent_addr, path_proc = agent_path(relay.ready["listen"])
            if path_proc is not None:
                started.append(path_proc)
            agent_url = f"ws://{agent_addr}"
        agent = start(
            "agent",
            [
                *fr,
                "agent",
                "--relay",
                agent_url,
                "--admin",
                "127.0.0.1:0",
                "--allow",
                f"{TARGET_HOST}/32",
                "--log-level",
                "warning",
                *extra,
            ],
            {"FASTRELAY_TOKEN": agent_token},
            log_dir / f"{log_prefix}agent.log",
        )
        started.append(agent)
        client = start(
            "client_a",
            [
                *fr,
                "client",
                "--listen",
                "127.0.0.1:0",
                "--relay",
                url,
                "--admin",
                "127.0.0.1:0",
                "--rules",
                str(rules),
                "--log-level",
                "warning",
                *extra,
                *client_args,
            ],
            {"FASTRELAY_TOKEN": client_token},
            log_dir / f"{log_prefix}client_a.log",
        )
        started.append(client)
        topo = Topology("fastrelay", _addr(client.ready["listen"]), True, started, client_token)
        _wait_ready([agent.ready["admin"], client.ready["admin"]])
        _check_loop(started)
        _check_hot_path(started)
        return topo
    except BaseException:
        for proc in reversed(started):  # never leave half a chain running
            proc.stop()
        raise


SEED_CLIENT = Path(__file__).resolve().parents[1] / "tests" / "support" / "seed_client.py"


def seed(log_dir: Path, chain_topo: Topology) -> Topology:
    """The seed dialect on the same relay and agent as `chain_topo`: the seed Client A
    written from the seed document alone (tests/support/seed_client.py, a local CONNECT
    proxy) speaking JSON + binary messages to the relay's /v1/seed."""
    relay = next(p for p in chain_topo.processes if p.name == "relay")
    proc = start(
        "seed_client",
        [sys.executable, str(SEED_CLIENT), "--relay", f"ws://{relay.ready['listen']}"],
        {"FASTRELAY_TOKEN": chain_topo.client_token},
        log_dir / "seed_client.log",
    )
    return Topology("seed", _addr(proc.ready["listen"]), True, [proc])


def _check_loop(started: list[Process]) -> None:
    """With FASTRELAY_LOOP set (python -m bench --loop), every fastrelay program of the
    chain must say, in its ready line, that it runs on that loop."""
    wanted = os.environ.get(ENV)
    loops = {p.name: p.ready["loop"] for p in started if "loop" in p.ready}
    if wanted and set(loops.values()) != {wanted}:
        raise RuntimeError(f"{ENV}={wanted}, but the chain runs on {loops}")


def _check_hot_path(started: list[Process]) -> None:
    """A program whose ready line says its hot path is "mixed" runs a module from source
    beside compiled ones: a build older than its source (an edit since `make hotpath`).
    That measures neither the compiled nor the interpreted code, so the bench stops."""
    modes = {p.name: p.ready["hotpath"] for p in started if "hotpath" in p.ready}
    if "mixed" in modes.values():
        raise RuntimeError(
            f"the chain's hot path is {modes}: a build older than its source; run make hotpath"
        )


def _wait_ready(admins: list[str], timeout: float = 15.0) -> None:
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    for admin in admins:
        while True:
            try:
                with urllib.request.urlopen(f"http://{admin}/readyz", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{admin} never became ready")
            time.sleep(0.05)


def wait_gauge(admin: str, name: str, want: float, timeout: float = 20.0) -> float:
    """Poll an admin port's /metrics until the unlabelled gauge `name` reaches `want`
    (say, the agent's fastrelay_relay_connected == the relay's worker count)."""
    import time

    deadline = time.monotonic() + timeout
    value = float("nan")
    while True:
        with contextlib.suppress(OSError):
            value = sum(v for (n, _), v in scrape(admin).items() if n == name)
        if value >= want:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"{admin}: {name} is {value}, not {want}, after {timeout:g} s")
        time.sleep(0.05)


def scrape(admin: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """One GET of an admin port's /metrics: {(sample name, sorted labels): value}."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


DELAY_HOST = "127.0.0.5"


def delay_line(
    to: str,
    rtt_ms: float,
    log_dir: Path,
    name: str = "delayline",
    cap: str = "",
    rate: int = 0,
    rate_back: int | None = None,
) -> Process:
    """bench/delayline.py on DELAY_HOST, forwarding to `to` (HOST:PORT) with `rtt_ms` added
    (and at most `rate` bytes per second each way, if given; `rate_back` from `to` back)."""
    argv = [sys.executable, "-m", "bench.delayline", "--listen", f"{DELAY_HOST}:0"]
    argv += ["--to", to, "--rtt-ms", f"{rtt_ms:g}", *(["--cap", cap] if cap else [])]
    argv += ["--rate", str(rate)] if rate else []
    argv += ["--rate-back", str(rate_back)] if rate_back is not None else []
    return start(name, argv, log=log_dir / f"{name}.log")
