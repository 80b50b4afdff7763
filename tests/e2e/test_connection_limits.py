"""Issue 10, item 5: timeouts and caps where browsers and scrapers connect.

- client_a gives each browser connection `--header-timeout` to send a complete
  request head: a slowloris (bytes of a head trickling) and a silent
  connection both get `408 Request Timeout` and are closed.
- client_a holds at most `--max-connections` browser connections: one more
  gets `503` with the reason and is closed, and the ones it holds still work.
- Every admin port closes a connection that sends no request (408, after its
  5 s read timeout) and refuses connections over its cap of 64 with 503, and
  `/healthz` answers again once the silent ones are gone.

Real processes (a relay and two client_a; no agent is needed, the requests go
direct), raw sockets from the test; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import UNLISTED, Chain, Target
from helpers import curl_via, open_connect_via, split_address
from support.procs import http_get, metric, wait_until

from fastrelay.io import admin as admin_module

HEAD_TIMEOUT = 1.0  # client_a's --header-timeout in these tests
CAP = 5  # the capped client_a's --max-connections
WAIT = 30.0  # upper bound for any one outcome to show up


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory, rules_file: Path) -> Iterator[Chain]:
    """A relay and two client_a: clients[0] with a short --header-timeout,
    clients[1] with --max-connections 5 (and the default header timeout)."""
    chain = Chain(tmp_path_factory.mktemp("chain-logs"))
    try:
        chain.start_relay()
        chain.start_client(rules_file, "--header-timeout", str(HEAD_TIMEOUT))
        chain.start_client(rules_file, "--max-connections", str(CAP))
        yield chain
    finally:
        chain.stop()


def connect(address: str) -> socket.socket:
    return socket.create_connection(split_address(address), timeout=WAIT)


def read_to_eof(sock: socket.socket, limit: int = 1 << 20, reset_ok: bool = True) -> bytes:
    """Everything the peer sends until it closes (a reset after data counts as
    the end, unless not `reset_ok`: then only a clean EOF does)."""
    out = b""
    deadline = time.monotonic() + WAIT
    while len(out) < limit and time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            assert reset_ok, f"a reset after {out[:200]!r}, not a clean close"
            assert out, "reset before any answer"
            return out
        if not chunk:
            return out
        out += chunk
    raise AssertionError(f"no EOF within {WAIT} s; got {out[:200]!r}")


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer.split(b" ", 2)[1])


def healthy(admin: str) -> bool:
    try:
        return http_get(f"http://{admin}/healthz")[0] == 200
    except OSError:
        return False


def dropped(chain: Chain, index: int, reason: str) -> float:
    admin = chain.clients[index].ready["admin"]
    return metric(admin, "fastrelay_client_connections_dropped_total", reason=reason)


def test_slowloris_head_gets_408_and_close(limited: Chain, target: Target) -> None:
    before = dropped(limited, 0, "header_timeout")
    port = target.port(UNLISTED, "http")
    head = f"GET http://{UNLISTED}:{port}/hello HTTP/1.1\r\nHost: {UNLISTED}:{port}\r\n"
    trickle = b"X-Slow: " + b"a" * 10_000  # never finishes: no blank line
    with connect(limited.clients[0].ready["listen"]) as sock:
        sock.sendall(head.encode())
        sock.settimeout(0.1)
        answer = b""
        sent = 0
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            try:
                sock.send(trickle[sent : sent + 1])  # one byte at a time
                sent += 1
            except (BrokenPipeError, ConnectionResetError):
                break
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                break
            if not chunk:
                break
            answer += chunk
        else:
            raise AssertionError(f"still open after {WAIT} s of trickling")
    assert sent > 0
    assert status_of(answer) == 408, answer
    assert b"Request Timeout" in answer.split(b"\r\n", 1)[0]
    assert b"--header-timeout" in answer
    assert dropped(limited, 0, "header_timeout") == before + 1


def test_silent_connection_gets_408_and_close(limited: Chain) -> None:
    before = dropped(limited, 0, "header_timeout")
    with connect(limited.clients[0].ready["listen"]) as sock:
        answer = read_to_eof(sock)
    assert status_of(answer) == 408, answer
    assert dropped(limited, 0, "header_timeout") == before + 1


def test_open_tunnel_outlives_the_header_timeout(limited: Chain, target: Target) -> None:
    """The timer stops at a complete head: a CONNECT tunnel idle for longer
    than --header-timeout still carries a TLS request afterwards."""
    port = target.port(UNLISTED, "https")
    with open_connect_via(limited.clients[0], UNLISTED, port) as raw:
        time.sleep(HEAD_TIMEOUT * 2)  # idle past the header timeout
        context = ssl.create_default_context(cafile=str(target.ca_pem))
        with context.wrap_socket(raw, server_hostname=UNLISTED) as tls:
            tls.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = read_to_eof(tls)
    assert status_of(answer) == 200, answer[:200]


def test_over_max_connections_gets_503_and_the_others_still_work(
    limited: Chain, target: Target
) -> None:
    client = limited.clients[1]
    listen = client.ready["listen"]
    before = dropped(limited, 1, "max_connections")
    port = target.port(UNLISTED, "http")
    request = f"GET http://{UNLISTED}:{port}/hello HTTP/1.1\r\nHost: {UNLISTED}:{port}\r\n\r\n"
    with contextlib.ExitStack() as stack:
        held = [stack.enter_context(connect(listen)) for _ in range(CAP)]
        # One more, silent: refused at once, not left hanging.
        with connect(listen) as extra:
            answer = read_to_eof(extra)
        assert status_of(answer) == 503, answer
        assert b"--max-connections" in answer
        # One more that sends its request first, as a browser does.
        with connect(listen) as extra:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                extra.sendall(request.encode())
            answer = read_to_eof(extra)
        assert status_of(answer) == 503, answer
        # The held ones are served.
        for sock in held:
            sock.sendall(request.encode())
        for sock in held:
            answer = read_to_eof(sock)
            assert status_of(answer) == 200, answer[:200]
            assert b"hello" in answer.lower()
    assert dropped(limited, 1, "max_connections") == before + 2

    # The slots come back once those connections are gone.
    def served() -> bool:
        result = curl_via(f"http://{listen}", target, target.http(UNLISTED, "/hello"))
        return result.returncode == 0 and b"hello" in result.stdout.lower()

    wait_until(served, timeout=WAIT, interval=0.2, what="a request served after the cap")


@pytest.mark.parametrize("more", [0, 1 << 20], ids=["request", "request-and-1MiB-body"])
def test_refused_browser_that_sent_its_request_gets_the_503_and_a_clean_close(
    limited: Chain, target: Target, more: int
) -> None:
    """Over the cap, a browser that sends its request (and a body far larger
    than the socket buffers) before reading gets the whole 503 and then a FIN:
    client_a drops what it sends until its EOF rather than closing on unread
    bytes, which would answer with an RST."""
    listen = limited.clients[1].ready["listen"]
    port = target.port(UNLISTED, "http")
    head = (
        f"POST http://{UNLISTED}:{port}/hello HTTP/1.1\r\nHost: {UNLISTED}:{port}\r\n"
        f"Content-Length: {more}\r\n\r\n"
    )
    with contextlib.ExitStack() as stack:
        for _ in range(CAP):
            stack.enter_context(connect(listen))
        with connect(listen) as extra:
            extra.sendall(head.encode() + bytes(more))
            extra.shutdown(socket.SHUT_WR)  # the browser is done: client_a sees its EOF
            answer = read_to_eof(extra, reset_ok=False)
    assert status_of(answer) == 503, answer
    assert b"--max-connections" in answer


def test_admin_port_times_out_silent_connections_and_caps_the_rest(limited: Chain) -> None:
    cap = admin_module.MAX_CONNECTIONS
    client_admin = limited.clients[0].ready["admin"]
    assert limited.relay is not None
    relay_admin = limited.relay.ready["admin"]
    assert http_get(f"http://{client_admin}/healthz")[0] == 200
    with contextlib.ExitStack() as stack:
        held = [stack.enter_context(connect(client_admin)) for _ in range(cap)]
        relay_silent = stack.enter_context(connect(relay_admin))
        # Over the cap: refused with 503 at once, whatever it asks for.
        with connect(client_admin) as extra:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = read_to_eof(extra)
        assert status_of(answer) == 503, answer
        assert b"busy" in answer
        # The silent ones are answered 408 and closed (the relay's admin port too).
        for sock in [*held, relay_silent]:
            answer = read_to_eof(sock)
            assert status_of(answer) == 408, answer
    # With them gone, /healthz answers again.
    wait_until(
        lambda: healthy(client_admin),
        timeout=WAIT,
        interval=0.1,
        what="/healthz after the silent connections closed",
    )
    assert http_get(f"http://{relay_admin}/healthz")[0] == 200
