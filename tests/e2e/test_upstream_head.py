"""Upstream response heads with empty lines (or junk) before the status line.

Issue 9 item 8: an upstream whose response began with a blank line
(`\\r\\n\\r\\nHTTP/1.1 200 OK ...`) sent client_a's head reader into an endless
loop: 100% CPU and every tunnel of that client_a frozen. client_a now skips
empty lines before the status line, within the head size limit, and answers
502 for anything else before it.

The head is parsed in client_a on both routes (the agent only pipes the
bytes), so each case runs direct (127.0.0.1 is not in the rules file) and
through relay + agent (LISTED is), and then checks that the same client_a still
serves another request.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest
from conftest import LISTED, UNLISTED, Chain, Target
from helpers import curl, response_head
from support.procs import metric

DIRECT_HOST = "127.0.0.1"
BODY = b"hello after a blank line\n"
MAX_TIME = 10.0  # the old code never answered: curl gives up instead of hanging the run

ROUTES = [
    pytest.param(DIRECT_HOST, UNLISTED, "direct", id="direct"),
    pytest.param(LISTED, LISTED, "relay", id="relay"),
]


class RawUpstream:
    """An HTTP server on a loopback address that answers every request with
    `reply`, byte for byte, then closes. Records the request heads it got."""

    def __init__(self, host: str, reply: bytes) -> None:
        self.reply = reply
        self.heads: list[bytes] = []
        self.sock = socket.create_server((host, 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                conn.settimeout(MAX_TIME)
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    head += chunk
                self.heads.append(head)
                conn.sendall(self.reply)
                conn.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.sock.close()


@contextlib.contextmanager
def raw_upstream(host: str, reply: bytes) -> Iterator[RawUpstream]:
    server = RawUpstream(host, reply)
    try:
        yield server
    finally:
        server.close()


def requests_counted(chain: Chain, route: str) -> float:
    admin = chain.clients[0].ready["admin"]
    return metric(admin, "fastrelay_client_requests_total", route=route)


def still_serves(chain: Chain, target: Target, host: str) -> None:
    """The same client_a answers another plain-HTTP request on the same route."""
    result = curl(chain, target, target.http(host, "/hello"), "-i", max_time=MAX_TIME)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert result.stdout.startswith(b"HTTP/1.1 200 "), result.stdout[:200]
    assert f"hello from the target at {host}".encode() in result.stdout


@pytest.mark.timeout(90)
@pytest.mark.parametrize("lead", [b"\r\n\r\n", b"\n\r\n\n"], ids=["crlf-crlf", "mixed"])
@pytest.mark.parametrize(("upstream_host", "next_host", "route"), ROUTES)
def test_response_after_empty_lines_arrives(
    chain: Chain, target: Target, upstream_host: str, next_host: str, route: str, lead: bytes
) -> None:
    reply = (
        lead + b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
        b"Content-Length: %d\r\nConnection: keep-alive\r\n\r\n" % len(BODY) + BODY
    )
    before = requests_counted(chain, route)
    with raw_upstream(upstream_host, reply) as upstream:
        url = f"http://{upstream_host}:{upstream.port}/blank"
        result = curl(chain, target, url, "-i", max_time=MAX_TIME)
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        head, _, body = result.stdout.partition(b"\r\n\r\n")
        status, headers = response_head(head + b"\r\n\r\n")
        assert status == 200
        assert headers.get("connection", "").lower() == "close", headers
        assert "keep-alive" not in headers
        assert body == BODY
        assert len(upstream.heads) == 1
        assert upstream.heads[0].startswith(b"GET /blank HTTP/1.1\r\n"), upstream.heads[0]
    assert requests_counted(chain, route) >= before + 1, f"the request did not go {route}"
    still_serves(chain, target, next_host)


BAD_LEADS = [
    pytest.param(b"\r\rHTTP/1.1 200 OK\r\n\r\n", "bare CR at byte 0", id="bare-cr"),
    # Empty lines count towards the 64 KiB head limit.
    pytest.param(b"\r\n" * 40_000 + b"HTTP/1.1 200 OK\r\n\r\n", "exceeds 65536", id="flood"),
]


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("reply", "words"), BAD_LEADS)
@pytest.mark.parametrize(
    ("upstream_host", "next_host", "route"),
    [
        ROUTES[0],
        pytest.param(*ROUTES[1].values, id="relay"),
    ],
)
def test_junk_before_the_status_line_is_a_clean_502(
    chain: Chain,
    target: Target,
    upstream_host: str,
    next_host: str,
    route: str,
    reply: bytes,
    words: str,
) -> None:
    with raw_upstream(upstream_host, reply) as upstream:
        url = f"http://{upstream_host}:{upstream.port}/junk"
        result = curl(chain, target, url, "-i", max_time=MAX_TIME)
    # Whatever the answer, it comes at once and client_a keeps working.
    assert "timed out" not in result.stderr.decode(errors="replace")
    still_serves(chain, target, next_host)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    head, _, body = result.stdout.partition(b"\r\n\r\n")
    status, _ = response_head(head + b"\r\n\r\n")
    assert status == 502
    assert b"upstream response head" in body, body
    assert words.encode() in body, body
