"""Shared helpers for the end-to-end tests: curl as the real client, raw
CONNECT sockets, and small metric readers. Every wait here is bounded."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import subprocess
import time
from pathlib import Path

from conftest import Chain, Proc, Target, curl_path
from support.procs import metric, scrape
from support.target import BLOCK

SOCKET_TIMEOUT = 30.0


def curl(
    chain: Chain, target: Target, url: str, *args: str, max_time: float = 30
) -> subprocess.CompletedProcess:
    """Run curl through the chain's (first) client_a; never raises on failure."""
    return curl_via(chain.proxy, target, url, *args, max_time=max_time)


def curl_via(
    proxy: str, target: Target, url: str, *args: str, max_time: float = 30
) -> subprocess.CompletedProcess:
    """Run curl through the proxy at `proxy` (`-x`), trusting the test CA."""
    return subprocess.run(
        [
            curl_path(),
            "-sS",
            "--max-time",
            str(max_time),
            "--cacert",
            str(target.ca_pem),
            "-x",
            proxy,
            *args,
            url,
        ],
        capture_output=True,
        timeout=max_time + 30,
    )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(BLOCK):
            digest.update(chunk)
    return digest.hexdigest()


def relay_bytes(chain: Chain, direction: str = "downstream") -> float:
    assert chain.relay is not None
    return metric(chain.relay.ready["admin"], "fastrelay_stream_bytes_total", direction=direction)


def streams_active(proc: Proc) -> float:
    return metric(proc.ready["admin"], "fastrelay_streams_active")


def all_streams_idle(chain: Chain) -> bool:
    assert chain.relay is not None
    procs = [chain.relay, *chain.agents, *chain.clients]
    return all(streams_active(proc) == 0 for proc in procs)


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def response_head(raw: bytes) -> tuple[int, dict[str, str]]:
    """Status and lower-cased headers of the last response head in `curl -D -` output."""
    heads = [h for h in raw.split(b"\r\n\r\n") if h.startswith(b"HTTP/")]
    assert heads, raw[:500]
    lines = heads[-1].decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


def open_connect(chain: Chain, host: str, port: int) -> socket.socket:
    """A raw socket to the chain's client_a with a CONNECT tunnel to host:port."""
    return open_connect_via(chain.clients[0], host, port)


def open_connect_via(client: Proc, host: str, port: int) -> socket.socket:
    """A raw socket to `client` (a client_a) with a CONNECT tunnel to host:port
    established; AssertionError, with client_a's reason, if it is refused."""
    proxy_host, _, proxy_port = client.ready["listen"].rpartition(":")
    sock = socket.create_connection((proxy_host, int(proxy_port)), timeout=SOCKET_TIMEOUT)
    try:
        sock.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(4096)
            assert chunk, f"client_a closed before the CONNECT answer: {answer!r}"
            answer += chunk
            assert len(answer) < 65536, answer[:200]
        head, _, body = answer.partition(b"\r\n\r\n")
        status_line = head.split(b"\r\n", 1)[0]
        # client_a's error pages are one short line: the reason
        assert status_line.split(maxsplit=2)[1] == b"200", (
            f"{status_line.decode()}: {body.decode(errors='replace').strip()}"
        )
        assert not body, "tunnel bytes arrived before any were sent"
    except BaseException:
        sock.close()
        raise
    return sock


def recv_all(sock: socket.socket, limit: int = 1 << 20) -> bytes:
    """Read until EOF (bounded by the socket timeout and `limit` bytes)."""
    out = b""
    while len(out) <= limit:
        chunk = sock.recv(65536)
        if not chunk:
            return out
        out += chunk
    raise AssertionError(f"more than {limit} bytes without EOF")


def echo_reply(payload: bytes) -> bytes:
    return f"got {len(payload)} bytes sha256={hashlib.sha256(payload).hexdigest()}\n".encode()


def half_close_exchange(sock: socket.socket, payload: bytes) -> bytes:
    """Send `payload`, half-close, then read the echo's reply up to EOF."""
    sock.sendall(payload)
    sock.shutdown(socket.SHUT_WR)
    return recv_all(sock)


# --- failure paths, raw sockets, process exits (test_open_failures, test_resilience, ...) ---


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (bound once, then released)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def proxy_status(chain: Chain, target: Target, url: str, max_time: float = 15) -> int:
    """The status client_a answered: the CONNECT status for https URLs, else the HTTP status."""
    out = ["-o", "/dev/null", "-w", "%{http_code} %{http_connect}"]
    result = curl(chain, target, url, *out, max_time=max_time)
    http_code, connect_code = result.stdout.decode().split()
    return int(connect_code if url.startswith("https://") else http_code)


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def raw_exchange(address: str, data: bytes, timeout: float = 10.0) -> bytes:
    """Send `data` (the peer may hang up early) and read whatever it answers until EOF."""
    out = b""
    with socket.create_connection(split_address(address), timeout=timeout) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)  # on failure, the answer may still be in our receive queue
        try:
            while len(out) < 1 << 20:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                out += chunk
        except ConnectionResetError:
            pass
    return out


def ws_upgrade_status(address: str, path: str, token: str | None) -> int:
    """Status of a WebSocket upgrade request sent with curl -i (no WebSocket follows)."""
    headers = [
        "Connection: Upgrade",
        "Upgrade: websocket",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    ]
    if token is not None:
        headers.append(f"Authorization: Bearer {token}")
    argv = [curl_path(), "-sS", "-i", "--max-time", "5"]
    for header in headers:
        argv += ["-H", header]
    result = subprocess.run([*argv, f"http://{address}{path}"], capture_output=True, timeout=30)
    status_line = result.stdout.split(b"\r\n", 1)[0].decode(errors="replace")
    assert status_line.startswith("HTTP/"), (result.stdout[:300], result.stderr)
    return int(status_line.split()[1])


def family_total(admin: str, name: str) -> float:
    """The sum of every labelled sample of one metric (e.g. all kinds of protocol errors)."""
    return sum(value for (sample, _), value in scrape(admin).items() if sample == name)


def wait_exit(proc: Proc, timeout: float) -> tuple[int | None, float]:
    """Wait (bounded) for `proc` to exit by itself; returns (exit status or None, seconds)."""
    started = time.monotonic()
    try:
        proc.popen.wait(timeout)
    except subprocess.TimeoutExpired:
        return None, time.monotonic() - started
    return proc.popen.returncode, time.monotonic() - started
