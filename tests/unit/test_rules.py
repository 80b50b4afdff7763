from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from client_a.rules import (
    DEFAULT_POOL,
    Entry,
    Fallback,
    Rule,
    RuleError,
    Rules,
    check_pool_name,
    parse_entries,
)
from fastrelay.protocol.hostname import ends_in_a_number
from fastrelay.protocol.patterns import (
    HostPattern,
    PatternError,
    PatternKind,
    normalize_host,
    parse_ip,
    parse_pattern,
)

SAMPLE = """\
# whole-line comment
exact.example.com
*.sub.example.org   # subdomains only

.domain.net
203.0.113.0/24
127.0.0.2/32
10.9.8.7
2001:db8::/32
::1
"""


@pytest.fixture(scope="module")
def rules() -> Rules:
    return Rules.parse(SAMPLE)


def test_len_counts_patterns_not_comments_or_blanks(rules: Rules) -> None:
    assert len(rules) == 8
    assert len(Rules.parse("")) == 0
    assert len(Rules.parse("# only\n\n   \n")) == 0


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        # exact: the host only
        ("exact.example.com", True),
        ("www.exact.example.com", False),
        ("example.com", False),
        ("xexact.example.com", False),
        # *.x: subdomains only, at any depth, never x itself
        ("sub.example.org", False),
        ("a.sub.example.org", True),
        ("a.b.c.sub.example.org", True),
        ("asub.example.org", False),
        # .x: x and every subdomain
        ("domain.net", True),
        ("www.domain.net", True),
        ("deep.er.domain.net", True),
        ("notdomain.net", False),
        ("net", False),
        ("domain.net.evil.com", False),
    ],
)
def test_pattern_semantics(rules: Rules, host: str, expected: bool) -> None:
    assert rules.matches(host) is expected


@pytest.mark.parametrize(
    "host", ["EXACT.Example.COM", "exact.example.com.", "WWW.DOMAIN.NET.", "X.Sub.Example.Org"]
)
def test_case_insensitive_and_trailing_dot(rules: Rules, host: str) -> None:
    assert rules.matches(host)


def test_patterns_are_case_insensitive_and_ignore_trailing_dot() -> None:
    r = Rules.parse("Example.COM.\n*.CDN.Example.NET\n.Mixed.Org.")
    assert r.matches("example.com")
    assert r.matches("a.cdn.example.net")
    assert r.matches("mixed.org")
    assert r.matches("x.mixed.org")


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("203.0.113.0", True),
        ("203.0.113.255", True),
        ("203.0.114.0", False),
        ("203.0.112.255", False),
        ("127.0.0.2", True),
        ("127.0.0.1", False),
        ("127.0.0.3", False),
        ("10.9.8.7", True),
        ("10.9.8.6", False),
        ("2001:db8::1", True),
        ("2001:DB8:ffff::1", True),
        ("2001:db9::1", False),
        ("[2001:db8::1]", True),
        ("[::1]", True),
        ("::1", True),
        ("::2", False),
        # IPv4-mapped IPv6 is the same destination as the IPv4 address.
        ("::ffff:203.0.113.9", True),
        ("[::ffff:127.0.0.2]", True),
        ("::ffff:127.0.0.1", False),
    ],
)
def test_cidr_rules(rules: Rules, host: str, expected: bool) -> None:
    assert rules.matches(host) is expected


def test_ip_literals_only_match_cidrs_and_hostnames_only_host_rules() -> None:
    r = Rules.parse("10.0.0.0/8\n.example.com")
    assert r.matches("10.0.0.1")
    assert r.matches("10.0.0.1.example.com")  # a hostname, under .example.com
    assert not r.matches("11.0.0.1")
    assert not Rules.parse(".example.com").matches("10.0.0.1")
    # A hostname that merely starts with digits is not an IP literal.
    assert not Rules.parse("10.0.0.0/8").matches("10.0.0.1.nip.io")


def test_mapped_ipv6_cidr_rule_matches_plain_ipv4() -> None:
    r = Rules.parse("::ffff:192.0.2.0/120")
    assert r.matches("192.0.2.77")
    assert r.matches("::ffff:192.0.2.77")
    assert not r.matches("192.0.3.1")


