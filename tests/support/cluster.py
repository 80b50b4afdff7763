"""Scale-out fixtures: Redis, HAProxy and a cluster of relays behind it.

    curl -> client_a x2 --\\                /-> relay-1 --\\
                           >-> HAProxy ---+--> relay-2 ---+--> agent -> target
    agent (mesh) ---------/                \\-> relay-3 --/
                       relays share their membership in redis-server

HAProxy runs deploy/haproxy/haproxy.cfg itself, unchanged: the addresses go in
as the environment variables that file reads, so the documented config is the
tested one. Every relay has a fixed --listen and --admin port chosen up front,
so a relay restarted by a test comes back where HAProxy's server line points.
Every process is stopped by its own PID in `Cluster.stop()`, which the
fixtures call in a `finally`.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import random
import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import redis
from support.procs import (
    AGENT_TOKEN,
    CLIENT_TOKEN,
    ROOT,
    Proc,
    agent_argv,
    client_argv,
    fastrelay,
    http_get,
    is_ready,
    metric,
    require_tools_or_skip,
    wait_until,
)

from fastrelay.lifecycle import stop_process

HAPROXY_CONFIG = ROOT / "deploy/haproxy/haproxy.cfg"
# Debian installs haproxy in /usr/sbin, not on every user's PATH.
TOOL_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
CLUSTER_TTL = 2.0  # --cluster-ttl: a killed relay leaves the set within this
RELAYS = 3
START_TIMEOUT = 15.0

# Fixed ports are picked below the kernel's ephemeral range (32768+ here), so
# an outgoing connection's local port can never take a relay's port while it
# is down for a restart.
PORT_RANGE = (20000, 32000)


def tool(name: str) -> str | None:
    return shutil.which(name, path=TOOL_PATH)


def require_tools() -> None:
    """Skip without haproxy or redis-server, except in CI, where that is a failure."""
    missing = [name for name in ("haproxy", "redis-server") if tool(name) is None]
    require_tools_or_skip(missing, "scripts/system-deps.sh installs them")


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct ports nothing listens on now (all bound at once, then released)."""
    held: list[socket.socket] = []
    try:
        while len(held) < count:
            sock = socket.socket()
            try:
                sock.bind((host, random.randrange(*PORT_RANGE)))
            except OSError:
                sock.close()
                continue
            held.append(sock)
        return [sock.getsockname()[1] for sock in held]
    finally:
        for sock in held:
            sock.close()


class Daemon:
    """A child that is not a fastrelay program (redis-server, haproxy): no
    ready line, its output goes to a log file, stopped by its own PID."""

    def __init__(
        self, name: str, argv: list[str], log_dir: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_dir / f"{name}-{time.monotonic_ns()}.log"
        with open(self.log_path, "wb") as log:
            self.popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 5.0) -> int | None:
        return stop_process(self.popen, timeout)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def start_redis(log_dir: Path, data_dir: Path, port: int) -> Daemon:
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        tool("redis-server") or "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--dir",
        str(data_dir),
    ]
    return Daemon("redis", argv, log_dir)


def redis_answers(port: int) -> bool:
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


