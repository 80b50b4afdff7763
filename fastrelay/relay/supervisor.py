"""`fastrelay relay --workers N`: N relay processes on one port, one per core.

Each worker is a complete relay (`--reuse-port`, so the kernel spreads new
connections across them) and its own instance in the membership: with
`--cluster` each registers in Redis, otherwise the supervisor hands every
worker the others' ids as `--peers`. Agents mesh with all of them exactly as
with separate hosts. The supervisor restarts a worker that dies, forwards
SIGTERM (each worker drains), and serves one admin port whose /metrics merges
the workers' (fastrelay/relay/aggregate.py): each worker keeps its cheap
single-process collectors, and the supervisor scrapes them over loopback
only when it is scraped itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import logging
import os
import signal
import socket
import sys
import uuid
from collections.abc import Iterable

import orjson
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric

from fastrelay import metrics
from fastrelay.io.admin import Readiness, start_admin
from fastrelay.lifecycle import (
    all_of,
    announce_ready,
    bound_address,
    cancel_all,
    format_address,
    on_force_exit,
    on_sighup,
    pause,
)
from fastrelay.relay import aggregate
from fastrelay.relay.config import RelayConfig

log = logging.getLogger("fastrelay.supervisor")
READY_TIMEOUT = 20.0
RESTART_DELAY_MAX = 10.0
SCRAPE_TIMEOUT = 2.0
READER_LINGER = 1.0  # seconds to read what a worker wrote before it exited
SUPERVISOR_ENV = "FASTRELAY_SUPERVISOR_PID"  # tells a worker whose death to follow


class Worker:
    def __init__(self, index: int, instance_id: str) -> None:
        self.index = index
        self.instance_id = instance_id
        self.process: asyncio.subprocess.Process | None = None
        self.admin = ""  # its own admin address, from its ready line
        self.last_counters: dict[aggregate.Key, float] = {}
        self.restarts = 0


class Supervisor:
    def __init__(self, config: RelayConfig, host: str, port: int) -> None:
        self.config = config
        self.host, self.port = host, port
        base = config.instance_id or f"relay-{uuid.uuid4().hex[:12]}"
        self.workers = [Worker(i, f"{base}-w{i}") for i in range(config.workers)]
        self.retired: dict[aggregate.Key, float] = {}
        self.restarts = 0
        self.stopping = False
        self.readers: set[asyncio.Task[None]] = set()  # each worker's stdout, read to EOF

    def worker_argv(self, worker: Worker) -> list[str]:
        argv = [sys.executable, "-m", "fastrelay", "relay", *self.config.argv]
        argv += ["--workers", "1", "--reuse-port", "true"]
        argv += ["--listen", format_address((self.host, self.port))]
        argv += ["--admin", "127.0.0.1:0", "--instance-id", worker.instance_id]
        if not self.config.cluster:
            others = {w.instance_id for w in self.workers} | set(self.config.peers)
            argv += ["--peers", ",".join(sorted(others - {worker.instance_id}))]
        return argv

    async def start(self, worker: Worker) -> None:
        process = await asyncio.create_subprocess_exec(
            *self.worker_argv(worker),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, SUPERVISOR_ENV: str(os.getpid())},
        )
        assert process.stdout is not None
        try:
            line = await asyncio.wait_for(process.stdout.readline(), READY_TIMEOUT)
            ready = orjson.loads(line)
        except (TimeoutError, orjson.JSONDecodeError):
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            raise RuntimeError(f"relay worker {worker.index} did not report ready") from None
        worker.process = process
        worker.admin = ready["admin"]
        # Drain its stdout so a stray write can never block the worker.
        reader = asyncio.get_running_loop().create_task(_drain(process.stdout))
        self.readers.add(reader)
        reader.add_done_callback(self.readers.discard)

    async def watch(self, worker: Worker, stop: asyncio.Event) -> None:
        """Restart the worker whenever it dies, until shutdown."""
        delay = 0.5
        while True:
            assert worker.process is not None
            status = await worker.process.wait()
            if self.stopping or stop.is_set():
                return
            log.error("relay worker %d exited with %s; restarting it", worker.index, status)
            self._retire(worker)
            await pause(stop, delay)
            delay = min(RESTART_DELAY_MAX, delay * 2)
            if stop.is_set():
                return
            try:
                await self.start(worker)
            except (RuntimeError, OSError) as exc:
                log.error("relay worker %d did not restart: %s", worker.index, exc)
                continue
            worker.restarts += 1
            self.restarts += 1

    def _retire(self, worker: Worker) -> None:
        """Keep a dead worker's counters in the sum, so totals never go back."""
        for key, value in worker.last_counters.items():
            self.retired[key] = self.retired.get(key, 0.0) + value
        worker.last_counters = {}

    def signal_all(self, sig: int) -> None:
        for worker in self.alive:
            assert worker.process is not None
            worker.process.send_signal(sig)

    async def shutdown(self) -> None:
        self.stopping = True
        for worker in self.workers:
            if worker.process is not None and worker.process.returncode is None:
                worker.process.send_signal(signal.SIGTERM)
        for worker in self.workers:
            if worker.process is not None:
                await worker.process.wait()
        await all_of(list(self.readers), READER_LINGER)  # EOF follows the exit

    @property
    def alive(self) -> list[Worker]:
        return [w for w in self.workers if w.process is not None and w.process.returncode is None]

    # --- /metrics: the merge, at scrape time ---

    def collect(self) -> Iterable[Metric]:
        per_worker: dict[str, list[Metric]] = {}
        for worker in self.alive:
            text = _fetch_metrics(worker.admin)
            if text is None:
                continue
            families = aggregate.parse(text)
            worker.last_counters = aggregate.counter_samples(families)
            per_worker[str(worker.index)] = families
        yield from aggregate.merge(per_worker, self.retired)
        yield metrics.F_WORKERS.one(len(self.alive))
        yield metrics.F_WORKER_RESTARTS.one(self.restarts)


