"""The test target: real HTTPS, HTTP and TCP echo servers on loopback.

Run as its own process by the tests:

    python tests/support/target.py --cert C --key K --bind 127.0.0.2 --bind 127.0.0.3

For each --bind address it listens on three ephemeral ports and prints one
JSON line on stdout: {"event": "ready", "servers": {ADDR: {"https": P,
"http": P, "echo": P}}}.

HTTP(S) endpoints:
  GET  /hello           a small HTML page (for the browser test)
  GET  /bytes/N?seed=S  N deterministic bytes (see `pattern_bytes`)
  POST /sha256          the body's sha256 and length as JSON (Content-Length or chunked)
  GET  /slow/N          N bytes, sent slowly (1 KiB every 10 ms) for mid-transfer kills
Echo: reads until the client half-closes, then answers
  b"got <n> bytes sha256=<hex>\\n" and closes (the half-close test).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import socket
import socketserver
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BLOCK = 1 << 20


def pattern_block(seed: int) -> bytes:
    """1 MiB of pseudo-random bytes that depend on `seed` only."""
    out = bytearray()
    counter = 0
    while len(out) < BLOCK:
        out += hashlib.sha512(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:BLOCK])


def pattern_bytes(n: int, seed: int = 0) -> bytes:
    """The exact bytes /bytes/N?seed=S serves (tests recompute the sha256)."""
    block = pattern_block(seed)
    full, rest = divmod(n, BLOCK)
    return block * full + block[:rest]


def pattern_sha256(n: int, seed: int = 0) -> str:
    block = pattern_block(seed)
    digest = hashlib.sha256()
    full, rest = divmod(n, BLOCK)
    for _ in range(full):
        digest.update(block)
    digest.update(block[:rest])
    return digest.hexdigest()


HELLO_PAGE = (
    b"<!doctype html><html><head><title>fastrelay target</title></head>"
    b"<body><h1 id='greeting'>hello from the target at {addr}</h1></body></html>"
)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        if path == "/hello":
            body = HELLO_PAGE.replace(b"{addr}", self.server.server_address[0].encode())
            self._send(200, body, "text/html; charset=utf-8")
        elif path.startswith("/bytes/"):
            n = int(path.split("/")[2])
            seed = int(query.split("=")[1]) if query.startswith("seed=") else 0
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(n))
            self.end_headers()
            block = pattern_block(seed)
            full, rest = divmod(n, BLOCK)
            for _ in range(full):
                self.wfile.write(block)
            self.wfile.write(block[:rest])
        elif path.startswith("/slow/"):
            n = int(path.split("/")[2])
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.end_headers()
            sent = 0
            while sent < n:
                chunk = min(1024, n - sent)
                self.wfile.write(b"x" * chunk)
                self.wfile.flush()
                sent += chunk
                time.sleep(0.01)
        else:
            self._send(404, b"not found\n", "text/plain")

    def do_POST(self) -> None:
        digest = hashlib.sha256()
        total = 0
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                remaining = size
                while remaining:
                    data = self.rfile.read(min(remaining, BLOCK))
                    digest.update(data)
                    total += len(data)
                    remaining -= len(data)
                self.rfile.readline()
        else:
            remaining = int(self.headers.get("Content-Length", "0"))
            while remaining:
                data = self.rfile.read(min(remaining, BLOCK))
                if not data:
                    break
                digest.update(data)
                total += len(data)
                remaining -= len(data)
        body = json.dumps({"sha256": digest.hexdigest(), "length": total}).encode()
        self._send(200, body, "application/json")

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class TLSServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512

    def __init__(self, address: tuple[str, int], context: ssl.SSLContext) -> None:
        super().__init__(address, Handler)
        self.context = context

    def get_request(self) -> tuple[socket.socket, object]:
        sock, addr = super().get_request()
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr


class PlainServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512


class EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        digest = hashlib.sha256()
        total = 0
        while True:
            data = self.request.recv(65536)
            if not data:
                break
            digest.update(data)
            total += len(data)
        self.request.sendall(f"got {total} bytes sha256={digest.hexdigest()}\n".encode())
        self.request.close()


class EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512  # the default 5 drops SYNs under 20 parallel tunnels


def main() -> int:
    parser = argparse.ArgumentParser(allow_abbrev=False)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--bind", action="append", required=True)
    args = parser.parse_args()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.cert, args.key)
    servers: dict[str, dict[str, int]] = {}
    for addr in args.bind:
        https = TLSServer((addr, 0), context)
        http = PlainServer((addr, 0), Handler)
        echo = EchoServer((addr, 0), EchoHandler)
        for srv in (https, http, echo):
            threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers[addr] = {
            "https": https.server_address[1],
            "http": http.server_address[1],
            "echo": echo.server_address[1],
        }
    sys.stdout.write(json.dumps({"event": "ready", "servers": servers}) + "\n")
    sys.stdout.flush()
    with contextlib.suppress(KeyboardInterrupt):
        sys.stdin.read()  # the test closes our stdin (or kills us) to stop
    return 0


if __name__ == "__main__":
    sys.exit(main())