def test_ipv6_zone_id_is_ignored() -> None:
    assert Rules.parse("fe80::/10").matches("fe80::1%eth0")


# "1.2.3" is no longer odd: browsers read it as 1.2.0.3 (see test_ipv4_spellings.py).
@pytest.mark.parametrize("host", ["", ".", "[]", "[", "foo..bar", "1.2.3.4.5", "1.2.3.256", "::g"])
def test_odd_hosts_do_not_crash_or_match(host: str) -> None:
    r = Rules.parse("0.0.0.0/0\n::/0\n*.zzz\n")
    assert r.matches(host) is False


def test_zero_prefix_matches_everything_of_that_family() -> None:
    r = Rules.parse("0.0.0.0/0")
    assert r.matches("8.8.8.8")
    assert not r.matches("2001:db8::1")


def test_trailing_and_whole_line_comments() -> None:
    r = Rules.parse("a.com # trailing\n  # indented comment\nb.com#tight\n\t\n")
    assert len(r) == 2
    assert r.matches("a.com")
    assert r.matches("b.com")
    assert not r.matches("trailing")


def test_crlf_line_endings() -> None:
    r = Rules.parse("a.com\r\nb.com\r\n")
    assert r.matches("b.com")


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("ok.com\n\n# c\nfoo..bar\n", 4, "empty label"),
        (".\n", 1, "no domain name"),
        ("*.\n", 1, "no domain name"),
        ("..example.com\n", 1, "empty label"),
        ("a.*.example.com\n", 1, "'*' is only allowed as a whole leading '*.' label"),
        ("*example.com\n", 1, "'*' is only allowed"),
        ("*.*.example.com\n", 1, "'*' is only allowed"),
        ("**.example.com\n", 1, "'*' is only allowed"),
        ("ex!ample.com\n", 1, "invalid character '!'"),
        ("bücher.de\n", 1, "punycode"),
        ("a.com\n" + "a" * 64 + ".com\n", 2, "longer than 63"),
        (".".join(["abcdefghi"] * 26) + "\n", 1, "259 characters long (max 253)"),
        ("203.0.113.0/33\n", 1, "invalid pattern '203.0.113.0/33'"),
        ("203.0.113.5/24\n", 1, "has host bits set"),
        ("10.0.0.256\n", 1, "looks like an IPv4 address"),
        ("1.2.3\n", 1, "looks like an IPv4 address"),
        ("2001:db8::/129\n", 1, "invalid pattern '2001:db8::/129'"),
        ("2001:db8::zz\n", 1, "2001:db8::zz"),
        ("example.123\n", 1, "last label is a number"),
        # Found by fuzz_rules (issue 10): names a browser reads as IPv4 addresses, which a
        # name pattern could never match, were accepted.
        ("0x\n", 1, "last label is a number (decimal, or 0x hex)"),
        ("a.0x1f\n", 1, "a browser reads the name as an IPv4 address"),
        ("*.a.0X10\n", 1, "last label is a number"),
        ("0.A.0.A\n0x\n", 2, "last label is a number"),
        ("1.0x1\n", 1, "last label is a number"),
        ("example.com/8\n", 1, "example.com/8"),
    ],
)
def test_errors_name_source_line_and_problem(text: str, line: int, fragment: str) -> None:
    with pytest.raises(RuleError) as info:
        Rules.parse(text, source="rules.txt")
    assert info.value.line == line
    assert str(info.value).startswith(f"rules.txt:{line}: invalid pattern ")
    assert fragment in str(info.value)


def test_error_stops_at_first_bad_line() -> None:
    with pytest.raises(RuleError) as info:
        Rules.parse("good.com\nbad..one\nbad..two\n")
    assert info.value.line == 2
    assert "bad..one" in str(info.value)
    assert str(info.value).startswith("<rules>:2:")


def test_rule_error_is_value_error() -> None:
    assert issubclass(RuleError, ValueError)


def test_max_length_hostname_is_accepted() -> None:
    name = ".".join(["a" * 63] * 3 + ["b" * 61])
    assert len(name) == 253
    assert Rules.parse(name).matches(name.upper())


def test_underscore_and_hyphen_labels_are_valid() -> None:
    r = Rules.parse("_dmarc.example.com\n.my-host.example")
    assert r.matches("_DMARC.example.com")
    assert r.matches("a.my-host.example")


