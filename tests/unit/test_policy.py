from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.policy import Decision, EgressPolicy, PolicyError

DEFAULT = EgressPolicy()


@pytest.mark.parametrize(
    ("ip", "label"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.255.254", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("169.254.0.1", "link-local"),
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("febf:ffff::1", "link-local"),
        ("10.0.0.1", "private"),
        ("10.255.255.255", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("::ffff:10.1.2.3", "private"),
        ("::ffff:169.254.169.254", "link-local"),
        ("0.0.0.0", "this-network"),
        ("0.1.2.3", "this-network"),
        ("100.64.0.1", "shared (CGNAT)"),
        ("100.127.255.255", "shared (CGNAT)"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("ff02::1", "multicast"),
        ("::", "unspecified"),
    ],
)
def test_default_blocked_ranges(ip: str, label: str) -> None:
    decision = DEFAULT.check("target.example", ip, 443)
    assert decision == Decision(
        False, f"{label} address {ip} is blocked by default (allow it with --allow)"
    )


@pytest.mark.parametrize(
    "ip",
    [
        "8.8.8.8",
        "1.1.1.1",
        "172.15.255.255",
        "172.32.0.0",
        "192.169.0.1",
        "100.63.255.255",
        "100.128.0.0",
        "169.255.0.1",
        "11.0.0.1",
        "223.255.255.255",
        "2606:4700::1111",
        "::ffff:8.8.8.8",
        "[2001:4860:4860::8888]",
    ],
)
def test_public_addresses_are_permitted(ip: str) -> None:
    assert DEFAULT.check("target.example", ip, 443) == Decision(True, "public address")


def test_allow_overrides_default_block() -> None:
    policy = EgressPolicy(allow=["127.0.0.0/8"])
    assert policy.check("localhost", "127.0.0.1", 8080) == Decision(
        True, "allowed by --allow 127.0.0.0/8"
    )
    # Only the allowed range is opened up.
    assert not policy.check("x", "10.0.0.1", 80).allowed
    assert not policy.check("x", "::1", 80).allowed


def test_allow_cidr_covers_mapped_ipv6_spelling() -> None:
    policy = EgressPolicy(allow=["127.0.0.1"])
    assert policy.check("x", "::ffff:127.0.0.1", 80).allowed


def test_deny_beats_allow() -> None:
    policy = EgressPolicy(allow=["10.0.0.0/8", ".corp.example"], deny=["10.1.0.0/16"])
    assert policy.check("db.corp.example", "10.1.2.3", 5432) == Decision(
        False, "denied by --deny 10.1.0.0/16"
    )
    assert policy.check("db.corp.example", "10.2.0.1", 5432) == Decision(
        True, "allowed by --allow 10.0.0.0/8"
    )


def test_deny_blocks_public_address() -> None:
    policy = EgressPolicy(deny=["8.8.8.0/24", "2001:db8::/32"])
    assert policy.check("dns.google", "8.8.8.8", 53) == Decision(
        False, "denied by --deny 8.8.8.0/24"
    )
    assert not policy.check("x", "2001:db8::1", 80).allowed
    assert policy.check("x", "8.8.4.4", 53).allowed


def test_host_pattern_specs() -> None:
    policy = EgressPolicy(
        allow=["metadata.internal", ".corp.example"], deny=["*.evil.example", "Bad.Example."]
    )
    assert policy.check("METADATA.internal.", "169.254.169.254", 80) == Decision(
        True, "allowed by --allow metadata.internal"
    )
    assert not policy.check("x.metadata.internal", "169.254.169.254", 80).allowed
    assert policy.check("corp.example", "10.0.0.5", 80).allowed
    assert policy.check("a.b.corp.example", "10.0.0.5", 80).allowed
    assert policy.check("a.evil.example", "1.2.3.4", 80) == Decision(
        False, "denied by --deny *.evil.example"
    )
    assert policy.check("evil.example", "1.2.3.4", 80).allowed  # *. excludes the domain itself
    assert not policy.check("bad.example", "1.2.3.4", 80).allowed


def test_host_pattern_does_not_match_ip_literal_host() -> None:
    policy = EgressPolicy(allow=["localhost"])
    assert policy.check("127.0.0.1", "127.0.0.1", 80).reason.startswith("loopback")
    assert policy.check("localhost", "127.0.0.1", 80).allowed


def test_cidr_spec_matches_resolved_ip_not_host() -> None:
    policy = EgressPolicy(deny=["93.184.216.0/24"])
    assert not policy.check("example.com", "93.184.216.34", 443).allowed
    assert policy.check("93.184.216.34", "1.2.3.4", 443).allowed


@pytest.mark.parametrize(
    ("spec", "host", "ip", "port", "expected"),
    [
        ("localhost:8080", "localhost", "127.0.0.1", 8080, True),
        ("localhost:8080", "localhost", "127.0.0.1", 8081, False),
        ("127.0.0.0/8:443", "x", "127.0.0.9", 443, True),
        ("127.0.0.0/8:443", "x", "127.0.0.9", 80, False),
        ("127.0.0.1:22", "x", "127.0.0.1", 22, True),
        ("[::1]:8080", "x", "::1", 8080, True),
        ("[::1]:8080", "x", "::1", 8000, False),
        ("[::1/128]:8080", "x", "[::1]", 8080, True),
        ("[fe80::/10]", "x", "fe80::5", 1, True),
        ("::1", "x", "::1", 9, True),
        ("*.svc.local:9000", "a.svc.local", "10.0.0.1", 9000, True),
        ("*.svc.local:9000", "a.svc.local", "10.0.0.1", 9001, False),
        (".svc.local:65535", "svc.local", "10.0.0.1", 65535, True),
    ],
)
def test_port_specs(spec: str, host: str, ip: str, port: int, expected: bool) -> None:
    decision = EgressPolicy(allow=[spec]).check(host, ip, port)
    assert decision.allowed is expected
    if expected:
        assert decision.reason == f"allowed by --allow {spec}"


def test_deny_with_port_only_blocks_that_port() -> None:
    policy = EgressPolicy(deny=["example.com:25"])
    assert not policy.check("example.com", "93.184.216.34", 25).allowed
    assert policy.check("example.com", "93.184.216.34", 587).allowed


def test_unbracketed_ipv6_never_takes_a_port() -> None:
    # "::1:80" is an address, so it must not match ::1 on port 80.
    policy = EgressPolicy(allow=["::1:80"])
    assert not policy.check("x", "::1", 80).allowed
    assert policy.check("x", "::1:80", 1).allowed


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("", "empty pattern"),
        ("exa mple.com", "whitespace"),
        ("foo..bar", "empty label"),
        ("a.*.example.com", "'*' is only allowed"),
        ("example.com:", "port '' is not a number"),
        ("example.com:http", "port 'http' is not a number"),
        ("example.com:0", "port 0 is out of range"),
        ("example.com:65536", "port 65536 is out of range"),
        ("example.com:-1", "is not a number"),
        (":443", "empty pattern"),
        ("10.0.0.0/33", "10.0.0.0/33"),
        ("10.0.0.1/8", "host bits set"),
        ("10.0.0.0/8:99999", "out of range"),
        ("300.1.1.1", "looks like an IPv4 address"),
        ("[::1", "missing ']'"),
        ("[::1]8080", "expected ':PORT' after ']'"),
        ("[::1]:", "port '' is not a number"),
        ("[10.0.0.1]:80", "brackets are only for IPv6"),
        ("[example.com]:80", "brackets are only for IPv6"),
        ("[::g]:80", "::g"),
        ("::1:80:", "::1:80:"),
        ("x" * 254, "max 253"),
        # A deny of a name the host normaliser reads as an IPv4 address never matched.
        ("0x7f.1:80", "last label is a number"),
        ("foo.0x", "last label is a number"),
    ],
)
def test_invalid_specs(spec: str, fragment: str) -> None:
    for flag, kwargs in (("--allow", {"allow": [spec]}), ("--deny", {"deny": [spec]})):
        with pytest.raises(PolicyError) as info:
            EgressPolicy(**kwargs)
        message = str(info.value)
        assert message.startswith(f"invalid {flag} spec {spec!r}: ")
        assert fragment in message