async def serve_workers(config: RelayConfig, stop: asyncio.Event) -> int:
    host, port = config.listen
    # Port 0: pick the port once and hold it (SO_REUSEPORT, not listening) so
    # every worker binds the same one.
    holder = None
    if port == 0:
        holder = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind((host, 0))
        port = holder.getsockname()[1]
    supervisor = Supervisor(config, host, port)
    readiness = Readiness(connected=lambda: bool(supervisor.alive), unconnected="no worker running")
    registry = CollectorRegistry(auto_describe=False)  # the workers' process metrics, by worker
    registry.register(_Collector(supervisor))
    admin = await start_admin(*config.admin, registry, readiness.check)
    try:
        for worker in supervisor.workers:
            await supervisor.start(worker)
    except (RuntimeError, OSError) as exc:
        # A worker that cannot start (its port taken, a bad TLS file) has
        # already said why on stderr; stop the others and fail as a whole.
        print(f"fastrelay relay: error: {exc}", file=sys.stderr)
        await supervisor.shutdown()
        admin.close()
        return 1
    finally:
        if holder is not None:
            holder.close()
    watchers = [asyncio.ensure_future(supervisor.watch(w, stop)) for w in supervisor.workers]
    on_sighup(lambda: supervisor.signal_all(signal.SIGHUP))  # each reopens its access log
    readiness.set("ready")
    admin_at = bound_address(admin)
    listen = format_address((host, port))
    log.info(
        "relay supervisor: %d workers on %s, admin on %s", len(supervisor.workers), listen, admin_at
    )
    announce_ready(
        "relay",
        listen=listen,
        admin=admin_at,
        instance=supervisor.workers[0].instance_id.rsplit("-w", 1)[0],
        workers=[w.instance_id for w in supervisor.workers],
        worker_admins=[w.admin for w in supervisor.workers],
        worker_pids=[w.process.pid for w in supervisor.workers if w.process is not None],
    )
    on_force_exit(lambda: supervisor.signal_all(signal.SIGKILL))  # none outlives us
    await stop.wait()
    readiness.set("draining")
    log.info(
        "relay supervisor: stopping %d workers; each waits up to %gs for its open tunnels "
        "(Ctrl-C again to stop at once)",
        len(supervisor.alive),
        config.drain_timeout,
    )
    await supervisor.shutdown()
    await cancel_all(watchers)
    admin.close()
    return 0


class _Collector:
    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def collect(self) -> Iterable[Metric]:
        return self.supervisor.collect()


def _fetch_metrics(admin: str) -> str | None:
    """GET a worker's /metrics over loopback (blocking: the supervisor
    carries no traffic, and a scrape of all workers takes a few ms)."""
    host, _, port = admin.rpartition(":")
    conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=SCRAPE_TIMEOUT)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        body = response.read()
        return body.decode() if response.status == 200 else None
    except OSError:
        return None
    finally:
        conn.close()


async def _drain(stream: asyncio.StreamReader) -> None:
    with contextlib.suppress(Exception):
        while await stream.read(4096):
            pass
