"""Issue 10, item 7: aborts look like aborts, on both routes (relay and direct).

Inside a CONNECT tunnel nothing frames the length, so a far side that aborts
(the target resets, the agent dies) must reach the browser as an RST, not as
the FIN of a clean end; and everything that arrived before the abort still
reaches the browser first. A clean end stays a FIN, with every byte.

The browser here does not read until the target is done, so at the abort
the bytes sit in client_a's buffers and the kernel's send queue: an RST sent
at once would throw them away.

The targets are raw sockets in the test process, on the listed and the
unlisted loopback address, so each one does exactly one thing.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import os
import queue
import socket
import struct
import termios
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import LISTED, UNLISTED, Chain
from helpers import SOCKET_TIMEOUT

ROUTES = [pytest.param(LISTED, id="relay"), pytest.param(UNLISTED, id="direct")]
PAYLOAD = os.urandom(1 << 20)  # far more than the browser socket holds unread
BROWSER_RCVBUF = 16 * 1024  # set before connecting: no autotuning past it
GO = b"go\n"  # the browser's cue; the target sends only after it
SENT_WAIT = 5.0  # how long a target waits for its bytes to be acked before its RST
FILL_WAIT = 2.0  # a target stops sending once the path has taken nothing for this long

Handler = Callable[[socket.socket], None]


def _serve(server: socket.socket, handle: Handler) -> None:
    while True:
        try:
            conn, _ = server.accept()
        except OSError:
            return  # the listener was closed
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


@contextlib.contextmanager
def raw_target(host: str, handle: Handler, rcvbuf: int = 0) -> Iterator[int]:
    """A TCP listener on host that hands every connection to `handle` (with a
    fixed receive buffer of `rcvbuf` bytes, if given)."""
    server = socket.socket()
    if rcvbuf:
        server.setsockopt(
            socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf
        )  # accepted sockets inherit it
    server.bind((host, 0))
    server.listen()
    thread = threading.Thread(target=_serve, args=(server, handle), daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        with contextlib.suppress(OSError):
            server.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() (Linux)
        server.close()
        thread.join(SOCKET_TIMEOUT)


def open_connect(chain: Chain, host: str, port: int) -> socket.socket:
    """A browser socket with a small receive buffer, CONNECTed to host:port
    through client_a: unread bytes pile up in client_a, not in this socket."""
    proxy_host, _, proxy_port = chain.clients[0].ready["listen"].rpartition(":")
    sock = socket.socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BROWSER_RCVBUF)
        sock.settimeout(SOCKET_TIMEOUT)
        sock.connect((proxy_host, int(proxy_port)))
        sock.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(1)  # byte by byte: nothing of the tunnel is read here
            assert chunk, f"client_a closed before the CONNECT answer: {answer!r}"
            answer += chunk
        assert answer.split(maxsplit=2)[1] == b"200", answer
    except BaseException:
        sock.close()
        raise
    return sock


def _read_cue(conn: socket.socket) -> None:
    conn.settimeout(SOCKET_TIMEOUT)
    got = b""
    while not got.endswith(b"\n"):
        chunk = conn.recv(1)
        if not chunk:
            return
        got += chunk


def _unacked(conn: socket.socket) -> int:
    out = array.array("i", [0])
    fcntl.ioctl(conn.fileno(), termios.TIOCOUTQ, out)
    return out[0]


def _wait_acked(conn: socket.socket) -> int:
    """Wait (bounded) until the peer has acked everything; the bytes it has not."""
    done = threading.Event()
    for _ in range(int(SENT_WAIT / 0.01)):
        left = _unacked(conn)
        if not left:
            return 0
        done.wait(0.01)
    return _unacked(conn)


def _send_what_fits(conn: socket.socket, data: bytes) -> int:
    """Send `data` until the path stops taking it (no byte for FILL_WAIT): the
    browser is not reading, so how much fits depends on every buffer on the
    way, which the kernel sizes (and shrinks under TCP memory pressure)."""
    conn.settimeout(FILL_WAIT)
    view = memoryview(data)
    sent = 0
    with contextlib.suppress(TimeoutError):
        while sent < len(data):
            sent += conn.send(view[sent:])
    return sent


class Target:
    """A target that sends PAYLOAD after the cue, then ends as `how` says. A
    "reset" target sends what the path takes and puts (bytes sent, bytes
    never acked: lost to its own RST) in `done`; a "close" one sends it all."""

    def __init__(self, how: str) -> None:
        self.how = how
        self.done: queue.Queue[tuple[int, int]] = queue.Queue()

    def __call__(self, conn: socket.socket) -> None:
        sent = unacked = 0
        with conn:
            _read_cue(conn)
            if self.how == "reset":
                sent = _send_what_fits(conn, PAYLOAD)
                unacked = _wait_acked(conn)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                conn.sendall(PAYLOAD)
                sent = len(PAYLOAD)
                conn.shutdown(socket.SHUT_WR)
                with contextlib.suppress(OSError):
                    while conn.recv(65536):  # until the browser's EOF
                        pass
        self.done.put((sent, unacked))


def read_until_end(sock: socket.socket) -> tuple[bytes, str]:
    """Everything the browser socket gets, and how it ended: "eof" or "reset"."""
    out = bytearray()
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return bytes(out), "reset"
        if not chunk:
            return bytes(out), "eof"
        out += chunk


def assert_no_traceback(chain: Chain) -> None:
    log = chain.clients[0].log_path.read_text(errors="replace")
    for bad in ("Traceback", "internal error on stream", "Fatal error"):
        assert bad not in log, f"{bad!r} in client_a's log:\n{log[-3000:]}"


@pytest.mark.parametrize("host", ROUTES)
def test_target_reset_reaches_browser_as_reset_after_every_sent_byte(
    chain: Chain, host: str
) -> None:
    target = Target("reset")
    with raw_target(host, target) as port, open_connect(chain, host, port) as sock:
        sock.sendall(GO)
        sent, unacked = target.done.get(timeout=SOCKET_TIMEOUT)  # the target has reset
        received, end = read_until_end(sock)
    # More than the browser socket holds went out: bytes sat in client_a (and the
    # relay and the agent) when the RST came.
    assert sent > 4 * BROWSER_RCVBUF, sent
    assert end == "reset", f"a clean EOF after {len(received)} bytes, not an RST"
    assert received == PAYLOAD[: len(received)], "the bytes arrived altered"
    # Every byte the target got acked before its RST reaches the browser.
    assert len(received) >= sent - unacked, (len(received), sent, unacked)
    assert_no_traceback(chain)


@pytest.mark.parametrize("host", ROUTES)
def test_clean_close_stays_a_clean_eof_with_every_byte(chain: Chain, host: str) -> None:
    target = Target("close")
    with raw_target(host, target) as port, open_connect(chain, host, port) as sock:
        sock.sendall(GO)
        received, end = read_until_end(sock)  # the target's FIN, then ours
        sock.shutdown(socket.SHUT_WR)
        assert target.done.get(timeout=SOCKET_TIMEOUT) == (len(PAYLOAD), 0)
    assert end == "eof"
    assert received == PAYLOAD


@pytest.mark.parametrize("host", ROUTES)
def test_browser_reset_reaches_target_as_reset(chain: Chain, host: str) -> None:
    """The other way round: the browser aborts, so the target's socket is
    reset too (by the agent on the relay route, by client_a on the direct one)."""
    ends: queue.Queue[str] = queue.Queue()

    def hold(conn: socket.socket) -> None:
        with conn:
            _read_cue(conn)
            ends.put("cue")
            try:
                while conn.recv(65536):
                    pass
            except ConnectionResetError:
                ends.put("reset")
                return
            except OSError as exc:
                ends.put(f"error {exc}")
                return
            ends.put("eof")

    with raw_target(host, hold) as port:
        sock = open_connect(chain, host, port)
        sock.sendall(GO)
        assert ends.get(timeout=SOCKET_TIMEOUT) == "cue"
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        assert ends.get(timeout=SOCKET_TIMEOUT) == "reset"
    assert_no_traceback(chain)


def test_killed_agent_reaches_browser_as_reset(make_chain, rules_file: Path) -> None:  # type: ignore[no-untyped-def]
    chain = make_chain()
    chain.start_relay()
    agent = chain.start_agent("--allow", "127.0.0.0/8")
    chain.start_client(rules_file)
    release = threading.Event()

    def send_then_hold(conn: socket.socket) -> None:
        with conn:
            _read_cue(conn)
            conn.sendall(PAYLOAD)
            release.wait(SOCKET_TIMEOUT)

    try:
        with (
            raw_target(LISTED, send_then_hold) as port,
            open_connect(chain, LISTED, port) as sock,
        ):
            sock.sendall(GO)
            received = bytearray()
            while len(received) < len(PAYLOAD):
                chunk = sock.recv(65536)
                assert chunk, "EOF before the payload was through"
                received += chunk
            agent.kill()  # SIGKILL, mid-tunnel
            rest, end = read_until_end(sock)
    finally:
        release.set()
    assert received == PAYLOAD
    assert end == "reset", f"a clean EOF after {len(rest)} more bytes, not an RST"
    assert_no_traceback(chain)


# The reset and the last bytes before it, pending at once. On uvloop a socket
# watched with add_reader (aiofastnet's transports) gets one callback once the
# kernel reports the error, and never another: a reader that stops at a short
# read, as aiofastnet's does, never sees the reset behind it (a probe here:
# 100 kB and an RST pending, read by aiofastnet on uvloop, hung; on uvloop's
# own transports and on the stdlib loop the reset came). On loopback a send
# followed at once by an RST puts both in the receiver's queue before it
# wakes, almost always; several rounds make a miss vanishingly unlikely.
BURST_ROUNDS = 6
BURST = os.urandom(3000)  # a short reply: one read, well under any buffer


def _send_then_reset(conn: socket.socket) -> None:
    with conn:
        _read_cue(conn)
        conn.sendall(BURST)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@pytest.mark.parametrize("host", ROUTES)
def test_reply_and_reset_arriving_together_reach_browser_as_reply_then_reset(
    chain: Chain, host: str
) -> None:
    with raw_target(host, _send_then_reset) as port:
        for _ in range(BURST_ROUNDS):
            with open_connect(chain, host, port) as sock:
                sock.sendall(GO)
                received, end = read_until_end(sock)
            assert end == "reset", f"a clean EOF after {len(received)} bytes, not an RST"
            assert received == BURST[: len(received)], "the bytes arrived altered"
    assert_no_traceback(chain)


@pytest.mark.parametrize("host", ROUTES)
def test_upload_held_back_then_reset_reaches_target_as_reset_after_its_bytes(
    chain: Chain, host: str
) -> None:
    """The mirror image on the browser's side: the target reads nothing at
    first, so client_a stops reading the browser, whose last bytes and reset
    then wait in client_a's receive queue together. Once the target reads,
    client_a must pass those bytes on and then reset the target's socket."""
    go_read = threading.Event()
    ends: queue.Queue[tuple[bytes, str]] = queue.Queue()

    def slow_reader(conn: socket.socket) -> None:
        with conn:
            _read_cue(conn)
            go_read.wait(SOCKET_TIMEOUT)
            conn.settimeout(SOCKET_TIMEOUT)
            ends.put(read_until_end(conn))

    server_rcvbuf = BROWSER_RCVBUF  # the target's window stays small: client_a backs up soon
    with raw_target(host, slow_reader, rcvbuf=server_rcvbuf) as port:
        sock = open_connect(chain, host, port)
        try:
            sock.sendall(GO)
            sent = _send_what_fits(sock, PAYLOAD)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        finally:
            sock.close()
            go_read.set()
        received, end = ends.get(timeout=SOCKET_TIMEOUT * 2)
    assert sent > 4 * BROWSER_RCVBUF, sent  # bytes were still on their way at the reset
    assert received == PAYLOAD[: len(received)], "the bytes arrived altered"
    assert end == "reset", f"a clean EOF after {len(received)} bytes, not an RST"
    assert_no_traceback(chain)