def test_load_from_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.txt"
    path.write_text("\ufeff# with BOM\n.example.com\n198.51.100.0/24\n", encoding="utf-8")
    r = Rules.load(path)
    assert len(r) == 2
    assert r.matches("www.example.com")
    assert r.matches("198.51.100.200")
    assert Rules.load(str(path)).matches("example.com")


def test_load_reports_path_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_text("ok.com\n# fine\nnot..valid\n", encoding="utf-8")
    with pytest.raises(RuleError) as info:
        Rules.load(path)
    assert info.value.line == 3
    assert str(info.value).startswith(f"{path}:3: invalid pattern 'not..valid'")


def test_load_reports_invalid_utf8_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"ok.com\nb\xfccher.de\n")
    with pytest.raises(RuleError) as info:
        Rules.load(path)
    assert info.value.line == 2
    assert "not valid UTF-8" in str(info.value)


def test_load_missing_file_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Rules.load(tmp_path / "nope.txt")


def test_parse_pattern_kinds() -> None:
    assert parse_pattern("A.com.") == HostPattern(PatternKind.EXACT, "a.com")
    assert parse_pattern("*.a.com") == HostPattern(PatternKind.SUBDOMAINS, "a.com")
    assert parse_pattern(".a.com") == HostPattern(PatternKind.DOMAIN, "a.com")
    assert parse_pattern("10.0.0.1") == ipaddress.ip_network("10.0.0.1/32")
    assert parse_pattern("::1") == ipaddress.ip_network("::1/128")
    with pytest.raises(PatternError):
        parse_pattern("")


def test_host_pattern_matches_agrees_with_rules() -> None:
    for text in ["a.com", "*.a.com", ".a.com"]:
        pattern = parse_pattern(text)
        assert isinstance(pattern, HostPattern)
        single = Rules([pattern])
        for host in ["a.com", "x.a.com", "y.x.a.com", "ba.com", "com"]:
            assert pattern.matches(host) is single.matches(host), (text, host)


def test_normalize_host_and_parse_ip() -> None:
    assert normalize_host("[::1]") == "::1"
    assert normalize_host("WWW.Example.COM.") == "www.example.com"
    assert parse_ip("127.0.0.1") == (4, 0x7F000001)
    assert parse_ip("::ffff:127.0.0.1") == (4, 0x7F000001)
    assert parse_ip("::1") == (6, 1)
    assert parse_ip("example.com") is None
    assert parse_ip("01.2.3.4") is None  # leading zeros are ambiguous (octal in some stacks)
    assert parse_ip("") is None


def test_100k_rules_build_and_match() -> None:
    lines = [f"host{i}.example.com" for i in range(40_000)]
    lines += [f".dom{i}.net" for i in range(30_000)]
    lines += [f"*.svc{i}.cdn.org" for i in range(10_000)]
    lines += [f"10.{i // 256}.{i % 256}.0/24" for i in range(15_000)]
    lines += [f"2001:db8:{i:x}::/48" for i in range(5_000)]
    r = Rules.parse("\n".join(lines))
    assert len(r) == 100_000
    assert r.matches("host39999.example.com")
    assert not r.matches("host40000.example.com")
    assert not r.matches("www.host1.example.com")
    assert r.matches("dom29999.net")
    assert r.matches("a.b.c.dom0.net")
    assert not r.matches("dom30000.net")
    assert r.matches("x.svc9999.cdn.org")
    assert not r.matches("svc9999.cdn.org")
    assert r.matches("10.58.151.1")  # 14999 = 58*256 + 151
    assert not r.matches("10.58.152.1")
    assert r.matches("2001:db8:1387::5")
    assert not r.matches("2001:db8:1388::5")
    assert not r.matches("a.b.c.d.e.f.g.h.i.j.k.l.example.com")


# --- properties -----------------------------------------------------------------------------

_label = st.from_regex(r"[a-z0-9_-]{1,12}", fullmatch=True).filter(lambda s: not s.isdigit())
# A name that ends in a number (12, 0x1f) is an IPv4 address to a browser, never a pattern.
_name = (
    st.lists(_label, min_size=1, max_size=4)
    .map(".".join)
    .filter(lambda name: not ends_in_a_number(name))
)


