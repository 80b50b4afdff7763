"""Host normalisation before the agent's policy and dial (issue 10, items 1 and 2)."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.dialer import DialFailure, dial
from agent.policy import Decision, EgressPolicy
from fastrelay.protocol.hostname import HostnameError, canonical_ipv4, normalize_hostname
from fastrelay.protocol.status import Failure


def fullwidth(text: str) -> str:
    """``text`` with its ASCII letters, digits, '-' and '.' in fullwidth forms (U+FF01...)."""
    return "".join(chr(ord(c) + 0xFEE0) if c.isalnum() or c in "-." else c for c in text)


LOOK_ALIKE = "\uff52t-loop.test"  # fullwidth r (U+FF52), then ASCII

BAD_NAMES = [
    ("a..b.test", "empty label"),
    ("x.test..", "empty label"),
    (".x.test", "empty label"),
    ("", "empty name"),
    (".", "empty name"),
    ("a" * 64 + ".test", "longer than 63"),
    ("a." * 150, "longer than 253"),
    ("a" * 300, "longer than 63"),
    ("a b.test", "may hold only"),
    ("a\r\nb.test", "may hold only"),
    ("\u200d.test", "not allowed"),
    ("é" * 70 + ".test", "too long"),
    ("[not-v6]", "not an IPv6 address"),
    ("host:80", "outside an IPv6 address"),
]


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("example.com", "example.com"),
        ("Example.COM.", "example.com"),
        (LOOK_ALIKE, "rt-loop.test"),
        (fullwidth("RT-LOOP.test"), "rt-loop.test"),
        ("rt-loop\u3002test", "rt-loop.test"),
        ("bücher.de", "xn--bcher-kva.de"),
        ("XN--BCHER-KVA.de", "xn--bcher-kva.de"),
        ("_dmarc.example.com", "_dmarc.example.com"),
        ("127.0.0.1", "127.0.0.1"),
        ("127.0.0.1.", "127.0.0.1"),
        (fullwidth("127.0.0.1"), "127.0.0.1"),
        ("[::1]", "::1"),
        ("::FFFF:127.0.0.1", "::ffff:127.0.0.1"),
        ("FE80::1%eth0", "fe80::1%eth0"),
        ("a" * 63 + ".test", "a" * 63 + ".test"),
    ],
)
def test_normalises(host: str, expected: str) -> None:
    assert normalize_hostname(host) == expected


@pytest.mark.parametrize(("host", "fragment"), BAD_NAMES)
def test_names_that_cannot_be_encoded_raise_hostname_error(host: str, fragment: str) -> None:
    with pytest.raises(HostnameError) as info:
        normalize_hostname(host)
    message = str(info.value)
    assert message.startswith("invalid host ")
    assert fragment in message
    assert "\n" not in message and "\r" not in message  # one log line at most
    assert len(message) < 200


def test_hostname_error_is_value_error() -> None:
    assert issubclass(HostnameError, ValueError)


@given(st.text(max_size=300))
def test_arbitrary_text_normalises_or_raises_hostname_error(host: str) -> None:
    try:
        name = normalize_hostname(host)
    except HostnameError:
        return
    assert name.isascii()
    assert name == name.lower() or "%" in name  # an IPv6 zone keeps its case
    assert normalize_hostname(name) == name  # idempotent
    if ":" not in name:
        assert 0 < len(name) <= 253
        assert all(0 < len(label) <= 63 for label in name.split("."))


@given(
    st.lists(
        st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=20),
        min_size=1,
        max_size=5,
    )
)
def test_dotted_unicode_names_normalise_or_raise_hostname_error(labels: list[str]) -> None:
    host = ".".join(labels)
    try:
        name = normalize_hostname(host)
    except HostnameError:
        return
    assert normalize_hostname(name) == name


@pytest.mark.parametrize(
    "host", [LOOK_ALIKE, "RT-LOOP.TEST.", fullwidth("rt-loop.test"), "rt-loop\u3002test"]
)
def test_deny_catches_look_alikes(host: str) -> None:
    policy = EgressPolicy(allow=["127.0.0.0/8"], deny=["rt-loop.test"])
    denied = Decision(False, "denied by --deny rt-loop.test")
    assert policy.check(host, "127.0.0.2", 443) == denied
    assert policy.check_name(host, 443) == denied


def test_deny_catches_look_alike_subdomain_pattern() -> None:
    policy = EgressPolicy(deny=[".evil.example"])
    assert not policy.check(fullwidth("a.evil") + ".example", "1.2.3.4", 80).allowed
    assert policy.check_name(fullwidth("a.evil") + ".example", 80) is not None


def test_check_name_only_for_name_denies() -> None:
    policy = EgressPolicy(allow=["ok.example"], deny=["10.0.0.0/8", "mail.example:25"])
    assert policy.check_name("ok.example", 443) is None  # an allow needs the address too
    assert policy.check_name("10.0.0.1", 443) is None  # a CIDR deny needs the address
    assert policy.check_name("mail.example", 587) is None
    assert policy.check_name("\uff4dail.example", 25) == Decision(
        False, "denied by --deny mail.example:25"
    )


@pytest.mark.parametrize(("host", "fragment"), BAD_NAMES)
def test_policy_fails_closed_on_bad_names(host: str, fragment: str) -> None:
    policy = EgressPolicy(allow=["0.0.0.0/0"])
    decision = policy.check(host, "8.8.8.8", 443)
    assert decision.allowed is False
    assert fragment in decision.reason
    refusal = policy.check_name(host, 443)
    assert refusal is not None and not refusal.allowed


class _NoLookups:
    """A resolver the dial must not reach: these names are refused before any look-up."""

    async def resolve(self, host: str) -> list[str]:
        raise AssertionError(f"{host!r} was looked up")


def _dial(host: str, policy: EgressPolicy) -> DialFailure:
    async def run() -> DialFailure:
        with pytest.raises(DialFailure) as info:
            await dial(None, host, 443, policy, _NoLookups())  # type: ignore[arg-type]
        return info.value

    return asyncio.run(run())


@pytest.mark.parametrize(("host", "fragment"), BAD_NAMES)
def test_dial_refuses_bad_names_with_502_dns(host: str, fragment: str) -> None:
    failure = _dial(host, EgressPolicy(allow=["127.0.0.0/8"]))
    assert (failure.failure.status, failure.failure.reason) == (502, "dns")
    assert fragment in failure.message


def test_dial_denies_look_alike_before_resolving() -> None:
    # .invalid never resolves: a 403, not a DNS failure, shows the name was refused first.
    failure = _dial("\uff52t-loop.invalid", EgressPolicy(deny=["rt-loop.invalid"]))
    assert failure == DialFailure(Failure.DENIED, "egress policy: denied by --deny rt-loop.invalid")


@given(
    st.lists(
        st.from_regex(r"0{0,2}[0-9]{1,3}", fullmatch=True) | st.integers(0, 300).map(str),
        min_size=4,
        max_size=4,
    ).map(".".join)
)
def test_a_dotted_quad_normalises_as_the_full_path_does(host: str) -> None:
    """normalize_hostname and canonical_ipv4 return a strict dotted quad as it is (a fast
    path); with a trailing dot the same address takes the full WHATWG path, which must agree."""
    assert canonical_ipv4(host) == canonical_ipv4(host + ".")
    try:
        expected = normalize_hostname(host + ".")
    except HostnameError:
        with pytest.raises(HostnameError):
            normalize_hostname(host)
    else:
        assert normalize_hostname(host) == expected
