"""One failure, one answer, on every route (issue 10, item 9).

The failure table (fastrelay/protocol/status.py) says what the browser gets for
each way a request can fail. This walks the table: every failure that both
routes can meet is provoked end to end, through the relay and agent (a listed
host) and directly (an unlisted one), and both must give the table's status
with its reason word in the body. Failures only the relay route meets
(`denied`, and the relay's own refusals, covered in test_open_failures.py and
test_isolation.py) get the same check on that route.

`unreachable` is the one failure not provoked here: loopback never answers
EHOSTUNREACH. Its mapping is checked in tests/unit/test_status.py.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import DENIED, LISTED, UNLISTED, Chain
from helpers import split_address

from fastrelay.protocol.status import Failure

DIAL_TIMEOUT = 1.0
RESPONSE_TIMEOUT = 1.0
LONG_LABEL = "x" * 64  # over the 63 characters a DNS label may have
ROUTES = [pytest.param(LISTED, id="relay"), pytest.param(UNLISTED, id="direct")]


class Server:
    """A TCP server on `host` that reads each connection and answers `reply`
    (None: never answers), until closed."""

    def __init__(self, host: str, reply: bytes | None) -> None:
        self.reply = reply
        self.sock = socket.create_server((host, 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stopping = threading.Event()
        self.conns: list[socket.socket] = []
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
            self.conns.append(conn)
            with contextlib.suppress(OSError):
                conn.settimeout(10)
                conn.recv(65536)
                if self.reply is not None:
                    conn.sendall(self.reply)
                    conn.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.sock.close()
        for conn in self.conns:
            conn.close()


class Blackhole:
    """A listener whose accept queue is full, so a new connect is never
    answered (its SYN is dropped): the dial times out."""

    def __init__(self, host: str) -> None:
        self.sock = socket.socket()
        self.sock.bind((host, 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.filler: list[socket.socket] = []
        for _ in range(2):  # backlog 0 still queues one; fill it
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect((host, self.port))
            self.filler.append(filler)

    def close(self) -> None:
        for sock in [*self.filler, self.sock]:
            sock.close()


@contextlib.contextmanager
def serving(host: str, reply: bytes | None) -> Iterator[int]:
    server = Server(host, reply)
    try:
        yield server.port
    finally:
        server.close()


@contextlib.contextmanager
def blackhole(host: str) -> Iterator[int]:
    hole = Blackhole(host)
    try:
        yield hole.port
    finally:
        hole.close()


@contextlib.contextmanager
def closed_port(host: str) -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port = sock.getsockname()[1]
    yield port


@pytest.fixture(scope="module")
def table_chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    rules = tmp_path_factory.mktemp("table-rules") / "rules.txt"
    rules.write_text(f"{LISTED}/32\n{DENIED}/32\n.listed.test\n")
    chain = Chain(tmp_path_factory.mktemp("table-logs"))
    try:
        chain.start_relay("--connect-timeout", "5")
        chain.start_agent(
            "--allow",
            "127.0.0.0/8",
            "--deny",
            f"{DENIED}/32",
            "--dial-timeout",
            str(DIAL_TIMEOUT),
        )
        chain.start_client(
            Path(rules),
            "--dial-timeout",
            str(DIAL_TIMEOUT),
            "--response-timeout",
            str(RESPONSE_TIMEOUT),
        )
        yield chain
    finally:
        chain.stop()


def ask(chain: Chain, request: bytes) -> tuple[int, bytes]:
    """Send one request to client_a; its status and body."""
    out = b""
    with socket.create_connection(split_address(chain.clients[0].ready["listen"]), 20) as sock:
        sock.sendall(request)
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                out += chunk
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 "), out[:200]
    return int(head.split()[1]), body


def connect(host: str, port: int) -> bytes:
    return f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()


def get(host: str, port: int) -> bytes:
    return f"GET http://{host}:{port}/ HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()


def bad_chunked_post(host: str, port: int) -> bytes:
    return (
        f"POST http://{host}:{port}/ HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
        "fffffffffffffffffffffffffffffff\r\n"
    ).encode()


def name_for(ip: str) -> str:
    """A host name that cannot be encoded, listed (relay) or not (direct)."""
    return f"{LONG_LABEL}.listed.test" if ip == LISTED else f"{LONG_LABEL}.unlisted.test"


Provoke = Callable[[Chain, str], tuple[int, bytes]]


def _bad_request(chain: Chain, ip: str) -> tuple[int, bytes]:
    with serving(ip, None) as port:
        return ask(chain, bad_chunked_post(ip, port))


def _dns(chain: Chain, ip: str) -> tuple[int, bytes]:
    return ask(chain, connect(name_for(ip), 443))


def _refused(chain: Chain, ip: str) -> tuple[int, bytes]:
    with closed_port(ip) as port:
        return ask(chain, connect(ip, port))


def _dial_timeout(chain: Chain, ip: str) -> tuple[int, bytes]:
    with blackhole(ip) as port:
        return ask(chain, connect(ip, port))


def _bad_response(chain: Chain, ip: str) -> tuple[int, bytes]:
    with serving(ip, b"NOT HTTP AT ALL\r\n\r\n") as port:
        return ask(chain, get(ip, port))


def _response_timeout(chain: Chain, ip: str) -> tuple[int, bytes]:
    with serving(ip, None) as port:
        return ask(chain, get(ip, port))


BOTH_ROUTES: dict[Failure, Provoke] = {
    Failure.BAD_REQUEST: _bad_request,
    Failure.DNS: _dns,
    Failure.REFUSED: _refused,
    Failure.DIAL_TIMEOUT: _dial_timeout,
    Failure.BAD_RESPONSE: _bad_response,
    Failure.RESPONSE_TIMEOUT: _response_timeout,
}


@pytest.mark.parametrize("ip", ROUTES)
@pytest.mark.parametrize("failure", list(BOTH_ROUTES), ids=lambda f: f.reason)
def test_the_same_failure_gets_the_same_answer_on_both_routes(
    table_chain: Chain, failure: Failure, ip: str
) -> None:
    status, body = BOTH_ROUTES[failure](table_chain, ip)
    assert status == failure.status, body
    assert body.endswith(f"({failure.reason})\n".encode()), body


def test_a_denied_target_gets_403_with_its_reason(table_chain: Chain) -> None:
    with serving(DENIED, b"HTTP/1.1 200 OK\r\n\r\n") as port:
        status, body = ask(table_chain, connect(DENIED, port))
    assert status == Failure.DENIED.status and body.endswith(b"(denied)\n"), body


def test_client_a_still_serves_after_every_failure(table_chain: Chain) -> None:
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    for ip in (LISTED, UNLISTED):
        with serving(ip, reply) as port:
            status, body = ask(table_chain, get(ip, port))
        assert (status, body) == (200, b"ok")