@given(domain=_name, prefix=st.lists(_label, max_size=5), upper=st.booleans())
def test_any_host_under_dot_domain_matches(domain: str, prefix: list[str], upper: bool) -> None:
    host = ".".join([*prefix, domain])
    r = Rules.parse(f".{domain}")
    assert r.matches(host.upper() if upper else host)
    star = Rules.parse(f"*.{domain}")
    assert star.matches(host) is bool(prefix)


@given(rules=st.lists(_name, min_size=1, max_size=20), host=_name)
def test_host_not_under_any_rule_never_matches(rules: list[str], host: str) -> None:
    def under(h: str, d: str) -> bool:
        return h == d or h.endswith("." + d)

    # Reference semantics written independently of the set/suffix-walk implementation.
    compiled = Rules.parse("\n".join(f".{d}" for d in rules))
    assert compiled.matches(host) is any(under(host, d) for d in rules)


@given(
    entries=st.lists(st.tuples(st.sampled_from(["", "*.", "."]), _name), min_size=1, max_size=15),
    host=_name,
)
def test_rules_agree_with_reference(entries: list[tuple[str, str]], host: str) -> None:
    def ref(prefix: str, d: str) -> bool:
        sub = host.endswith("." + d)
        return {"": host == d, "*.": sub, ".": host == d or sub}[prefix]

    r = Rules.parse("\n".join(p + d for p, d in entries))
    assert r.matches(host) is any(ref(p, d) for p, d in entries)