def test_policy_error_is_value_error() -> None:
    assert issubclass(PolicyError, ValueError)


def test_single_string_is_rejected() -> None:
    with pytest.raises(TypeError):
        EgressPolicy(allow="10.0.0.0/8")


def test_invalid_resolved_ip_fails_closed() -> None:
    decision = EgressPolicy(allow=[".example.com"]).check("example.com", "not-an-ip", 80)
    assert decision.allowed is False
    assert "not a valid IP address" in decision.reason


def test_first_matching_spec_is_reported() -> None:
    policy = EgressPolicy(allow=["10.0.0.0/8", "10.1.0.0/16"])
    assert policy.check("x", "10.1.0.1", 80).reason == "allowed by --allow 10.0.0.0/8"


def test_decision_is_frozen() -> None:
    decision = DEFAULT.check("x", "8.8.8.8", 80)
    with pytest.raises(AttributeError):
        decision.allowed = False  # type: ignore[misc]


@given(octets=st.tuples(*[st.integers(0, 255)] * 3))
def test_whole_loopback_and_private_ranges_blocked(octets: tuple[int, int, int]) -> None:
    a, b, c = octets
    for ip in (
        f"127.{a}.{b}.{c}",
        f"10.{a}.{b}.{c}",
        f"192.168.{b}.{c}",
        f"::ffff:127.{a}.{b}.{c}",
    ):
        assert not DEFAULT.check("h.example", ip, 80).allowed, ip
    assert EgressPolicy(allow=["127.0.0.0/8"]).check("h", f"127.{a}.{b}.{c}", 80).allowed


