"""Numeric IPv4 spellings are read as browsers read them (issue 10, item 4).

The WHATWG IPv4 parser (https://url.spec.whatwg.org/#concept-ipv4-parser) in
``fastrelay.protocol.hostname``, and client_a's rules matching every spelling of a listed
address as the address itself.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from client_a.rules import Rules
from fastrelay.protocol.hostname import (
    HostnameError,
    canonical_ipv4,
    ends_in_a_number,
    format_ipv4,
    normalize_hostname,
    parse_ipv4,
)

LOOPBACK = 0x7F000001
ISSUE_SPELLINGS = [
    "127.1",
    "0x7f.1",
    "0x7f000001",
    "2130706433",
    "0177.0.0.1",
    "127.000.000.001",
    "127.0.0.1.",
    "127.1.",
    "0X7F.0.0.1",
    "0x7F.0x0.0X0.0x1",
    "017700000001",
    "127.0.1",
]


@pytest.mark.parametrize("host", ISSUE_SPELLINGS)
def test_issue_spellings_are_loopback(host: str) -> None:
    assert parse_ipv4(host) == LOOPBACK
    assert canonical_ipv4(host) == "127.0.0.1"
    assert ends_in_a_number(host)
    assert normalize_hostname(host) == "127.0.0.1"


def test_zero_is_the_unspecified_address() -> None:
    assert parse_ipv4("0") == 0
    assert canonical_ipv4("0") == "0.0.0.0"


# Examples from the WHATWG URL standard's host parsing section and its URL test data.
@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("192.168.0.1", "192.168.0.1"),
        ("0xc0.0250.01", "192.168.0.1"),
        ("0300.0250.0000.0001", "192.168.0.1"),
        ("3232235521", "192.168.0.1"),
        ("0xc0a80001", "192.168.0.1"),
        ("192.0x00A80001", "192.168.0.1"),
        ("0x100.2.3", None),  # a non-last part over 255
        ("1.2.3.4.5", None),
        ("4294967295", "255.255.255.255"),
        ("4294967296", None),
        ("0xffffffff", "255.255.255.255"),
        ("0x100000000", None),
        ("256.0.0.1", None),
        ("1.2.3.256", None),
        ("1.2.65536", None),
        ("1.2.65535", "1.2.255.255"),
        ("1.16777215", "1.255.255.255"),
        ("1.16777216", None),
        ("0..0x300", None),
        ("09", None),  # octal with a non-octal digit
        ("08.1", None),
        ("0x", "0.0.0.0"),
        ("0x.0x.0", "0.0.0.0"),
        ("1.2.3.4..", None),
        ("", None),
        (".", None),
        ("example.com", None),
        ("1.2.3.4 ", None),
        ("1_0.0.0.1", None),  # int() would take the underscore
        ("+1.2.3.4", None),
        ("\u0661.2.3.4", None),  # ARABIC-INDIC DIGIT ONE: int() would take it
        ("1." + "0" * 5000 + "1", "1.0.0.1"),  # many leading zeros: octal 01
        ("1." + "9" * 5000, None),  # huge: out of range, not an int() error
    ],
)
def test_whatwg_examples(host: str, expected: str | None) -> None:
    assert canonical_ipv4(host) == expected
    value = parse_ipv4(host)
    assert (None if value is None else format_ipv4(value)) == expected


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("foo.1", True),
        ("foo.0x1f", True),
        ("foo.0x", True),
        ("1.2.3.4.", True),
        ("foo.09", True),  # all digits: an IPv4 address or nothing
        ("foo.0xg", False),
        ("example.com", False),
        ("1.2.3.4..", False),
        ("", False),
        (".", False),
        ("cafe", False),
    ],
)
def test_ends_in_a_number(host: str, expected: bool) -> None:
    assert ends_in_a_number(host) is expected


@pytest.mark.parametrize("host", ["1.2.3.256", "foo.1", "09", "1.2.3.4.5", "foo.0x1f"])
def test_a_name_ending_in_a_number_that_is_no_address_is_invalid(host: str) -> None:
    with pytest.raises(HostnameError, match="ends in a number"):
        normalize_hostname(host)


def test_normalize_hostname_reads_fullwidth_numeric_spellings() -> None:
    assert normalize_hostname("\uff11\uff12\uff17\uff0e\uff11") == "127.0.0.1"  # fullwidth 127.1


# --- Hypothesis: every spelling parses back; nothing else raises ---


def _number(value: int, style: str, zeros: int) -> str:
    if style == "hex":
        return "0x" + "0" * zeros + format(value, "x")
    if style == "HEX":
        return "0X" + "0" * zeros + format(value, "X")
    if style == "oct":
        return "0" + "0" * zeros + format(value, "o")
    return str(value)


@st.composite
def spellings(draw: st.DrawFn) -> tuple[int, str]:
    address = draw(st.integers(0, 2**32 - 1))
    count = draw(st.integers(1, 4))
    raw = address.to_bytes(4)
    parts = [int(b) for b in raw[: count - 1]]
    parts.append(int.from_bytes(raw[count - 1 :]))
    text = ".".join(
        _number(part, draw(st.sampled_from(["dec", "hex", "HEX", "oct"])), draw(st.integers(0, 3)))
        for part in parts
    )
    if draw(st.booleans()):
        text += "."
    return address, text


@given(spellings())
def test_any_spelling_parses_back(case: tuple[int, str]) -> None:
    address, text = case
    assert parse_ipv4(text) == address
    assert canonical_ipv4(text) == format_ipv4(address)
    assert normalize_hostname(text) == format_ipv4(address)
    assert Rules.parse(f"{format_ipv4(address)}/32").matches(text)


@given(st.text())
def test_arbitrary_text_is_an_address_or_none(text: str) -> None:
    value = parse_ipv4(text)
    assert value is None or 0 <= value < 2**32
    assert canonical_ipv4(text) is None or value is not None
    ends_in_a_number(text)  # only a bool, never an exception
    Rules.parse("127.0.0.0/8\n*.zzz\n").matches(text)


@given(st.text(alphabet="0123456789abcdefxX.", max_size=30))
def test_number_like_text_is_an_address_or_none(text: str) -> None:
    value = parse_ipv4(text)
    assert value is None or 0 <= value < 2**32
    if value is not None:
        assert parse_ipv4(format_ipv4(value)) == value


# --- client_a's rules ---


@pytest.mark.parametrize("host", [*ISSUE_SPELLINGS, "127.2", "0x7f.0x2", "2130706434"])
def test_spellings_match_the_loopback_cidr(host: str) -> None:
    rules = Rules.parse("127.0.0.0/8\n")
    assert rules.matches(host)
    assert rules.matches(host.upper())


def test_spellings_match_a_host_rule_as_the_address() -> None:
    rules = Rules.parse("127.0.0.2/32\n")
    for host in ("127.2", "127.0.2", "0x7f000002", "2130706434", "0177.0.0.02", "127.0.0.002"):
        assert rules.matches(host), host
    for host in ("127.1", "127.3", "2130706433", "127.0.0.2.."):
        assert not rules.matches(host), host


def test_zero_matches_the_this_network_rule() -> None:
    assert Rules.parse("0.0.0.0/8\n").matches("0")
    assert not Rules.parse("127.0.0.0/8\n").matches("0")


def test_names_still_match_as_names() -> None:
    rules = Rules.parse("127.0.0.0/8\n.example.com\n1x.test\n")
    assert rules.matches("www.example.com")
    assert rules.matches("1x.test")
    assert not rules.matches("127.example")