@given(
    net=st.ip_addresses().flatmap(
        lambda a: st.integers(0, a.max_prefixlen).map(
            lambda n: ipaddress.ip_network((a, n), strict=False)
        )
    ),
    addr=st.ip_addresses(),
)
def test_cidr_matches_agree_with_ipaddress(
    net: ipaddress.IPv4Network | ipaddress.IPv6Network,
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    # ::ffff:0:0/96 addresses are folded to IPv4 by design; keep the reference simple.
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if isinstance(net, ipaddress.IPv6Network) and net.subnet_of(
        ipaddress.IPv6Network("::ffff:0:0/96")
    ):
        return
    r = Rules.parse(str(net))
    assert r.matches(str(addr)) is (addr.version == net.version and addr in net)


# --- pools and fallback (issue 13 parts 3 and 4) ------------------------------------------

POOLS = """\
.corp.example @corp
*.shop.example fallback=direct
plain.example
[pool lab]
.lab.example
10.0.0.0/8
10.1.0.0/16 @edge fallback=direct
.x.lab.example @corp fallback=closed
[pool default]
after.example
"""


@pytest.mark.parametrize(
    ("host", "rule"),
    [
        ("corp.example", Rule("corp")),
        ("a.corp.example", Rule("corp")),
        ("a.shop.example", Rule(fallback=Fallback.DIRECT)),
        ("shop.example", None),
        ("plain.example", Rule()),
        ("lab.example", Rule("lab")),
        ("y.lab.example", Rule("lab")),
        ("x.lab.example", Rule("corp")),
        ("z.x.lab.example", Rule("corp")),
        ("10.2.3.4", Rule("lab")),
        ("10.1.2.3", Rule("edge", Fallback.DIRECT)),
        ("11.1.2.3", None),
        ("after.example", Rule()),
        ("unlisted.example", None),
    ],
)
def test_lookup_pools_sections_and_fallback(host: str, rule: Rule | None) -> None:
    r = Rules.parse(POOLS)
    assert r.lookup(host) == rule
    assert r.matches(host) is (rule is not None)


def test_len_and_repr_show_pools_and_fallback() -> None:
    r = Rules.parse(POOLS)
    assert len(r) == 8
    assert r.pools == {"corp": 2, "default": 3, "lab": 2, "edge": 1}
    assert r.fallback_direct == 2
    assert repr(r) == (
        "<Rules: 8 patterns, pools: corp=2, default=3, edge=1, lab=2, 2 with fallback=direct>"
    )
    assert repr(Rules()) == "<Rules: 0 patterns, pools: -, 0 with fallback=direct>"


@pytest.mark.parametrize(
    ("text", "host", "pool"),
    [
        # exact name beats a suffix rule, whatever the order
        (".example.com @s\nwww.example.com @e", "www.example.com", "e"),
        ("www.example.com @e\n.example.com @s", "www.example.com", "e"),
        # for the name itself, 'name' beats '.name', whatever the order
        ("example.com @e\n.example.com @d", "example.com", "e"),
        (".example.com @d\nexample.com @e", "example.com", "e"),
        (".example.com @d\nexample.com @e", "a.example.com", "d"),
        # the longest suffix wins, whatever the order
        (".example.com @short\n.a.example.com @long", "b.a.example.com", "long"),
        (".a.example.com @long\n.example.com @short", "b.a.example.com", "long"),
        ("*.a.example.com @long\n.example.com @short", "a.example.com", "short"),
        # equally specific: the later line
        (".example.com @one\n*.example.com @two", "a.example.com", "two"),
        (".example.com @one\n.example.com @two", "example.com", "two"),
        # the longest prefix wins, whatever the order
        ("10.0.0.0/8 @short\n10.1.0.0/16 @long", "10.1.2.3", "long"),
        ("10.1.0.0/16 @long\n10.0.0.0/8 @short", "10.1.2.3", "long"),
        ("10.1.0.0/16 @long\n10.0.0.0/8 @short", "10.2.2.3", "short"),
        ("2001:db8::/32 @short\n2001:db8:1::/48 @long", "[2001:db8:1::5]", "long"),
        ("10.0.0.0/8 @one\n10.0.0.0/8 @two", "10.0.0.1", "two"),
    ],
)
def test_most_specific_rule_wins(text: str, host: str, pool: str) -> None:
    rule = Rules.parse(text).lookup(host)
    assert rule is not None
    assert rule.pool == pool


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (
            "ok.com\nexa mple.com\n",
            2,
            "invalid rule 'exa mple.com': unexpected 'mple.com' after the pattern "
            "(one pattern per line; options: @POOL, fallback=direct|closed)",
        ),
        ("a.com @\n", 1, "invalid rule 'a.com @': empty pool name"),
        (
            "a.com @Corp\n",
            1,
            "invalid rule 'a.com @Corp': invalid pool name 'Corp': 1-64 characters of "
            "a-z 0-9 _ -, starting with a letter or digit",
        ),
        ("a.com @-x\n", 1, "invalid pool name '-x'"),
        ("a.com @a.b\n", 1, "invalid pool name 'a.b'"),
        ("a.com @" + "p" * 65 + "\n", 1, "pool name is 65 characters long (max 64)"),
        (
            "a.com @one @two\n",
            1,
            "invalid rule 'a.com @one @two': duplicate pool option '@two' (one @POOL per rule)",
        ),
        (
            "a.com fallback=direct fallback=closed\n",
            1,
            "invalid rule 'a.com fallback=direct fallback=closed': duplicate option 'fallback'",
        ),
        (
            "a.com fallback=open\n",
            1,
            "invalid rule 'a.com fallback=open': invalid fallback 'open' "
            "(expected 'direct' or 'closed')",
        ),
        ("a.com fallback=\n", 1, "invalid fallback ''"),
        (
            "a.com pool=corp\n",
            1,
            "invalid rule 'a.com pool=corp': unknown option 'pool' "
            "(options: @POOL, fallback=direct|closed)",
        ),
        (
            "[::1]\n",
            1,
            "invalid section header '[::1]' (expected '[pool NAME]' or '[pushed on|off]'; "
            "IPv6 patterns are written without brackets)",
        ),
        ("[pool corp\n", 1, "invalid section header '[pool corp'"),
        (
            "ok.com\n[agents corp]\n",
            2,
            "unknown section 'agents' in '[agents corp]' "
            "(expected '[pool NAME]' or '[pushed on|off]')",
        ),
        ("[pool]\n", 1, "invalid section header '[pool]': empty pool name"),
        ("[pool a b]\n", 1, "invalid section header '[pool a b]': invalid pool name 'a b'"),
        ("[pool UPPER]\n", 1, "invalid pool name 'UPPER'"),
        ("@corp\n", 1, "invalid pattern '@corp'"),
        ("[pool1]\n", 1, "invalid section header '[pool1]'"),
    ],
)
def test_option_and_section_errors(text: str, line: int, message: str) -> None:
    with pytest.raises(RuleError) as info:
        Rules.parse(text, source="rules.txt")
    assert info.value.line == line
    assert str(info.value).startswith(f"rules.txt:{line}: ")
    assert message in str(info.value)