class HAProxy(Daemon):
    """haproxy -db running deploy/haproxy/haproxy.cfg with our addresses."""

    def __init__(
        self,
        log_dir: Path,
        bind_port: int,
        stats_port: int,
        relays: list[tuple[int, int]],
        balance: str,
    ) -> None:
        self.address = f"127.0.0.1:{bind_port}"
        self.stats_address = f"127.0.0.1:{stats_port}"
        env = {
            "FASTRELAY_LB_BIND": self.address,
            "FASTRELAY_LB_STATS": self.stats_address,
            "FASTRELAY_LB_BALANCE": balance,
        }
        for n, (listen_port, admin_port) in enumerate(relays, 1):
            env[f"FASTRELAY_RELAY{n}"] = f"127.0.0.1:{listen_port}"
            env[f"FASTRELAY_RELAY{n}_ADMIN_PORT"] = str(admin_port)
        argv = [tool("haproxy") or "haproxy", "-f", str(HAPROXY_CONFIG), "-db"]
        super().__init__("haproxy", argv, log_dir, env)

    def server_status(self) -> dict[str, str]:
        """HAProxy's view of each relay: {"r1": "UP", "r2": "DOWN", ...} ({} if no answer)."""
        try:
            status, text = http_get(f"http://{self.stats_address}/stats;csv", timeout=2)
        except OSError:
            return {}
        if status != 200:
            return {}
        rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
        return {
            row["svname"]: row["status"]
            for row in rows
            if row["pxname"] == "relays" and row["svname"] not in ("FRONTEND", "BACKEND")
        }

    def server_up(self, name: str) -> bool:
        return self.server_status().get(name, "").startswith("UP")


@dataclass
class RelaySlot:
    """One relay instance: its fixed ports and the process currently running it."""

    n: int
    listen_port: int
    admin_port: int
    proc: Proc | None = None

    @property
    def instance_id(self) -> str:
        return f"relay-{self.n}"

    @property
    def server(self) -> str:  # its server name in haproxy.cfg
        return f"r{self.n}"

    @property
    def admin(self) -> str:
        return f"127.0.0.1:{self.admin_port}"

    def metric(self, name: str, **labels: str) -> float:
        return metric(self.admin, name, **labels)