# --- issue 10 item 3: the IANA special-purpose ranges, embedded IPv4, interface addresses ---

PURE = EgressPolicy(local_addresses=())  # no interface addresses: only the ranges decide

# (range, label, first and last address): every block the issue found treated as public.
SPECIAL_RANGES = [
    ("192.0.0.0/24", "IETF protocol assignments", "192.0.0.0", "192.0.0.255"),
    ("192.0.2.0/24", "documentation (TEST-NET-1)", "192.0.2.0", "192.0.2.255"),
    ("192.88.99.0/24", "deprecated 6to4 relay anycast", "192.88.99.0", "192.88.99.255"),
    ("198.18.0.0/15", "benchmarking", "198.18.0.0", "198.19.255.255"),
    ("198.51.100.0/24", "documentation (TEST-NET-2)", "198.51.100.0", "198.51.100.255"),
    ("203.0.113.0/24", "documentation (TEST-NET-3)", "203.0.113.0", "203.0.113.255"),
    ("240.0.0.0/4", "reserved", "240.0.0.0", "255.255.255.254"),
    ("255.255.255.255/32", "limited broadcast", "255.255.255.255", "255.255.255.255"),
    ("64:ff9b::/96", "NAT64", "64:ff9b::", "64:ff9b::ffff:ffff"),
    ("64:ff9b:1::/48", "local-use NAT64", "64:ff9b:1::", "64:ff9b:1:ffff:ffff:ffff:ffff:ffff"),
    ("2002::/16", "6to4", "2002::", "2002:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
    ("::/96", "IPv4-compatible", "::2", "::ffff:ffff"),
    ("fec0::/10", "deprecated site-local", "fec0::", "feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
    ("100::/64", "discard-only", "100::", "100::ffff:ffff:ffff:ffff"),
    ("2001:db8::/32", "documentation", "2001:db8::", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"),
    ("2001::/32", "Teredo", "2001::", "2001:0:ffff:ffff:ffff:ffff:ffff:ffff"),
    ("2001:2::/48", "benchmarking", "2001:2::", "2001:2:0:ffff:ffff:ffff:ffff:ffff"),
    ("2001:10::/28", "deprecated ORCHID", "2001:10::", "2001:1f:ffff:ffff:ffff:ffff:ffff:ffff"),
    ("3fff::/20", "documentation", "3fff::", "3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff"),
    ("5f00::/16", "segment routing SID", "5f00::", "5f00:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
]


@pytest.mark.parametrize(
    ("cidr", "label", "first", "last"), SPECIAL_RANGES, ids=[r[0] for r in SPECIAL_RANGES]
)
def test_special_purpose_ranges_blocked_by_default(
    cidr: str, label: str, first: str, last: str
) -> None:
    for ip in (first, last):
        assert PURE.check("target.example", ip, 443) == Decision(
            False, f"{label} address {ip} is blocked by default (allow it with --allow)"
        )
    if cidr in ("::/96", "64:ff9b::/96", "2002::/16"):
        return  # these embed an IPv4 address: see test_allowing_the_prefix_still_judges_...
    # An explicit --allow of the range lets it through.
    opened = EgressPolicy(allow=[cidr], local_addresses=())
    assert opened.check("target.example", last, 443) == Decision(True, f"allowed by --allow {cidr}")


def test_every_default_range_is_documented() -> None:
    from pathlib import Path

    from agent.policy import DEFAULT_BLOCKED

    doc = (Path(__file__).resolve().parents[2] / "docs" / "OPERATIONS.md").read_text()
    section = doc.split("### Egress blocklist", 1)[1].split("\n## ", 1)[0]
    for net, _label in DEFAULT_BLOCKED:
        assert f"`{net}`" in section, net


@pytest.mark.parametrize(
    ("ip", "reason"),
    [
        ("::ffff:127.0.0.1", "loopback address ::ffff:127.0.0.1"),
        ("::127.0.0.1", "IPv4-compatible address ::127.0.0.1"),
        ("64:ff9b::a9fe:a9fe", "NAT64 address 64:ff9b::a9fe:a9fe"),
        ("2002:7f00:0001::1", "6to4 address 2002:7f00:0001::1"),
        ("2002:a9fe:a9fe::", "6to4 address 2002:a9fe:a9fe::"),
    ],
)
def test_embedded_ipv4_blocked_by_default(ip: str, reason: str) -> None:
    assert PURE.check("x", ip, 80) == Decision(
        False, f"{reason} is blocked by default (allow it with --allow)"
    )


@pytest.mark.parametrize(
    ("ip", "prefix", "inner", "label"),
    [
        ("::127.0.0.1", "::/96", "127.0.0.1", "loopback"),
        ("64:ff9b::a9fe:a9fe", "64:ff9b::/96", "169.254.169.254", "link-local"),
        ("2002:7f00:0001::1", "2002::/16", "127.0.0.1", "loopback"),
        ("2002:a9fe:a9fe::", "2002::/16", "169.254.169.254", "link-local"),
        ("64:ff9b::c0a8:101", "64:ff9b::/96", "192.168.1.1", "private"),
    ],
)
def test_allowing_the_prefix_still_judges_the_embedded_ipv4(
    ip: str, prefix: str, inner: str, label: str
) -> None:
    policy = EgressPolicy(allow=[prefix], local_addresses=())
    assert policy.check("x", ip, 80) == Decision(
        False, f"{label} address {inner} (in {ip}) is blocked by default (allow it with --allow)"
    )
    # Allowing both the prefix and the IPv4 range opens it; a public IPv4 needs only the prefix.
    assert EgressPolicy(allow=[prefix, inner], local_addresses=()).check("x", ip, 80).allowed
    public = {
        "::/96": "::8.8.8.8",
        "64:ff9b::/96": "64:ff9b::8.8.8.8",
        "2002::/16": "2002:808:808::1",
    }
    assert policy.check("x", public[prefix], 80) == Decision(True, f"allowed by --allow {prefix}")


def test_deny_of_an_ipv4_range_covers_its_embedded_forms() -> None:
    policy = EgressPolicy(allow=["::/0"], deny=["8.8.8.0/24"], local_addresses=())
    for ip in ("::8.8.8.8", "64:ff9b::8.8.8.8", "2002:808:808::", "::ffff:8.8.8.8"):
        assert policy.check("x", ip, 53) == Decision(False, "denied by --deny 8.8.8.0/24"), ip
    assert policy.check("x", "2606:4700::1111", 53).allowed


def test_interface_address_refused_and_allow_lets_it_through() -> None:
    policy = EgressPolicy(local_addresses=["203.0.114.7", "2606:4700:10::1", "fe80::1%eth0"])
    assert policy.check("me.example", "203.0.114.7", 22) == Decision(
        False, "local interface address 203.0.114.7 is blocked by default (allow it with --allow)"
    )
    assert not policy.check("x", "2606:4700:10::1", 22).allowed
    assert not policy.check("x", "::ffff:203.0.114.7", 22).allowed  # its mapped spelling too
    assert not policy.check("x", "64:ff9b::203.0.114.7", 22).allowed
    assert policy.check("x", "203.0.114.8", 22) == Decision(True, "public address")
    assert policy.local_addresses == {"203.0.114.7", "2606:4700:10::1", "fe80::1"}
    opened = EgressPolicy(allow=["203.0.114.7:22"], local_addresses=["203.0.114.7"])
    assert opened.check("x", "203.0.114.7", 22) == Decision(
        True, "allowed by --allow 203.0.114.7:22"
    )
    assert not opened.check("x", "203.0.114.7", 23).allowed


def test_interface_addresses_are_data_and_can_be_replaced() -> None:
    policy = EgressPolicy(local_addresses=[])
    assert policy.check("x", "203.0.114.7", 80).allowed
    policy.set_local_addresses(["203.0.114.7", "not an address"])
    assert not policy.check("x", "203.0.114.7", 80).allowed
    policy.set_local_addresses([])
    assert policy.check("x", "203.0.114.7", 80).allowed


def test_default_policy_reads_the_interfaces_at_start() -> None:
    policy = EgressPolicy(reader=lambda: ["203.0.114.9"])
    assert policy.check("x", "203.0.114.9", 80).reason.startswith("local interface")


def test_failing_reader_never_crashes_the_policy() -> None:
    def boom() -> list[str]:
        raise RuntimeError("no /proc")

    policy = EgressPolicy(reader=boom)
    assert policy.local_addresses == frozenset()
    assert policy.check("x", "8.8.8.8", 80).allowed


def test_interfaces_refreshed_from_the_loop_without_blocking_it() -> None:
    import asyncio
    import itertools
    import threading

    reads: list[str] = []
    first = [["203.0.114.1"], ["203.0.114.2"], RuntimeError("gone")]
    answers = itertools.chain(first, itertools.repeat(["203.0.114.3"]))

    def reader() -> list[str]:
        reads.append(threading.current_thread().name)
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    policy = EgressPolicy(reader=reader, refresh_interval=0.01)
    assert policy.local_addresses == {"203.0.114.1"}

    async def run() -> None:
        policy.watch_interfaces()
        policy.watch_interfaces()  # once per loop: a second call starts no second timer
        for _ in range(200):
            if policy.local_addresses == {"203.0.114.3"}:
                break
            await asyncio.sleep(0.01)

    asyncio.run(run())
    assert policy.local_addresses == {"203.0.114.3"}  # a failed read kept the previous set
    assert reads[0] == threading.main_thread().name  # at start
    assert len(reads) >= 4
    assert all(name != threading.main_thread().name for name in reads[1:])  # then in a worker


def test_static_policy_does_not_watch() -> None:
    import asyncio

    policy = EgressPolicy(local_addresses=["203.0.114.1"])

    async def run() -> None:
        policy.watch_interfaces()

    asyncio.run(run())
    assert policy.local_addresses == {"203.0.114.1"}


def test_interface_readers_parse_linux_formats() -> None:
    from agent.policy import _read_fib_trie, _read_if_inet6, _read_ip_json

    fib = """Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     +-- 198.51.100.0/24 2 0 2
           |-- 198.51.100.7
              /32 host LOCAL
"""
    assert _read_fib_trie(fib) == {"127.0.0.1", "198.51.100.7"}
    inet6 = (
        "fd000000000000000000000000000002 04 40 00 82     eth0\n"
        "00000000000000000000000000000001 01 80 10 80       lo\n"
    )
    assert _read_if_inet6(inet6) == {"fd00::2", "::1"}
    ip_json = (
        '[{"ifname":"lo","addr_info":[{"family":"inet","local":"127.0.0.1"},'
        '{"family":"inet6","local":"::1"}]},{"ifname":"eth0","addr_info":[]}]'
    )
    assert _read_ip_json(ip_json) == {"127.0.0.1", "::1"}


def test_read_interface_addresses_on_this_host() -> None:
    from agent.policy import read_interface_addresses

    found = read_interface_addresses()
    assert "127.0.0.1" in found or not found  # Linux always has loopback up; never raises


IPV4_BLOCKED = st.one_of(
    st.integers(0x7F000000, 0x7FFFFFFF),  # 127.0.0.0/8
    st.integers(0xA9FE0000, 0xA9FEFFFF),  # 169.254.0.0/16
    st.integers(0x0A000000, 0x0AFFFFFF),  # 10.0.0.0/8
    st.integers(0xC0A80000, 0xC0A8FFFF),  # 192.168.0.0/16
    st.integers(0xF0000000, 0xFFFFFFFF),  # 240.0.0.0/4 and the broadcast address
    st.integers(0xC6120000, 0xC613FFFF),  # 198.18.0.0/15
    st.integers(0x64400000, 0x647FFFFF),  # 100.64.0.0/10
)


def _embeddings(v4: int, suffix: int) -> dict[str, str]:
    import ipaddress

    def v6(value: int) -> str:
        return str(ipaddress.IPv6Address(value))

    forms = {
        "mapped": v6(0xFFFF << 32 | v4),
        "nat64": v6(0x64FF9B << 96 | v4),
        "6to4": v6(0x2002 << 112 | v4 << 80 | suffix),
    }
    if v4 >> 24:  # ::0.x.y.z is not an IPv4-compatible address (:: and ::1 live there)
        forms["compatible"] = v6(v4)
    return forms


@given(v4=IPV4_BLOCKED, suffix=st.integers(0, 2**80 - 1))
def test_any_ipv6_embedding_a_blocked_ipv4_is_blocked(v4: int, suffix: int) -> None:
    # Blocked by default, and still blocked with every embedding prefix allowed.
    opened = EgressPolicy(allow=["::/96", "64:ff9b::/96", "2002::/16"], local_addresses=())
    for form, ip in _embeddings(v4, suffix).items():
        assert not PURE.check("h.example", ip, 80).allowed, (form, ip)
        assert not opened.check("h.example", ip, 80).allowed, (form, ip)


@given(v4=st.integers(0, 2**32 - 1), suffix=st.integers(0, 2**80 - 1))
def test_embedded_ipv4_judged_like_the_ipv4_itself(v4: int, suffix: int) -> None:
    import ipaddress

    local = ["203.0.114.7"]
    opened = EgressPolicy(allow=["::/96", "64:ff9b::/96", "2002::/16"], local_addresses=local)
    direct = EgressPolicy(local_addresses=local).check("h", str(ipaddress.IPv4Address(v4)), 80)
    for form, ip in _embeddings(v4, suffix).items():
        assert opened.check("h", ip, 80).allowed is direct.allowed, (form, ip)


_MIXED = EgressPolicy(
    allow=["127.0.0.0/8", "db.corp.example:5432", "[2001:db8::/32]:443", "10.1.0.0/16"],
    deny=["127.0.0.9/32", "*.evil.example", "10.1.2.0/24:22"],
    local_addresses=["192.0.2.50"],
)


@given(
    host=st.sampled_from(
        ["127.0.0.2", "db.corp.example", "x.evil.example", "example.com", "10.1.2.3", "::1"]
    ),
    ip=st.sampled_from(
        [
            "127.0.0.2",
            "127.0.0.9",
            "10.1.2.3",
            "10.2.0.1",
            "2001:db8::1",
            "93.184.216.34",
            "192.0.2.50",
            "::ffff:127.0.0.9",
            "2002:7f00:9::",
            "not-an-ip",
        ]
    ),
    port=st.sampled_from([22, 443, 5432]),
)
def test_the_dialers_entry_judges_a_normalised_host_as_check_does(
    host: str, ip: str, port: int
) -> None:
    """The dialer normalises the host once and calls check_normalized and
    check_normalized_name; they must decide exactly as check and check_name."""
    assert _MIXED.check_normalized(host, ip, port) == _MIXED.check(host, ip, port)
    assert _MIXED.check_normalized_name(host, port) == _MIXED.check_name(host, port)


def test_an_allow_spec_and_the_default_name_their_reasons() -> None:
    assert _MIXED.check("a", "127.0.0.2", 80) == Decision(True, "allowed by --allow 127.0.0.0/8")
    assert _MIXED.check("a", "127.0.0.9", 80) == Decision(False, "denied by --deny 127.0.0.9/32")
    assert _MIXED.check("a", "93.184.216.34", 80) == Decision(True, "public address")
    assert _MIXED.check("a", "192.0.2.50", 80).reason.startswith("documentation (TEST-NET-1)")
    assert _MIXED.check("a", "10.1.2.3", 22) == Decision(False, "denied by --deny 10.1.2.0/24:22")
