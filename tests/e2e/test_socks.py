"""SOCKS5 on client_a's proxy port (issue 13 part 2), end to end.

curl (`--socks5-hostname`, `--socks5`) and headless Chromium (`socks5://`) reach a listed
host through the relay and an unlisted one directly, on the same port that speaks HTTP;
raw sockets check every refusal: each gets its RFC 1928 reply code and a close, never a
hang, and the failures get the code of their row in the failure table.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import DENIED, LISTED, UNLISTED, Chain, Target
from helpers import curl_via, echo_reply, relay_bytes, split_address
from support.procs import metric, wait_until
from test_browser import CHROMIUM_FLAGS, chromium, spki_hash
from test_failure_table import blackhole, closed_port

from fastrelay.protocol.status import Failure, SocksReply

DIAL_TIMEOUT = 1.0
HEADER_TIMEOUT = 1.0
METHOD_SELECTED = b"\x05\x00"
METHOD_REFUSED = b"\x05\xff"
GREETING = b"\x05\x01\x00"


def socks_reply(code: int) -> bytes:
    return bytes((5, code, 0, 1, 0, 0, 0, 0, 0, 0))


def connect_request(host: str, port: int, cmd: int = 1) -> bytes:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        addr = bytes((3, len(host))) + host.encode()
    else:
        addr = bytes((1 if ip.version == 4 else 4,)) + ip.packed
    return bytes((5, cmd, 0)) + addr + port.to_bytes(2, "big")


def socks_url(chain: Chain, hostname: bool = True) -> str:
    return f"socks5{'h' if hostname else ''}://{chain.clients[0].ready['listen']}"


def exchange(chain: Chain, data: bytes, timeout: float = 15.0) -> bytes:
    """Send `data` to client_a's port and read until it closes (a hang fails the test)."""
    out = b""
    with socket.create_connection(split_address(chain.clients[0].ready["listen"]), 5) as sock:
        sock.settimeout(timeout)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                out += chunk
    return out


def requests(chain: Chain, route: str, result: str) -> float:
    admin = chain.clients[0].ready["admin"]
    return metric(admin, "fastrelay_client_requests_total", route=route, result=result)


@pytest.fixture(scope="module")
def socks_chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    rules = tmp_path_factory.mktemp("socks-rules") / "rules.txt"
    rules.write_text(f"{LISTED}/32\n{DENIED}/32\n.listed.test\nlocalhost\n")
    chain = Chain(tmp_path_factory.mktemp("socks-logs"))
    try:
        chain.start_relay("--connect-timeout", "5")
        chain.start_agent(
            "--allow", "127.0.0.0/8", "--deny", f"{DENIED}/32", "--dial-timeout", str(DIAL_TIMEOUT)
        )
        access_log = chain.log_dir / "client-access.log"
        chain.start_client(
            rules,
            "--dial-timeout",
            str(DIAL_TIMEOUT),
            "--header-timeout",
            str(HEADER_TIMEOUT),
            "--access-log",
            str(access_log),
            "--log-format",
            "json",
        )
        yield chain
    finally:
        chain.stop()


def access_lines(chain: Chain, target: str) -> list[dict]:
    path = chain.log_dir / "client-access.log"
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [line for line in lines if line["target"] == target]


def new_access_line(chain: Chain, target: str, before: int) -> dict:
    """The access-log line for `target` after the `before` there were (written when its
    tunnel ends: wait for it)."""
    wait_until(
        lambda: len(access_lines(chain, target)) > before,
        what=f"an access-log line for {target}",
    )
    return access_lines(chain, target)[before]


# --------------------------------------------------------------------------- real clients


@pytest.mark.parametrize("hostname", [True, False], ids=["socks5-hostname", "socks5"])
def test_curl_listed_through_relay_unlisted_direct(
    socks_chain: Chain, target: Target, hostname: bool
) -> None:
    chain = socks_chain
    relay_ok, direct_ok = requests(chain, "relay", "ok"), requests(chain, "direct", "ok")
    down = relay_bytes(chain)
    out = curl_via(socks_url(chain, hostname), target, target.https(LISTED, "/hello"))
    assert out.returncode == 0, out.stderr
    assert f"hello from the target at {LISTED}".encode() in out.stdout
    assert requests(chain, "relay", "ok") == relay_ok + 1
    down_after = relay_bytes(chain)
    assert down_after > down  # the TLS session crossed the relay

    out = curl_via(socks_url(chain, hostname), target, target.https(UNLISTED, "/hello"))
    assert out.returncode == 0, out.stderr
    assert f"hello from the target at {UNLISTED}".encode() in out.stdout
    assert requests(chain, "direct", "ok") == direct_ok + 1
    assert relay_bytes(chain) == down_after  # nothing of it crossed the relay


