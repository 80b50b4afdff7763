"""Locust users that drive fastrelay the way a browser does: through client_a's HTTP proxy.

Every user speaks plain (gevent-patched) sockets: `CONNECT host:port HTTP/1.1` to client_a, the
`200` head back, then the bench target's protocol on the open tunnel (9 bytes, `mode + u64 n`:
`E 0` echo, `D n` the target sends n bytes). Nothing here imports fastrelay or asyncio.

Events (request_type "TUNNEL"), shown in Locust's stats, CSV and web UI:
  open    CONNECT sent until the whole `200` head is read (ms); failure: refused, non-200, timeout
  rtt_1k  one 1 KiB echo round trip on an open tunnel (TunnelUser); failure: short read, mismatch
  rtt_64  the one 64-byte echo round trip of a ChurnUser
  bulk    D n: time to read all n bytes (response_length = n); failure: short read, timeout

Configuration (environment; Locust's --host is not used):
  FASTRELAY_LOADTEST_PROXY       client_a's proxy address   (default 127.0.0.1:8080)
  FASTRELAY_LOADTEST_TARGET      host:port the agent dials  (required: the bench target)
  FASTRELAY_LOADTEST_BULK_BYTES  bytes per bulk download    (default 16 MiB)
  FASTRELAY_LOADTEST_ROUNDS      1 KiB round trips per TunnelUser tunnel (default 5)
  FASTRELAY_LOADTEST_TIMEOUT     per-socket-operation timeout, seconds (default 10)
  FASTRELAY_LOADTEST_WAIT        max think time between tasks, seconds (default 0.1)
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time

from locust import User, between, events, task
from locust.runners import WorkerRunner

REQUEST = struct.Struct("!cQ")  # bench/target.py: mode (1 byte) + n (u64, big-endian)
HEAD_LIMIT = 16384
READ_CHUNK = 256 * 1024


def parse_address(value: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` into a (host, port) pair."""
    host, sep, port = value.strip().rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"not host:port: {value!r}")
    return host.strip("[]"), int(port)


PROXY = os.environ.get("FASTRELAY_LOADTEST_PROXY", "127.0.0.1:8080")
TARGET = os.environ.get("FASTRELAY_LOADTEST_TARGET", "")
BULK_BYTES = int(os.environ.get("FASTRELAY_LOADTEST_BULK_BYTES", str(16 * 1024 * 1024)))
ROUNDS = int(os.environ.get("FASTRELAY_LOADTEST_ROUNDS", "5"))
TIMEOUT = float(os.environ.get("FASTRELAY_LOADTEST_TIMEOUT", "10"))
WAIT = float(os.environ.get("FASTRELAY_LOADTEST_WAIT", "0.1"))
PROXY_ADDRESS = parse_address(PROXY)


class TunnelError(Exception):
    """A tunnel-level failure: non-200 CONNECT, short read, wrong echo."""


@events.init.add_listener
def check_config(environment, **_kwargs) -> None:
    if not TARGET:
        raise SystemExit(
            "set FASTRELAY_LOADTEST_TARGET=host:port (a bench target the agent may reach)"
        )
    parse_address(TARGET)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """Exactly n bytes, or TunnelError on EOF (short read)."""
    buffer = bytearray(n)
    view = memoryview(buffer)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if not k:
            raise TunnelError(f"short read: {got} of {n} bytes, then EOF")
        got += k
    return bytes(buffer)


