"""Real processes on real loopback sockets, with teardown that always runs.

Every program is started as `python -m fastrelay PROGRAM` on port 0 and
reports its bound addresses in the JSON ready line it prints on stdout.
Processes are stopped by their own PID only.
"""

from __future__ import annotations

import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fastrelay.lifecycle import spawn_ready, stop_process

ROOT = Path(__file__).resolve().parents[2]
CLIENT_TOKEN = "client-token-for-tests"
AGENT_TOKEN = "agent-token-for-tests"
READY_TIMEOUT = 20.0
CLIENT_CARRIERS = 2  # client_a's default --carriers: its WebSockets to the relay


class Proc:
    """One child process whose first stdout line is a JSON ready line."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_dir / f"{name}-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        try:
            self.popen, self.ready = spawn_ready(argv, env, stderr=self._log, timeout=READY_TIMEOUT)
        except RuntimeError:
            self._log.close()
            raise RuntimeError(f"{name} did not become ready:\n{self.log_tail()}") from None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.popen.pid, sig)

    def stop(self, timeout: float = 8.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit status."""
        stop_process(self.popen, timeout)
        for stream in (self.popen.stdin, self.popen.stdout):
            if stream is not None:
                stream.close()
        self._log.close()
        return self.popen.returncode

    def kill(self) -> None:
        if self.alive():
            self.popen.kill()
            self.popen.wait(5)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def agent_argv(relay_url: str, *args: str) -> list[str]:
    """An agent on an ephemeral admin port that redials quickly."""
    return fastrelay(
        "agent", "--relay", relay_url, "--admin", "127.0.0.1:0", "--reconnect-max", "1", *args
    )


def client_argv(relay_url: str, rules: Path, *args: str) -> list[str]:
    """client_a on ephemeral ports that redials quickly."""
    return fastrelay(
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
        *args,
    )


def require_tools_or_skip(missing: list[str], hint: str) -> None:
    """Skip a test whose real tools are missing, except in CI (CI=true),
    where `make test` must have installed them: there it is a failure."""
    if not missing:
        return
    message = f"{', '.join(missing)} missing: {hint}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def fastrelay(program: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "fastrelay", program, *args]


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05, what: str = "") -> None:
    """Poll `predicate` until true; bounded in time, raises on expiry."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")


def is_ready(admin: str) -> bool:
    try:
        return http_get(f"http://{admin}/readyz", timeout=1)[0] == 200
    except OSError:
        return False


def scrape(admin: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics as {(name, sorted labels): value}."""
    status, text = http_get(f"http://{admin}/metrics")
    assert status == 200, text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def metric(admin: str, name: str, **labels: str) -> float:
    """The sum of every sample of `name` whose labels include `labels`
    (PromQL's `sum(name{labels})`): 0.0 when there is none."""
    wanted = set(labels.items())
    return sum(
        value
        for (sample, sample_labels), value in scrape(admin).items()
        if sample == name and wanted <= set(sample_labels)
    )


@dataclass
class Chain:
    """A relay, agents and client_a processes started together."""

    log_dir: Path
    procs: list[Proc] = field(default_factory=list)
    relay: Proc | None = None
    agents: list[Proc] = field(default_factory=list)
    clients: list[Proc] = field(default_factory=list)
    scheme: str = "ws"  # "wss" for a relay started with --tls-cert/--tls-key

    def start_relay(self, *args: str, listen: str = "127.0.0.1:0") -> Proc:
        env = {"FASTRELAY_CLIENT_TOKENS": CLIENT_TOKEN, "FASTRELAY_AGENT_TOKENS": AGENT_TOKEN}
        proc = Proc(
            "relay",
            fastrelay("relay", "--listen", listen, "--admin", "127.0.0.1:0", *args),
            env,
            self.log_dir,
        )
        self.procs.append(proc)
        self.relay = proc
        return proc

    @property
    def relay_url(self) -> str:
        assert self.relay is not None
        return f"{self.scheme}://{self.relay.ready['listen']}"

    def start_agent(self, *args: str, token: str = AGENT_TOKEN, wait: bool = True) -> Proc:
        proc = Proc(
            "agent", agent_argv(self.relay_url, *args), {"FASTRELAY_TOKEN": token}, self.log_dir
        )
        self.procs.append(proc)
        self.agents.append(proc)
        if wait:
            wait_until(lambda: is_ready(proc.ready["admin"]), what="agent connected")
        return proc

    def start_client(
        self, rules: Path, *args: str, token: str = CLIENT_TOKEN, wait: bool = True
    ) -> Proc:
        argv = client_argv(self.relay_url, rules, *args)
        proc = Proc("client", argv, {"FASTRELAY_TOKEN": token}, self.log_dir)
        self.procs.append(proc)
        self.clients.append(proc)
        if wait:
            wait_until(lambda: is_ready(proc.ready["admin"]), what="client_a connected")
        return proc

    @property
    def proxy(self) -> str:
        return f"http://{self.clients[0].ready['listen']}"

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