def test_section_pool_and_line_pool_and_whitespace() -> None:
    r = Rules.parse(
        "[ pool  corp ]\n\ta.com\t@x\tfallback=direct  # c\nb.com\n[pool default]\nc.com"
    )
    assert r.lookup("a.com") == Rule("x", Fallback.DIRECT)
    assert r.lookup("b.com") == Rule("corp")
    assert r.lookup("c.com") == Rule()
    assert check_pool_name("a" * 64) is None
    assert check_pool_name("0_-z") is None


_pool = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,63}", fullmatch=True)
_rule = st.builds(Rule, _pool, st.sampled_from(Fallback))
_network = st.ip_addresses().flatmap(
    lambda a: st.integers(0, a.max_prefixlen).map(
        lambda n: ipaddress.ip_network((a, n), strict=False)
    )
)
_pattern = st.one_of(
    st.builds(HostPattern, st.sampled_from(PatternKind), _name),
    _network.map(lambda net: parse_pattern(str(net))),
)


@given(entries=st.lists(st.builds(Entry, _pattern, _rule), max_size=10))
def test_formatted_entries_parse_back(entries: list[Entry]) -> None:
    text = "\n".join(entry.format() for entry in entries)
    assert parse_entries(text) == entries
    assert len(Rules.parse(text)) == len(entries)


@given(
    entries=st.lists(st.builds(Entry, _pattern, _rule), max_size=10),
    pool=_pool,
)
def test_section_pool_applies_to_lines_without_their_own(entries: list[Entry], pool: str) -> None:
    lines = [e.format() for e in entries]
    parsed = parse_entries(f"[pool {pool}]\n" + "\n".join(lines))
    for before, after in zip(entries, parsed, strict=True):
        expected = before.rule.pool if before.rule.pool != DEFAULT_POOL else pool
        assert after == Entry(before.pattern, Rule(expected, before.rule.fallback))


_line_token = st.one_of(
    st.sampled_from(
        ["@", "@corp", "@C", "fallback=", "fallback=direct", "fallback=x", "x=y", "[", "]", "#"]
    ),
    st.sampled_from(["[pool ", "[pool corp]", "a.com", ".a.com", "*.a", "10.0.0.0/8", "::1"]),
    st.text(max_size=8),
)


@given(st.lists(st.lists(_line_token, max_size=5).map(" ".join), max_size=6).map("\n".join))
def test_any_text_parses_or_raises_rule_error(text: str) -> None:
    try:
        r = Rules.parse(text, source="f")
    except RuleError as exc:
        assert str(exc).startswith(f"f:{exc.line}: ")
        assert 1 <= exc.line <= max(1, len(text.splitlines()))
    else:
        for host in ["a.com", "x.a.com", "10.1.1.1", "::1", ""]:
            rule = r.lookup(host)
            assert rule is None or check_pool_name(rule.pool) is None


@given(
    entries=st.lists(
        st.tuples(st.sampled_from(["", "*.", "."]), _name, _pool), min_size=1, max_size=12
    ),
    host=_name,
)
def test_lookup_agrees_with_reference_specificity(
    entries: list[tuple[str, str, str]], host: str
) -> None:
    def rank(prefix: str, d: str) -> tuple[int, int] | None:
        """(specificity, tie-break) of a matching rule; None if it does not match."""
        if host == d and prefix == "":
            return (3, 0)
        if host == d and prefix == ".":
            return (2, 0)
        if host.endswith("." + d) and prefix in ("*.", "."):
            return (1, len(d))
        return None

    best: tuple[tuple[int, int], int] | None = None
    for i, (prefix, d, _) in enumerate(entries):
        r = rank(prefix, d)
        if r is not None and (best is None or (r, i) >= best):
            best = (r, i)
    rules = Rules.parse("\n".join(f"{p}{d} @{pool}" for p, d, pool in entries))
    got = rules.lookup(host)
    if best is None:
        assert got is None
    else:
        assert got == Rule(entries[best[1]][2])
