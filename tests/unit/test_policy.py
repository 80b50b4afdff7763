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
