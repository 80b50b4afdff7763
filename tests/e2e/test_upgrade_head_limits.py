"""Oversized request heads at the relay's WebSocket port and at its admin port.

Each limit (one line, the number of header fields, the whole head) is answered
`431 Request Header Fields Too Large` with the limit in the body, then closed,
and counted in fastrelay_limit_hits_total{limit}; a head that never completes
is closed by the handshake timeout; a head right at the limits still upgrades;
and the relay keeps serving everyone else throughout.
"""

from __future__ import annotations

import socket

import pytest
from conftest import LISTED, Chain, Target
from helpers import curl
from support.procs import CLIENT_TOKEN, metric

from fastrelay.io import admin, httphead

SOCKET_TIMEOUT = 30.0  # a bound for a broken relay, never a measurement


def upgrade_head(*extra: bytes, path: bytes = b"/v1/client") -> bytes:
    lines = [
        b"GET " + path + b" HTTP/1.1",
        b"Host: relay",
        b"Connection: Upgrade",
        b"Upgrade: websocket",
        b"Sec-WebSocket-Version: 13",
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        b"Authorization: Bearer " + CLIENT_TOKEN.encode(),
        *extra,
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def exchange(address: str, data: bytes) -> bytes:
    """Send `data`, half-close, and read the answer until the peer closes."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=SOCKET_TIMEOUT) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def status_line(answer: bytes) -> bytes:
    return answer.split(b"\r\n", 1)[0]


def body(answer: bytes) -> bytes:
    return answer.split(b"\r\n\r\n", 1)[1]


def upgrade_answer(address: str, data: bytes) -> bytes:
    """Send a head that should upgrade; return the response head (the
    connection stays open, so read only up to the blank line)."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=SOCKET_TIMEOUT) as sock:
        sock.sendall(data)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer


def padded_fields(count: int, total: int) -> list[bytes]:
    """`count` header lines of X-Pad-N: with values that make a head of `total`
    bytes when added to upgrade_head()."""
    fields = [b"X-Pad-%d: " % i for i in range(count)]
    spare = total - len(upgrade_head(*fields))
    per, extra = divmod(spare, count)
    return [f + b"a" * (per + (1 if i < extra else 0)) for i, f in enumerate(fields)]


# Each oversized head: (limit label, head bytes, a word the reason must contain).
def oversized(limits: httphead.HeadLimits) -> dict[str, tuple[bytes, bytes]]:
    return {
        httphead.HEAD_LINE: (
            upgrade_head(b"X-Big: " + b"a" * (64 * 1024)),
            b"a line of the request head is over %d bytes" % limits.line,
        ),
        httphead.HEAD_FIELDS: (
            upgrade_head(*(b"X-H-%d: v" % i for i in range(5000))),
            b"more than %d header fields" % limits.fields,
        ),
        httphead.HEAD_SIZE: (
            # every line under the line limit, fewer fields than the limit
            upgrade_head(*padded_fields(limits.fields // 2, limits.head + 1000)),
            b"request head over %d bytes" % limits.head,
        ),
    }


RELAY_CASES = oversized(httphead.HeadLimits())


def limit_hits(chain: Chain, kind: str) -> float:
    assert chain.relay is not None
    return metric(chain.relay.ready["admin"], "fastrelay_limit_hits_total", limit=kind)


def still_serving(chain: Chain, target: Target) -> None:
    """A fresh upgrade still gets 101, and a tunnel still carries a request."""
    assert chain.relay is not None
    answer = upgrade_answer(chain.relay.ready["listen"], upgrade_head())
    assert status_line(answer) == b"HTTP/1.1 101 Switching Protocols", answer[:300]
    result = curl(chain, target, target.https(LISTED, "/hello"))
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("kind", list(RELAY_CASES))
def test_oversized_upgrade_head_gets_431_and_the_relay_carries_on(
    chain: Chain, target: Target, kind: str
) -> None:
    assert chain.relay is not None
    head, reason = RELAY_CASES[kind]
    before = limit_hits(chain, kind)
    answer = exchange(chain.relay.ready["listen"], head)
    assert status_line(answer) == b"HTTP/1.1 431 Request Header Fields Too Large", answer[:300]
    assert body(answer) == reason + b"\n"
    assert b"Connection: close" in answer
    assert limit_hits(chain, kind) == before + 1
    still_serving(chain, target)


def test_oversized_head_sent_slowly_gets_431(chain: Chain, target: Target) -> None:
    """The same limit when the head arrives in many small pieces."""
    assert chain.relay is not None
    host, port = chain.relay.ready["listen"].rsplit(":", 1)
    head, reason = RELAY_CASES[httphead.HEAD_SIZE]
    before = limit_hits(chain, httphead.HEAD_SIZE)
    with socket.create_connection((host, int(port)), timeout=SOCKET_TIMEOUT) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            for i in range(0, len(head), 512):
                sock.sendall(head[i : i + 512])
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered and closed before the last piece: fine, the answer is queued
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert status_line(answer) == b"HTTP/1.1 431 Request Header Fields Too Large", answer[:300]
    assert body(answer) == reason + b"\n"
    assert limit_hits(chain, httphead.HEAD_SIZE) == before + 1
    still_serving(chain, target)


def test_head_at_the_limits_still_upgrades(chain: Chain) -> None:
    """Exactly MAX_FIELDS header lines, one of MAX_LINE bytes, MAX_HEAD in all:
    the limits are inclusive, and picows takes what the check lets through."""
    assert chain.relay is not None
    limits = httphead.HeadLimits()
    long_line = b"X-Long: " + b"b" * (limits.line - len(b"X-Long: "))
    names = [b"X-Pad-%d: " % i for i in range(limits.fields - 6 - 1)]  # upgrade_head has 6
    spare = limits.head - len(upgrade_head(long_line, *names))
    per, extra = divmod(spare, len(names))
    head = upgrade_head(long_line, *(n + b"a" * (per + (i < extra)) for i, n in enumerate(names)))
    lines = head.split(b"\r\n")
    assert len(head) == limits.head
    assert max(len(line) for line in lines) == limits.line
    assert len(lines) - 3 == limits.fields  # minus the request line and the blank line's two
    answer = upgrade_answer(chain.relay.ready["listen"], head)
    assert status_line(answer) == b"HTTP/1.1 101 Switching Protocols", answer[:300]


def test_one_field_too_many_gets_431(chain: Chain) -> None:
    assert chain.relay is not None
    limits = httphead.HeadLimits()
    head = upgrade_head(*(b"X-H-%d: v" % i for i in range(limits.fields - 6 + 1)))
    answer = exchange(chain.relay.ready["listen"], head)
    assert status_line(answer) == b"HTTP/1.1 431 Request Header Fields Too Large", answer[:300]
    assert body(answer) == b"more than %d header fields\n" % limits.fields


def test_head_that_never_completes_is_closed_by_the_handshake_timeout(
    chain: Chain, target: Target
) -> None:
    """A head that stays under every limit but never ends: the connection is
    closed without an answer (the handshake timeout), and nothing is counted."""
    assert chain.relay is not None
    host, port = chain.relay.ready["listen"].rsplit(":", 1)
    before = sum(limit_hits(chain, kind) for kind in RELAY_CASES)
    with socket.create_connection((host, int(port)), timeout=SOCKET_TIMEOUT) as sock:
        sock.sendall(upgrade_head()[:-2])  # no blank line
        assert sock.recv(65536) == b""  # closed; the socket timeout only bounds a broken relay
    assert sum(limit_hits(chain, kind) for kind in RELAY_CASES) == before
    still_serving(chain, target)


ADMIN_CASES = oversized(admin.HEAD_LIMITS)


@pytest.mark.parametrize("kind", list(ADMIN_CASES))
def test_oversized_head_at_the_admin_port_gets_431(chain: Chain, kind: str) -> None:
    assert chain.relay is not None
    address = chain.relay.ready["admin"]
    head, reason = ADMIN_CASES[kind]
    head = head.replace(b"/v1/client", b"/metrics", 1)
    answer = exchange(address, head)
    assert status_line(answer) == b"HTTP/1.1 431 Request Header Fields Too Large", answer[:300]
    assert body(answer) == reason + b"\n"
    assert metric(address, "fastrelay_ready") == 1  # still answering