@contextlib.contextmanager
def http_server(host: str) -> Iterator[int]:
    """A one-page HTTP server on `host` (for a name that resolves to it: localhost)."""
    sock = socket.create_server((host, 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                conn.settimeout(5)
                conn.recv(65536)
                body = f"served on {host}".encode()
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: "
                    + str(len(body)).encode()
                    + b"\r\n\r\n"
                    + body
                )

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        sock.close()


def test_domain_name_is_resolved_by_the_agent(socks_chain: Chain, target: Target) -> None:
    """`localhost` is listed: curl --socks5-hostname sends the name (ATYP 0x03) and the
    agent resolves and dials it."""
    chain = socks_chain
    relay_ok = requests(chain, "relay", "ok")
    with http_server("127.0.0.1") as port:
        before = len(access_lines(chain, f"localhost:{port}"))
        out = curl_via(socks_url(chain), target, f"http://localhost:{port}/")
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"served on 127.0.0.1"
    assert requests(chain, "relay", "ok") == relay_ok + 1
    line = new_access_line(chain, f"localhost:{port}", before)
    assert (line["proto"], line["route"], line["result"]) == ("socks5", "relay", "ok")


def test_http_on_the_same_port_is_logged_as_http(socks_chain: Chain, target: Target) -> None:
    chain = socks_chain
    with http_server(UNLISTED) as port:  # a target of its own: only this request's line
        url = f"http://{UNLISTED}:{port}/"
        out = curl_via(f"http://{chain.clients[0].ready['listen']}", target, url)
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"served on {UNLISTED}".encode()
    line = new_access_line(chain, f"{UNLISTED}:{port}", 0)
    assert (line["proto"], line["route"]) == ("http", "direct")


def test_chromium_socks5_loads_listed_page_through_relay(
    socks_chain: Chain, target: Target, certs: dict[str, Path], tmp_path: Path
) -> None:
    chain = socks_chain
    relay_ok = requests(chain, "relay", "ok")
    down = relay_bytes(chain)
    result = subprocess.run(
        [
            chromium(),
            *CHROMIUM_FLAGS,
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--proxy-server={socks_url(chain, hostname=False)}",
            f"--ignore-certificate-errors-spki-list={spki_hash(certs['cert'])}",
            "--dump-dom",
            target.https(LISTED, "/hello"),
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f'<h1 id="greeting">hello from the target at {LISTED}</h1>' in result.stdout
    assert requests(chain, "relay", "ok") > relay_ok
    assert relay_bytes(chain) > down


# --------------------------------------------------------------------------- raw sockets


def test_greeting_request_and_tunnel_bytes_in_one_write(socks_chain: Chain, target: Target) -> None:
    """A client that does not wait for the replies loses none of its first tunnel bytes."""
    payload = b"ping through socks5\n"
    for host in (LISTED, UNLISTED):
        data = GREETING + connect_request(host, target.port(host, "echo")) + payload
        with socket.create_connection(
            split_address(socks_chain.clients[0].ready["listen"]), 5
        ) as sock:
            sock.settimeout(10)
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)  # half-close: the echo ends after our bytes
            out = b""
            while chunk := sock.recv(65536):
                out += chunk
        assert out == METHOD_SELECTED + socks_reply(0) + echo_reply(payload), host


def test_ipv6_address_type_is_dialled(socks_chain: Chain) -> None:
    """ATYP 0x04: ::1 is not listed, so client_a dials it directly."""
    with socket.create_server(("::1", 0), family=socket.AF_INET6) as server:
        port = server.getsockname()[1]
        with socket.create_connection(
            split_address(socks_chain.clients[0].ready["listen"]), 5
        ) as sock:
            sock.settimeout(10)
            sock.sendall(GREETING + connect_request("::1", port))
            server.settimeout(10)
            conn, _ = server.accept()
            with conn:
                conn.sendall(b"hello over v6")
                conn.shutdown(socket.SHUT_WR)
                out = b""
                while chunk := sock.recv(65536):
                    out += chunk
    assert out == METHOD_SELECTED + socks_reply(0) + b"hello over v6"


@pytest.mark.parametrize(
    ("data", "answer"),
    [
        pytest.param(b"\x05\x00", METHOD_REFUSED, id="no-methods"),
        pytest.param(b"\x05\x02\x02\x01", METHOD_REFUSED, id="no-acceptable-method"),
        pytest.param(
            GREETING + b"\x04\x01\x00\x01\x7f\x00\x00\x02\x01\xbb",
            METHOD_SELECTED + socks_reply(1),
            id="bad-request-version",
        ),
        pytest.param(
            GREETING + connect_request(LISTED, 443, cmd=2),
            METHOD_SELECTED + socks_reply(7),
            id="bind",
        ),
        pytest.param(
            GREETING + connect_request(LISTED, 443, cmd=3),
            METHOD_SELECTED + socks_reply(7),
            id="udp-associate",
        ),
        pytest.param(
            GREETING + b"\x05\x01\x00\x09\x7f\x00\x00\x02\x01\xbb",
            METHOD_SELECTED + socks_reply(8),
            id="bad-atyp",
        ),
        pytest.param(
            GREETING + b"\x05\x01\x00\x03\x00\x01\xbb",
            METHOD_SELECTED + socks_reply(1),
            id="empty-domain",
        ),
    ],
)
def test_malformed_greetings_and_requests(socks_chain: Chain, data: bytes, answer: bytes) -> None:
    bad = requests(socks_chain, "none", "bad_request")
    assert exchange(socks_chain, data) == answer
    assert requests(socks_chain, "none", "bad_request") == bad + 1


@pytest.mark.parametrize(
    ("data", "answer"),
    [
        pytest.param(b"\x05", METHOD_REFUSED, id="greeting"),
        pytest.param(b"\x05\x02\x00", METHOD_REFUSED, id="methods"),
        pytest.param(
            GREETING + b"\x05\x01\x00\x03\x20abc", METHOD_SELECTED + socks_reply(1), id="request"
        ),
    ],
)
def test_truncated_greeting_or_request_ends_at_the_header_timeout(
    socks_chain: Chain, data: bytes, answer: bytes
) -> None:
    """--header-timeout ends it, with the answer its stage expects, then a close."""
    admin = socks_chain.clients[0].ready["admin"]
    name = "fastrelay_client_connections_dropped_total"
    dropped = metric(admin, name, reason="header_timeout")
    assert exchange(socks_chain, data) == answer
    assert metric(admin, name, reason="header_timeout") == dropped + 1


def _failure(chain: Chain, host: str, port: int) -> bytes:
    return exchange(chain, GREETING + connect_request(host, port))


@pytest.mark.parametrize("host", [LISTED, UNLISTED], ids=["relay", "direct"])
def test_refused_port_gets_connection_refused(socks_chain: Chain, host: str) -> None:
    with closed_port(host) as port:
        answer = _failure(socks_chain, host, port)
    assert answer == METHOD_SELECTED + socks_reply(Failure.REFUSED.socks)
    assert Failure.REFUSED.socks == SocksReply.CONNECTION_REFUSED == 5


@pytest.mark.parametrize("host", [LISTED, UNLISTED], ids=["relay", "direct"])
def test_dial_timeout_gets_ttl_expired(socks_chain: Chain, host: str) -> None:
    timeouts = requests(socks_chain, "relay" if host == LISTED else "direct", "timeout")
    with blackhole(host) as port:
        answer = _failure(socks_chain, host, port)
    assert answer == METHOD_SELECTED + socks_reply(6)
    route = "relay" if host == LISTED else "direct"
    assert requests(socks_chain, route, "timeout") == timeouts + 1


def test_denied_host_gets_not_allowed(socks_chain: Chain, target: Target) -> None:
    assert _failure(
        socks_chain, DENIED, target.port(DENIED, "echo")
    ) == METHOD_SELECTED + socks_reply(2)


@pytest.mark.parametrize("suffix", ["listed.test", "unlisted.test"], ids=["relay", "direct"])
def test_unresolvable_name_gets_host_unreachable(socks_chain: Chain, suffix: str) -> None:
    answer = _failure(socks_chain, f"{'x' * 64}.{suffix}", 443)
    assert answer == METHOD_SELECTED + socks_reply(4)


def test_no_agent_gets_host_unreachable(make_chain, rules_file: Path) -> None:  # type: ignore[no-untyped-def]
    chain: Chain = make_chain()
    chain.start_relay()
    chain.start_client(rules_file)
    assert _failure(chain, LISTED, 443) == METHOD_SELECTED + socks_reply(Failure.NO_AGENT.socks)
    assert Failure.NO_AGENT.socks == SocksReply.HOST_UNREACHABLE


def test_not_connected_gets_network_unreachable(make_chain, rules_file: Path) -> None:  # type: ignore[no-untyped-def]
    chain: Chain = make_chain()
    chain.start_relay()
    chain.start_client(rules_file, "--open-timeout", "3")
    chain.relay.stop()
    answer = _failure(chain, LISTED, 443)
    assert answer == METHOD_SELECTED + socks_reply(Failure.NOT_CONNECTED.socks)
    assert Failure.NOT_CONNECTED.socks == SocksReply.NETWORK_UNREACHABLE


@pytest.mark.parametrize("socks", [True, False], ids=["socks5", "http-connect"])
def test_a_target_that_speaks_first_does_not_overtake_the_answer(
    socks_chain: Chain, socks: bool
) -> None:
    """Direct route: the target's banner (SSH, SMTP) reaches the client after the answer to
    its CONNECT, never before it."""
    with socket.create_server((UNLISTED, 0)) as server:
        port = server.getsockname()[1]
        address = split_address(socks_chain.clients[0].ready["listen"])
        with socket.create_connection(address, 5) as sock:
            sock.settimeout(10)
            if socks:
                sock.sendall(GREETING + connect_request(UNLISTED, port))
            else:
                sock.sendall(f"CONNECT {UNLISTED}:{port} HTTP/1.1\r\n\r\n".encode())
            server.settimeout(10)
            conn, _ = server.accept()
            with conn:
                conn.sendall(b"SSH-2.0-banner\r\n")
                conn.shutdown(socket.SHUT_WR)
                out = b""
                while chunk := sock.recv(65536):
                    out += chunk
    if socks:
        assert out == METHOD_SELECTED + socks_reply(0) + b"SSH-2.0-banner\r\n"
    else:
        assert out.startswith(b"HTTP/1.1 200 ")
        assert out.endswith(b"\r\n\r\nSSH-2.0-banner\r\n")
