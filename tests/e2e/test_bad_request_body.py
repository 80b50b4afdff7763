"""Issue 10, item 6, on both routes (relay and direct), real processes: a
malformed chunked request body (an overflowing chunk size) gets a 400 with
the reason, or, once the response has started, an aborted connection; and
client_a logs no traceback.

The targets here are raw sockets in the test process, on the listed and the
unlisted loopback address, so each one does exactly one thing.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest
from conftest import LISTED, UNLISTED, Chain
from helpers import SOCKET_TIMEOUT

ROUTES = [pytest.param(LISTED, id="relay"), pytest.param(UNLISTED, id="direct")]
GREETING = b"x" * 5000  # what the target sends before it ends


def _serve(server: socket.socket, handle) -> None:  # type: ignore[no-untyped-def]
    while True:
        try:
            conn, _ = server.accept()
        except OSError:
            return  # the listener was closed
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


@contextlib.contextmanager
def raw_target(host: str, handle) -> Iterator[int]:  # type: ignore[no-untyped-def]
    """A TCP listener on host that hands every connection to `handle`."""
    server = socket.create_server((host, 0))
    thread = threading.Thread(target=_serve, args=(server, handle), daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        with contextlib.suppress(OSError):
            server.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() (Linux)
        server.close()
        thread.join(SOCKET_TIMEOUT)


def answer_early(conn: socket.socket) -> None:
    """Answer as soon as the request head is in: part of a 200, then wait."""
    with conn:
        conn.settimeout(SOCKET_TIMEOUT)
        got = b""
        while b"\r\n\r\n" not in got:
            chunk = conn.recv(4096)
            if not chunk:
                return
            got += chunk
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + GREETING)
        with contextlib.suppress(OSError):
            while conn.recv(65536):
                pass


def swallow(conn: socket.socket) -> None:
    """Read until EOF and never answer."""
    with conn:
        conn.settimeout(SOCKET_TIMEOUT)
        with contextlib.suppress(OSError):
            while conn.recv(65536):
                pass


def read_until_end(sock: socket.socket) -> tuple[bytes, str]:
    """Everything the browser socket gets, and how it ended: "eof" or "reset"."""
    out = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return out, "reset"
        if not chunk:
            return out, "eof"
        out += chunk


def client_log(chain: Chain) -> str:
    return chain.clients[0].log_path.read_text(errors="replace")


def assert_no_traceback(chain: Chain) -> None:
    log = client_log(chain)
    for bad in ("Traceback", "internal error on stream", "Fatal error"):
        assert bad not in log, f"{bad!r} in client_a's log:\n{log[-3000:]}"


# --- item 6: a malformed chunked body is a 400 with the reason ---


def bad_chunked_post(host: str, port: int, body_parts: list[bytes]) -> bytes:
    return (
        f"POST http://{host}:{port}/post HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode() + b"".join(body_parts)


@pytest.mark.parametrize("host", ROUTES)
@pytest.mark.parametrize(
    "body",
    [
        pytest.param([b"ffffffffffffffffffff\r\n"], id="overflow"),
        pytest.param([b"5\r\nhello\r\n", b"ffffffffffffffffffff\r\n"], id="overflow-after-chunk"),
    ],
)
def test_overflowing_chunk_size_gets_400(chain: Chain, host: str, body: list[bytes]) -> None:
    proxy_host, _, proxy_port = chain.clients[0].ready["listen"].rpartition(":")
    with (
        raw_target(host, swallow) as port,
        socket.create_connection((proxy_host, int(proxy_port)), timeout=SOCKET_TIMEOUT) as sock,
    ):
        sock.sendall(bad_chunked_post(host, port, body))
        answer, _ = read_until_end(sock)
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 400 "), answer[:300]
    assert b"malformed request body" in rest and b"overflow" in rest.lower(), answer[:300]
    assert_no_traceback(chain)


@pytest.mark.parametrize("host", ROUTES)
def test_malformed_body_after_response_started_ends_the_exchange(chain: Chain, host: str) -> None:
    """Part of the response already reached the browser: no 400 can follow it,
    so the exchange is cut short and the rest of the response never comes."""
    proxy_host, _, proxy_port = chain.clients[0].ready["listen"].rpartition(":")
    with (
        raw_target(host, answer_early) as port,
        socket.create_connection((proxy_host, int(proxy_port)), timeout=SOCKET_TIMEOUT) as sock,
    ):
        sock.sendall(bad_chunked_post(host, port, [b"5\r\nhello\r\n"]))
        answer = b""
        while not answer.endswith(GREETING):
            chunk = sock.recv(65536)
            assert chunk, f"EOF before the response body: {answer[:300]!r}"
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
        sock.sendall(b"ffffffffffffffffffff\r\n")
        rest, _end = read_until_end(sock)
    body = answer.partition(b"\r\n\r\n")[2] + rest
    assert len(body) < 100_000, "the whole response arrived despite the malformed body"
    assert_no_traceback(chain)
