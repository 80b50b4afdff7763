"""client_a's PAC file (issue 13 part 1): the generated JavaScript, run in node, decides every
host exactly as Rules.lookup does (Hypothesis, many hosts per node call), never calls a PAC
helper that could resolve a name, and the HTTP side (ETag, 304, HEAD, 405) is right."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.pac_node import PacNode, node_path
from support.procs import require_tools_or_skip

from client_a.pac import (
    CONTENT_TYPE,
    PacServer,
    generate,
    pac_file,
    proxy_address,
    v6_key,
)
from client_a.rules import Fallback, Rules

PROXY = "127.0.0.1:8080"


@pytest.fixture(scope="module")
def node() -> Iterator[PacNode]:
    require_tools_or_skip([] if node_path() else ["node"], "apt-get install nodejs")
    pac_node = PacNode()
    try:
        yield pac_node
    finally:
        pac_node.close()


def expected(rules: Rules, host: str) -> str:
    rule = rules.lookup(host)
    if rule is None:
        return "DIRECT"
    if rule.fallback is Fallback.DIRECT:
        return f"PROXY {PROXY}; DIRECT"
    return f"PROXY {PROXY}"


def check(node: PacNode, rules: Rules, hosts: list[str]) -> None:
    answer = node.run(generate(rules, PROXY), hosts)
    assert answer["answers"] == [expected(rules, host) for host in hosts]
    # No PAC helper ran: nothing that could resolve a name (dnsResolve, isInNet, ...).
    assert not any(answer["helper_calls"].values()), answer["helper_calls"]


SAMPLE = """\
.corp.example @corp
*.shop.example fallback=direct
exact.example
a.corp.example fallback=direct
10.0.0.0/8
10.1.0.0/16 fallback=direct
10.1.2.3
2001:db8::/32
2001:db8:1::/48 fallback=direct
2001:db8:1:2::/63
::ffff:192.0.2.0/120
fe80::/10
constructor
.__proto__
*.hasownproperty
"""


def test_sample_rules_and_tricky_hosts(node: PacNode) -> None:
    rules = Rules.parse(SAMPLE)
    hosts = [
        "corp.example", "a.corp.example", "b.a.corp.example", "x.corp.example",
        "shop.example", "x.shop.example", "exact.example", "a.exact.example",
        "EXACT.Example.", "10.2.3.4", "10.1.2.3", "10.1.2.4", "11.0.0.1", "10.0.0.0",
        "255.255.255.255", "0.0.0.0", "1.2.3.256", "01.2.3.4",
        "2001:db8::1", "[2001:db8:1::1]", "2001:db9::1", "2001:db8:1:3::1", "2001:db8:1:2::1",
        "2001:0db8:0001:0000:0000:0000:0000:0001", "::ffff:10.1.0.1", "::ffff:a01:1",
        "[::ffff:192.0.2.9]", "192.0.2.9", "fe80::1%eth0", "::", "::1", "1::", ":::", "1:2",
        "1:2:3:4:5:6:7:8:9", "::1.2.3.4", "::1.2.3", "a:b.corp.example", "",
        "constructor", "toString", "__proto__", "a.__proto__", "hasOwnProperty",
        "x.hasownproperty", "valueOf.corp.example", "a..corp.example", ".corp.example",
    ]  # fmt: skip
    check(node, rules, hosts)


def test_empty_rules_are_all_direct(node: PacNode) -> None:
    check(node, Rules(), ["a.example", "10.0.0.1", "::1", "constructor"])


# --- the property: the PAC agrees with Rules.lookup ----------------------------------------

_label = st.sampled_from(["a", "b", "c", "corp", "x-y", "_s", "constructor", "__proto__", "0a"])
_name = st.lists(_label, min_size=1, max_size=3).map(".".join)
_v4 = st.integers(0, 2**16 - 1).map(lambda n: (10 << 24) | (n << 4))  # clustered: overlaps
_v6 = st.integers(0, 2**12 - 1).map(lambda n: (0x20010DB8 << 96) | (n << 84))
_v4_net = st.tuples(_v4, st.integers(0, 32)).map(
    lambda a: ipaddress.IPv4Network((a[0], a[1]), strict=False)
)
_v6_net = st.tuples(_v6, st.integers(0, 128)).map(
    lambda a: ipaddress.IPv6Network((a[0], a[1]), strict=False)
)
_pattern = st.one_of(
    st.tuples(st.sampled_from(["", "*.", "."]), _name).map("".join),
    _v4_net.map(str),
    _v6_net.map(str),
)
_line = st.tuples(
    _pattern,
    st.sampled_from(["", " @corp", " @p-2"]),
    st.sampled_from(["", " fallback=direct", " fallback=closed"]),
).map("".join)


def _v4_hosts(value: int) -> list[str]:
    a = ipaddress.IPv4Address(value)
    return [str(a), f"::ffff:{a}", f"[::ffff:{a}]"]


def _v6_hosts(value: int) -> list[str]:
    a = ipaddress.IPv6Address(value)
    return [a.compressed, f"[{a.compressed}]", a.exploded, a.compressed.upper()]


_host = st.one_of(
    st.tuples(st.lists(_label, max_size=2), _name).map(lambda p: ".".join([*p[0], p[1]])),
    _name.map(lambda n: n.upper() + "."),
    st.tuples(_v4, st.integers(0, 255)).map(lambda a: _v4_hosts(a[0] + a[1])[0]),
    st.tuples(_v4, st.integers(0, 255)).map(lambda a: _v4_hosts(a[0] + a[1])[1]),
    st.tuples(_v4, st.integers(0, 255)).map(lambda a: _v4_hosts(a[0] + a[1])[2]),
    st.tuples(_v6, st.integers(0, 2**80), st.integers(0, 3)).map(
        lambda a: _v6_hosts(a[0] + a[1])[a[2]]
    ),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(_line, max_size=25), hosts=st.lists(_host, min_size=1, max_size=60))
def test_pac_agrees_with_rules_lookup(node: PacNode, lines: list[str], hosts: list[str]) -> None:
    rules = Rules.parse("\n".join(lines))
    # Also every rule's own name, and hosts just under it, so that hits are common.
    for line in lines:
        pattern = line.split()[0]
        if "/" not in pattern:
            name = pattern.lstrip("*.")
            hosts += [name, f"a.{name}", f"b.a.{name}"]
    check(node, rules, hosts)


# --- pure parts ------------------------------------------------------------------------------


def test_v6_key_is_the_masked_prefix_in_hex() -> None:
    net = int(ipaddress.IPv6Address("2001:db8:abcd::"))
    assert v6_key(net, 32) == "20010db8"
    assert v6_key(net, 0) == ""
    assert v6_key(net, 128) == f"{net:032x}"
    assert v6_key(int(ipaddress.IPv6Address("2001:db8:c000::")), 34) == "20010db8c"
    assert v6_key(int(ipaddress.IPv6Address("2001:db8:4000::")), 34) == "20010db84"


@pytest.mark.parametrize(
    ("listen", "local", "address"),
    [
        (("127.0.0.1", 8080), None, "127.0.0.1:8080"),
        (("127.0.0.1", 8080), "127.0.0.5", "127.0.0.1:8080"),
        (("::1", 8080), None, "[::1]:8080"),
        (("0.0.0.0", 8080), "127.0.0.2", "127.0.0.2:8080"),
        (("::", 8080), "::1", "[::1]:8080"),
        (("::", 8080), "::ffff:127.0.0.1", "127.0.0.1:8080"),
        (("0.0.0.0", 8080), None, "0.0.0.0:8080"),
        (("localhost", 8080), "127.0.0.1", "localhost:8080"),
    ],
)
def test_proxy_address(listen: tuple[str, int], local: str | None, address: str) -> None:
    assert proxy_address(listen, local) == address


def split(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), fields, body


def test_responses_etag_304_head_405() -> None:
    rules = Rules.parse(".corp.example\n")
    server = PacServer(("127.0.0.1", 3128))
    status, fields, body = split(server.respond(rules, "GET", {}))
    assert status == 200
    assert fields["Content-Type"] == CONTENT_TYPE
    assert fields["Content-Length"] == str(len(body))
    assert fields["Connection"] == "close"
    assert "max-age" in fields["Cache-Control"]
    assert b'"PROXY 127.0.0.1:3128"' in body
    etag = fields["ETag"]
    assert etag == pac_file(rules, "127.0.0.1:3128").etag
    assert server.file(rules) is server.file(rules)  # built once per rules object
    for match in (etag, f'"a", {etag}', f"W/{etag}", "*"):
        status, fields, empty = split(server.respond(rules, "GET", {"if-none-match": match}))
        assert (status, empty, fields["ETag"]) == (304, b"", etag)
        assert "Content-Length" not in fields
    assert split(server.respond(rules, "GET", {"if-none-match": '"other"'}))[0] == 200
    status, fields, empty = split(server.respond(rules, "HEAD", {}))
    assert (status, empty, fields["Content-Length"]) == (200, b"", str(len(body)))
    status, fields, _ = split(server.respond(rules, "POST", {}))
    assert (status, fields["Allow"]) == (405, "GET, HEAD")
    # New rules: a new body and ETag; the old ETag no longer matches.
    newer = Rules.parse(".corp.example\n.other.example\n")
    status, fields, changed = split(server.respond(newer, "GET", {"if-none-match": etag}))
    assert status == 200 and fields["ETag"] != etag and changed != body