class TunnelBase(User):
    """Opens tunnels through client_a and records the TUNNEL events."""

    abstract = True
    wait_time = between(0, WAIT)

    def fire(self, name: str, started: float, length: int, exc: BaseException | None) -> None:
        self.environment.events.request.fire(
            request_type="TUNNEL",
            name=name,
            response_time=(time.perf_counter() - started) * 1000.0,
            response_length=length,
            exception=exc,
            context={},
        )

    def open_tunnel(self, mode: bytes, n: int) -> socket.socket | None:
        """CONNECT through client_a, then send the target's 9-byte request.
        Fires "open"; returns the socket, or None on failure (already recorded)."""
        started = time.perf_counter()
        sock = None
        try:
            sock = socket.create_connection(PROXY_ADDRESS, timeout=TIMEOUT)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(f"CONNECT {TARGET} HTTP/1.1\r\nHost: {TARGET}\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(4096)
                if not chunk:
                    raise TunnelError(f"proxy closed before the CONNECT answer ({len(head)} bytes)")
                head += chunk
                if len(head) > HEAD_LIMIT:
                    raise TunnelError("CONNECT answer head too large")
            status_line, _, rest = head.partition(b"\r\n")
            parts = status_line.split(None, 2)
            if len(parts) < 2 or parts[1] != b"200":
                raise TunnelError(f"CONNECT answered {status_line.decode(errors='replace')!r}")
            if rest.partition(b"\r\n\r\n")[2]:
                raise TunnelError("unexpected bytes after the CONNECT answer")
            sock.sendall(REQUEST.pack(mode, n))
        except (OSError, TunnelError) as exc:
            if sock is not None:
                sock.close()
            self.fire("open", started, 0, exc)
            return None
        self.fire("open", started, 0, None)
        return sock

    def echo(self, sock: socket.socket, name: str, payload: bytes) -> bool:
        """One echo round trip; fires `name`; False if the tunnel is unusable."""
        started = time.perf_counter()
        try:
            sock.sendall(payload)
            answer = recv_exact(sock, len(payload))
            if answer != payload:
                raise TunnelError(f"echo mismatch on {len(payload)} bytes")
        except (OSError, TunnelError) as exc:
            self.fire(name, started, 0, exc)
            return False
        self.fire(name, started, len(payload), None)
        return True


class TunnelUser(TunnelBase):
    """A browser tab on a keep-alive connection: one tunnel, a few 1 KiB exchanges, close."""

    weight = 4

    def on_start(self) -> None:
        self.payload = os.urandom(1024)

    @task
    def tunnel(self) -> None:
        sock = self.open_tunnel(b"E", 0)
        if sock is None:
            return
        try:
            for _ in range(ROUNDS):
                if not self.echo(sock, "rtt_1k", self.payload):
                    break
        finally:
            sock.close()


class BulkUser(TunnelBase):
    """A large download: `D n`, read all n bytes through the tunnel."""

    weight = 1

    def on_start(self) -> None:
        self.buffer = bytearray(READ_CHUNK)

    @task
    def bulk(self) -> None:
        sock = self.open_tunnel(b"D", BULK_BYTES)
        if sock is None:
            return
        started = time.perf_counter()
        got = 0
        view = memoryview(self.buffer)
        try:
            while got < BULK_BYTES:
                k = sock.recv_into(view[: min(READ_CHUNK, BULK_BYTES - got)])
                if not k:
                    raise TunnelError(f"short read: {got} of {BULK_BYTES} bytes, then EOF")
                got += k
        except (OSError, TunnelError) as exc:
            self.fire("bulk", started, got, exc)
        else:
            self.fire("bulk", started, got, None)
        finally:
            sock.close()


class ChurnUser(TunnelBase):
    """Short-lived connections: open, one 64-byte echo, close."""

    weight = 4

    def on_start(self) -> None:
        self.payload = os.urandom(64)

    @task
    def churn(self) -> None:
        sock = self.open_tunnel(b"E", 0)
        if sock is None:
            return
        try:
            self.echo(sock, "rtt_64", self.payload)
        finally:
            sock.close()


def entry_summary(entry) -> dict:
    """One stats entry as plain numbers (times in ms, rates per second of the run)."""
    seconds = entry.last_request_timestamp - entry.start_time if entry.num_requests else 0.0
    return {
        "requests": entry.num_requests,
        "failures": entry.num_failures,
        "p50_ms": entry.get_response_time_percentile(0.5),
        "p95_ms": entry.get_response_time_percentile(0.95),
        "p99_ms": entry.get_response_time_percentile(0.99),
        "avg_ms": round(entry.avg_response_time, 2),
        "max_ms": round(entry.max_response_time, 2),
        "bytes": entry.total_content_length,
        "rps": round(entry.num_requests / seconds, 1) if seconds > 0 else 0.0,
    }


RUN_STARTED = [time.monotonic()]


@events.test_start.add_listener
def mark_start(environment, **_kwargs) -> None:
    RUN_STARTED[0] = time.monotonic()


@events.test_stop.add_listener
def report(environment, **_kwargs) -> None:
    """Final numbers, after the last user stopped (Locust's CSV is rewritten only once a
    second, so it can miss the last moments): printed, and written as JSON to
    $FASTRELAY_LOADTEST_SUMMARY when that is set (loadtest/run.py reads it)."""
    if isinstance(environment.runner, WorkerRunner):
        return  # with --processes/--worker the master has the totals
    stats = environment.stats
    duration = time.monotonic() - RUN_STARTED[0]
    summary: dict = {name: entry_summary(e) for (name, _method), e in sorted(stats.entries.items())}
    summary["Aggregated"] = entry_summary(stats.total)
    bulk = stats.entries.get(("bulk", "TUNNEL"))
    seconds = bulk.total_response_time / 1000.0 if bulk is not None else 0.0
    if bulk is not None and seconds > 0:
        summary["bulk"]["MBps_per_transfer"] = round(bulk.total_content_length / seconds / 1e6, 1)
        summary["bulk"]["MBps_aggregate"] = round(bulk.total_content_length / duration / 1e6, 1)
    summary["errors"] = [
        {"name": e.name, "error": str(e.error), "occurrences": e.occurrences}
        for e in stats.errors.values()
    ]
    summary["duration_s"] = round(duration, 2)
    path = os.environ.get("FASTRELAY_LOADTEST_SUMMARY")
    if path:
        with open(path, "w") as f:
            json.dump(summary, f, indent=2)
    if "MBps_aggregate" in summary.get("bulk", {}):
        print(
            f"bulk: {bulk.num_requests} transfers, {bulk.total_content_length / 1e6:.1f} MB, "
            f"{summary['bulk']['MBps_per_transfer']} MB/s per transfer on average, "
            f"{summary['bulk']['MBps_aggregate']} MB/s aggregate over {duration:.1f} s",
            flush=True,
        )