@dataclass
class Cluster:
    """Redis, three relays, HAProxy, one agent and two client_a processes."""

    log_dir: Path
    data_dir: Path
    balance: str = "roundrobin"
    drain_timeout: float = 10.0
    procs: list[Proc | Daemon] = field(default_factory=list)
    relays: list[RelaySlot] = field(default_factory=list)
    redis: Daemon | None = None
    haproxy: HAProxy | None = None
    agent: Proc | None = None
    clients: list[Proc] = field(default_factory=list)
    name: str = field(default_factory=lambda: f"fastrelay-test-{uuid.uuid4().hex[:10]}")

    def __post_init__(self) -> None:
        ports = free_ports(3 + 2 * RELAYS)
        self.redis_port, self.lb_port, self.stats_port = ports[:3]
        self.relays = [
            RelaySlot(n, ports[1 + 2 * n], ports[2 + 2 * n]) for n in range(1, RELAYS + 1)
        ]

    # --- starting ---

    def start(self, rules: Path, client_args: tuple[str, ...] = ()) -> None:
        """Everything, in order, each part waited for (bounded)."""
        self.start_backends()
        self.start_agent()
        self.wait_mesh(RELAYS)
        for _ in range(2):
            self.start_client(rules, *client_args)

    def start_backends(self) -> None:
        self.redis = start_redis(self.log_dir, self.data_dir / "redis", self.redis_port)
        self.procs.append(self.redis)
        wait_until(
            lambda: redis_answers(self.redis_port), timeout=START_TIMEOUT, what="redis answers"
        )
        for slot in self.relays:
            self.start_relay(slot)
        self.haproxy = HAProxy(
            self.log_dir,
            self.lb_port,
            self.stats_port,
            [(s.listen_port, s.admin_port) for s in self.relays],
            self.balance,
        )
        self.procs.append(self.haproxy)
        for slot in self.relays:
            self.wait_relay_in_service(slot, mesh=False)

    def start_relay(self, slot: RelaySlot) -> Proc:
        env = {"FASTRELAY_CLIENT_TOKENS": CLIENT_TOKEN, "FASTRELAY_AGENT_TOKENS": AGENT_TOKEN}
        argv = fastrelay(
            "relay",
            "--listen",
            f"127.0.0.1:{slot.listen_port}",
            "--admin",
            slot.admin,
            "--cluster",
            f"redis://127.0.0.1:{self.redis_port}/0",
            "--cluster-name",
            self.name,
            "--cluster-ttl",
            f"{CLUSTER_TTL:g}",
            "--instance-id",
            slot.instance_id,
            "--drain-timeout",
            f"{self.drain_timeout:g}",
            "--connect-timeout",
            "5",
        )
        proc = Proc(slot.instance_id, argv, env, self.log_dir)
        self.procs.append(proc)
        slot.proc = proc
        assert proc.ready["instance"] == slot.instance_id, proc.ready
        return proc

    @property
    def url(self) -> str:
        assert self.haproxy is not None
        return f"ws://{self.haproxy.address}"

    def start_agent(self) -> Proc:
        argv = agent_argv(self.url, "--allow", "127.0.0.0/8")
        proc = Proc("agent", argv, {"FASTRELAY_TOKEN": AGENT_TOKEN}, self.log_dir)
        self.procs.append(proc)
        self.agent = proc
        return proc

    def start_client(self, rules: Path, *args: str) -> Proc:
        argv = client_argv(self.url, rules, *args)
        proc = Proc(
            f"client{len(self.clients) + 1}", argv, {"FASTRELAY_TOKEN": CLIENT_TOKEN}, self.log_dir
        )
        self.procs.append(proc)
        self.clients.append(proc)
        carriers = int(args[args.index("--carriers") + 1]) if "--carriers" in args else 2
        wait_until(
            lambda: (
                is_ready(proc.ready["admin"])
                and metric(proc.ready["admin"], "fastrelay_relay_connected") == carriers
            ),
            timeout=START_TIMEOUT,
            what=f"{proc.name}'s {carriers} carriers ready",
        )
        return proc

    # --- waiting for states ---

    def agent_metric(self, name: str, **labels: str) -> float:
        assert self.agent is not None
        return metric(self.agent.ready["admin"], name, **labels)

    def wait_mesh(self, size: int, timeout: float = START_TIMEOUT) -> None:
        """The agent wants `size` relays and holds a ready connection to each."""
        wait_until(
            lambda: (
                self.agent_metric("fastrelay_cluster_members") == size
                and self.agent_metric("fastrelay_relay_connected") == size
            ),
            timeout=timeout,
            interval=0.1,
            what=f"the agent holds {size} relays",
        )

    def wait_one_agent_connection_each(self, slots: list[RelaySlot] | None = None) -> None:
        """Each relay has exactly one agent connection (a duplicate dial that
        landed on a relay the agent holds is closed, not kept)."""
        for slot in self.relays if slots is None else slots:
            wait_until(
                lambda s=slot: s.metric("fastrelay_connections", role="agent") == 1,
                timeout=5,
                interval=0.1,
                what=f"one agent connection at {slot.instance_id}",
            )

    def wait_relay_in_service(self, slot: RelaySlot, mesh: bool = True) -> None:
        """HAProxy routes to the relay again and (with `mesh`) the agent holds it."""
        assert self.haproxy is not None
        wait_until(
            lambda: self.haproxy.server_up(slot.server),  # type: ignore[union-attr]
            timeout=START_TIMEOUT,
            interval=0.1,
            what=f"HAProxy sees {slot.server} up",
        )
        if mesh:
            wait_until(
                lambda: slot.metric("fastrelay_connections", role="agent") == 1,
                timeout=START_TIMEOUT,
                interval=0.1,
                what=f"the agent holds {slot.instance_id} again",
            )
            self.wait_mesh(RELAYS)

    # --- stopping ---

    def stop(self) -> None:
        """Stop every process ever started here, each by its own PID: client_a
        and the agent first (so the relays have no tunnels left to drain),
        then the rest newest first."""
        first: list[Proc | Daemon] = [*reversed(self.clients)]
        if self.agent is not None:
            first.append(self.agent)
        rest = [p for p in reversed(self.procs) if p not in first]
        for proc in [*first, *rest]:
            with contextlib.suppress(Exception):
                proc.stop()

    def log_tails(self) -> str:
        return "\n".join(f"--- {p.name} log ---\n{p.log_tail()}" for p in self.procs)
