"""The SOCKS5 parser (fastrelay/protocol/socks.py): examples for every refusal, and
Hypothesis properties: any split gives the same outcome as the bytes fed whole, a valid
request comes back as built with the bytes after it kept, a strict prefix asks for more,
and arbitrary input raises only SocksError, with an answer the client can read."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from fastrelay.protocol.socks import (
    ATYP_DOMAIN,
    ATYP_IPV4,
    ATYP_IPV6,
    METHOD_REFUSED,
    METHOD_SELECTED,
    SUCCEEDED,
    SocksError,
    SocksParser,
    SocksRequest,
    reply,
)
from fastrelay.protocol.status import Failure, SocksReply


def greeting(*methods: int) -> bytes:
    return bytes((5, len(methods), *methods))


def request(host: str, port: int, cmd: int = 1, atyp: int | None = None, rsv: int = 0) -> bytes:
    if atyp is None:
        try:
            atyp = ATYP_IPV6 if ipaddress.ip_address(host).version == 6 else ATYP_IPV4
        except ValueError:
            atyp = ATYP_DOMAIN
    if atyp == ATYP_IPV4:
        addr = ipaddress.IPv4Address(host).packed
    elif atyp == ATYP_IPV6:
        addr = ipaddress.IPv6Address(host).packed
    else:
        addr = bytes((len(host),)) + host.encode()
    return bytes((5, cmd, rsv, atyp)) + addr + port.to_bytes(2, "big")


@dataclass(frozen=True)
class Outcome:
    answers: bytes  # everything the client is sent, the refusal's answer included
    request: SocksRequest | None
    rest: bytes
    error: tuple[SocksReply | None, str] | None


def run(chunks: list[bytes]) -> Outcome:
    parser = SocksParser()
    answers = b""
    found: SocksRequest | None = None
    try:
        for chunk in chunks:
            answer, got = parser.feed(chunk)
            answers += answer
            if got is not None:
                assert found is None, "one request per connection"
                found = got
    except SocksError as exc:
        return Outcome(answers + exc.answer, found, b"", (exc.code, exc.reason))
    return Outcome(answers, found, parser.rest, None)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    pieces, start = [], 0
    for point in points:
        pieces.append(data[start:point])
        start = point
    pieces.append(data[start:])
    return pieces


# --------------------------------------------------------------------------- examples


def test_connect_with_the_first_tunnel_bytes_in_one_read() -> None:
    data = greeting(0) + request("127.0.0.2", 443) + b"\x16\x03\x01 client hello"
    out = run([data])
    assert out == Outcome(
        METHOD_SELECTED,
        SocksRequest("127.0.0.2", 443, ATYP_IPV4),
        b"\x16\x03\x01 client hello",
        None,
    )


def test_every_split_of_a_domain_request_gives_the_same_outcome() -> None:
    data = greeting(2, 0, 1) + request("listed.example", 8443) + b"tunnel"
    whole = run([data])
    assert whole.request == SocksRequest("listed.example", 8443, ATYP_DOMAIN)
    assert whole.rest == b"tunnel" and whole.answers == METHOD_SELECTED
    assert run([bytes((b,)) for b in data]) == whole
    for i in range(len(data) + 1):
        for j in range(i, len(data) + 1):
            assert run([data[:i], data[i:j], data[j:]]) == whole


def test_ipv6_request() -> None:
    out = run([greeting(0) + request("::1", 80)])
    assert out.request == SocksRequest("::1", 80, ATYP_IPV6)


def test_an_ipv6_literal_sent_as_a_name_is_taken_as_the_address() -> None:
    out = run([greeting(0) + request("[::1]", 80, atyp=ATYP_DOMAIN)])
    assert out.request == SocksRequest("::1", 80, ATYP_DOMAIN)


def test_success_reply_names_0000_port_0() -> None:
    assert SUCCEEDED == b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    assert reply(SocksReply.TTL_EXPIRED) == b"\x05\x06\x00\x01\x00\x00\x00\x00\x00\x00"


@pytest.mark.parametrize(
    ("data", "code", "reason"),
    [
        (b"\x04\x01\x00\x50", None, "SOCKS version 0x04 in the greeting, expected 0x05"),
        (b"\x05\x00", None, "the greeting offers no authentication method"),
        (
            greeting(2, 1),
            None,
            "the greeting offers methods 0x02, 0x01; "
            "client_a accepts only 0x00 (no authentication)",
        ),
        (
            greeting(0) + b"\x04\x01\x00\x01",
            SocksReply.GENERAL_FAILURE,
            "SOCKS version 0x04 in the request, not 0x05",
        ),
        (
            greeting(0) + request("127.0.0.2", 80, cmd=2),
            SocksReply.COMMAND_NOT_SUPPORTED,
            "BIND is not supported: only CONNECT (0x01)",
        ),
        (
            greeting(0) + request("127.0.0.2", 80, cmd=3),
            SocksReply.COMMAND_NOT_SUPPORTED,
            "UDP ASSOCIATE is not supported: only CONNECT (0x01)",
        ),
        (
            greeting(0) + request("127.0.0.2", 80, cmd=9),
            SocksReply.COMMAND_NOT_SUPPORTED,
            "command 0x09 is not supported: only CONNECT (0x01)",
        ),
        (
            greeting(0) + b"\x05\x01\x00\x02",
            SocksReply.ADDRESS_TYPE_NOT_SUPPORTED,
            "address type 0x02 is not supported: "
            "use 0x01 (IPv4), 0x03 (domain name) or 0x04 (IPv6)",
        ),
        (
            greeting(0) + request("127.0.0.2", 80, rsv=1),
            SocksReply.GENERAL_FAILURE,
            "reserved byte 0x01 in the request, not 0x00",
        ),
        (
            greeting(0) + b"\x05\x01\x00\x03\x00\x00\x50",
            SocksReply.GENERAL_FAILURE,
            "empty domain name",
        ),
        (
            greeting(0) + request("bad host!", 80, atyp=ATYP_DOMAIN),
            SocksReply.GENERAL_FAILURE,
            "invalid domain name 'bad host!'",
        ),
        (greeting(0) + request("127.0.0.2", 0), SocksReply.GENERAL_FAILURE, "port 0 for 127.0.0.2"),
    ],
)
def test_refusals(data: bytes, code: SocksReply | None, reason: str) -> None:
    whole = run([data])
    assert whole.error == (code, reason)
    assert whole.request is None
    # A refused greeting gets 05 FF; a refused request the method selection, then its reply.
    assert whole.answers == (METHOD_REFUSED if code is None else METHOD_SELECTED + reply(code))
    assert run([bytes((b,)) for b in data]) == whole


def test_every_failure_has_a_socks_reply_code() -> None:
    expected = {
        Failure.DENIED: SocksReply.NOT_ALLOWED,
        Failure.DNS: SocksReply.HOST_UNREACHABLE,
        Failure.UNREACHABLE: SocksReply.HOST_UNREACHABLE,
        Failure.NO_AGENT: SocksReply.HOST_UNREACHABLE,
        Failure.NO_POOL_AGENT: SocksReply.HOST_UNREACHABLE,
        Failure.DRAINING: SocksReply.HOST_UNREACHABLE,
        Failure.NOT_CONNECTED: SocksReply.NETWORK_UNREACHABLE,
        Failure.REFUSED: SocksReply.CONNECTION_REFUSED,
        Failure.DIAL_TIMEOUT: SocksReply.TTL_EXPIRED,
        Failure.OPEN_TIMEOUT: SocksReply.TTL_EXPIRED,
        Failure.RESPONSE_TIMEOUT: SocksReply.TTL_EXPIRED,
    }
    for failure in Failure:
        assert failure.socks == expected.get(failure, SocksReply.GENERAL_FAILURE), failure
        assert reply(failure.socks)[1] == failure.socks != SocksReply.SUCCEEDED


# --------------------------------------------------------------------------- properties

ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(lambda a: a.compressed)
label = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=20)
domain = st.lists(label, min_size=1, max_size=8).map(".".join).filter(lambda d: len(d) <= 255)
hosts = st.one_of(ipv4, ipv6, domain)
ports = st.integers(1, 65535)
methods = st.lists(st.integers(0, 255), min_size=1, max_size=255).filter(lambda m: 0 in m)
cuts = st.lists(st.integers(0, 700), max_size=12)


@given(methods, hosts, ports, st.binary(max_size=64), cuts)
def test_a_valid_connect_parses_as_built_in_any_split(
    offered: list[int], host: str, port: int, tail: bytes, where: list[int]
) -> None:
    data = greeting(*offered) + request(host, port) + tail
    out = run(split(data, where))
    assert out.error is None
    assert out.answers == METHOD_SELECTED
    assert out.request is not None
    assert (out.request.host, out.request.port) == (host, port)
    assert out.rest == tail


@given(methods, hosts, ports, st.data())
def test_a_strict_prefix_asks_for_more(
    offered: list[int], host: str, port: int, data: st.DataObject
) -> None:
    """Truncated: no request and no error (client_a's --header-timeout ends it)."""
    whole = greeting(*offered) + request(host, port)
    cut = data.draw(st.integers(0, len(whole) - 1))
    out = run([whole[:cut]])
    assert out.error is None and out.request is None
    assert out.answers == (METHOD_SELECTED if cut >= len(greeting(*offered)) else b"")


socks_shaped = st.one_of(
    st.binary(max_size=600).map(lambda b: b"\x05" + b),
    st.tuples(st.lists(st.integers(0, 255), max_size=4), st.binary(max_size=300)).map(
        lambda t: greeting(*t[0]) + t[1]
    ),
    st.tuples(methods, st.binary(min_size=4, max_size=4), st.binary(max_size=300)).map(
        lambda t: greeting(*t[0]) + b"\x05" + t[1][1:] + t[2]
    ),
)


@given(socks_shaped, cuts)
@example(b"\x05\x01\x00\x05\x01\x00\x03\xff", [])
def test_arbitrary_input_raises_only_socks_error_and_splits_do_not_matter(
    data: bytes, where: list[int]
) -> None:
    whole = run([data])
    assert run(split(data, where)) == whole
    if whole.error is not None:
        code, reason = whole.error
        assert reason
        refusal = METHOD_REFUSED if code is None else METHOD_SELECTED + reply(code)
        assert whole.answers == refusal
        assert code != SocksReply.SUCCEEDED
    if whole.request is not None:
        assert whole.answers == METHOD_SELECTED
        assert 1 <= whole.request.port <= 65535
