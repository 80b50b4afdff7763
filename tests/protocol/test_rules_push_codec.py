"""Rules pushed from the relay, pure parts: the canonical text, the RULES codec, the merge with
client_a's own file, and how the switch and a session carry RULES (fastrelay/protocol/)."""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastrelay.protocol.errors import CLOSE_PROTOCOL_ERROR, ControlMessageError
from fastrelay.protocol.frames import FrameType, encode_frame, iter_frames
from fastrelay.protocol.pair import Pair
from fastrelay.protocol.patterns import HostPattern, PatternKind
from fastrelay.protocol.rules import (
    MAX_PUSHED_RULES_BYTES,
    MAX_RULES_PAYLOAD,
    Entry,
    Fallback,
    PushedRules,
    Rule,
    RuleError,
    Rules,
    RulesFile,
    canonical_text,
    merge,
    parse_rules_file,
)

# --- strategies: rules as values, not text ---

labels = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=8).filter(
    lambda s: not s.startswith("-") and not s.endswith("-")
)
names = (
    st.lists(labels, min_size=1, max_size=3)
    .map(".".join)
    .filter(lambda n: not n.replace(".", "").isdigit() and not n.split(".")[-1].isdigit())
)
host_patterns = st.builds(HostPattern, st.sampled_from(list(PatternKind)), names)
v4_networks = st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)).map(
    lambda t: ipaddress.IPv4Network((t[0], t[1]), strict=False)
)
v6_networks = st.tuples(st.integers(0, 2**128 - 1), st.integers(0, 128)).map(
    lambda t: ipaddress.IPv6Network((t[0], t[1]), strict=False)
)
patterns = st.one_of(host_patterns, v4_networks, v6_networks)
pools = st.sampled_from(["default", "corp", "lab-2", "x_y"])
rules = st.builds(Rule, pools, st.sampled_from(list(Fallback)))
entries = st.builds(Entry, patterns, rules)
entry_lists = st.lists(entries, max_size=12)


def parses_back(pattern: object) -> bool:
    """IPv4-mapped IPv6 networks are written as IPv4 ones by the parser: not a round trip of
    the value, only of what it matches (the existing Entry.format contract)."""
    return not (isinstance(pattern, ipaddress.IPv6Network) and pattern.network_address.ipv4_mapped)


# --- canonical text and the RULES codec ---


@given(entry_lists)
def test_canonical_text_round_trips(items: list[Entry]) -> None:
    items = [e for e in items if parses_back(e.pattern)]
    text = canonical_text(items)
    parsed = parse_rules_file(text, local=False)
    assert list(parsed.entries) == items
    assert parsed.pushed is True
    assert canonical_text(parsed.entries) == text  # a fixed point


@given(entry_lists)
def test_rules_frame_round_trips(items: list[Entry]) -> None:
    items = [e for e in items if parses_back(e.pattern)]
    pushed = PushedRules.from_entries(items)
    frames = list(iter_frames(pushed.encode()))
    assert len(frames) == 1
    frame_type, flags, stream_id, offset, length = frames[0]
    assert (frame_type, flags, stream_id) == (FrameType.RULES, 0, 0)
    decoded = PushedRules.decode(pushed.encode()[offset : offset + length])
    assert decoded == pushed
    assert decoded.version == hashlib.sha256(pushed.text.encode()).hexdigest()


@pytest.mark.parametrize(
    "text",
    [
        "a\n" * (MAX_PUSHED_RULES_BYTES // 2),  # the shortest lines: the most escaping
        "".join(f"h{n:06d}.example.com @corp\n" for n in range(10_000)),  # 260,000 bytes
    ],
    ids=["short-lines", "10000-rules"],
)
def test_rules_up_to_the_limit_decode(text: str) -> None:
    pushed = PushedRules.from_entries(parse_rules_file(text, local=False).entries)
    assert pushed.size <= MAX_PUSHED_RULES_BYTES
    frame = pushed.encode()
    assert len(frame) - 10 <= MAX_RULES_PAYLOAD
    assert PushedRules.decode(frame[10:]) == pushed


def test_same_rules_written_differently_have_one_version() -> None:
    a = "# corp hosts\n[pool corp]\n.corp.example\n10.0.0.0/8   fallback=direct\n"
    b = ".corp.example @corp\n\n10.0.0.0/8 fallback=direct @corp  # the lab\n"
    pa = PushedRules.from_entries(parse_rules_file(a, local=False).entries)
    pb = PushedRules.from_entries(parse_rules_file(b, local=False).entries)
    assert pa.version == pb.version
    assert pa.text == ".corp.example @corp\n10.0.0.0/8 @corp fallback=direct\n"
    # Order is part of the meaning (the later of two equal rules wins), so of the version.
    c = "10.0.0.0/8 fallback=direct @corp\n.corp.example @corp\n"
    assert PushedRules.from_entries(parse_rules_file(c, local=False).entries).version != pa.version


def _payload(**fields: object) -> bytes:
    return orjson.dumps({"type": "RULES", **fields})


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"{", "RULES payload is not JSON"),
        (b"[]", "RULES payload must be a JSON object"),
        (orjson.dumps({"type": "HELLO"}), "RULES frame carries a message of type 'HELLO'"),
        (_payload(rules="a.example\n"), "RULES is missing 'version'"),
        (_payload(version=_sha("")), "RULES is missing 'rules'"),
        (_payload(version=_sha(""), rules=7), "RULES field 'rules' must be str"),
        (_payload(version="ABC", rules=""), "RULES version must be 64 lowercase hex digits"),
        (
            _payload(version=_sha("b.example\n"), rules="a.example\n"),
            "RULES version is not the SHA-256 of its rules",
        ),
        (
            _payload(version=_sha("ok.example\n*.x*\n"), rules="ok.example\n*.x*\n"),
            "RULES rules line 2: invalid pattern '*.x*'",
        ),
        (
            _payload(version=_sha("[pushed off]\n"), rules="[pushed off]\n"),
            "RULES rules line 1: '[pushed off]' belongs in client_a's own rules file",
        ),
        (
            _payload(version=_sha("a\n" * 200_000), rules="a\n" * 200_000),
            f"bytes, over the limit of {MAX_RULES_PAYLOAD}",
        ),
        (
            _payload(
                version=_sha("a" * (MAX_PUSHED_RULES_BYTES + 2)),
                rules="a" * (MAX_PUSHED_RULES_BYTES + 2),
            ),
            f"RULES carries {MAX_PUSHED_RULES_BYTES + 2} bytes of rules, over the limit",
        ),
    ],
    ids=[
        "not-json",
        "not-object",
        "wrong-type",
        "no-version",
        "no-rules",
        "rules-not-str",
        "bad-version",
        "version-mismatch",
        "bad-line",
        "directive",
        "oversized-payload",
        "oversized-rules",
    ],
)
def test_malformed_rules_payload(payload: bytes, message: str) -> None:
    with pytest.raises(ControlMessageError) as info:
        PushedRules.decode(payload)
    assert message in str(info.value)


@given(st.binary(max_size=200))
def test_arbitrary_payload_decodes_or_raises_control_error(data: bytes) -> None:
    with contextlib.suppress(ControlMessageError):
        PushedRules.decode(data)


# --- the merge with client_a's own file ---


@given(entry_lists, entry_lists)
def test_merge_local_wins(local: list[Entry], pushed: list[Entry]) -> None:
    merged, in_effect = merge(RulesFile(tuple(local)), pushed)
    local_patterns = {e.pattern for e in local}
    # Every local rule is there, in order, after every pushed one.
    assert merged[len(merged) - len(local) :] == local
    kept = merged[: len(merged) - len(local)]
    assert in_effect == len(kept)
    # No pushed rule for a pattern the local file names survives; every other one does.
    assert kept == [e for e in pushed if e.pattern not in local_patterns]


@given(entry_lists, st.data())
def test_pushed_rules_for_local_patterns_change_no_routing(
    local: list[Entry], data: st.DataObject
) -> None:
    """Pushed rules for exactly the local file's patterns, with any options: every host is
    routed as by the local file alone.  (A pushed rule for another, more specific pattern
    may still decide a host: specificity comes before the source.)"""
    pushed = [Entry(e.pattern, data.draw(rules)) for e in data.draw(st.permutations(local))]
    merged, in_effect = merge(RulesFile(tuple(local)), pushed)
    assert in_effect == 0
    compiled, alone = Rules(merged), Rules(local)
    for entry in local:
        p = entry.pattern
        if isinstance(p, HostPattern):
            hosts = [p.name, "w." + p.name]
        else:
            hosts = [str(p.network_address), str(p.broadcast_address)]
        for host in hosts:
            assert compiled.lookup(host) == alone.lookup(host), host


@given(entry_lists, entry_lists)
def test_pushed_off_gives_exactly_the_local_rules(local: list[Entry], pushed: list[Entry]) -> None:
    merged, in_effect = merge(RulesFile(tuple(local), pushed=False), pushed)
    assert merged == local
    assert in_effect == 0


@given(entry_lists)
def test_merge_with_nothing_local_is_the_pushed_rules(pushed: list[Entry]) -> None:
    merged, in_effect = merge(RulesFile(), pushed)
    assert merged == pushed
    assert in_effect == len(pushed)


def test_pushed_directive() -> None:
    assert parse_rules_file("[pushed off]\na.example\n").pushed is False
    assert parse_rules_file("[pushed off]\n[pushed on]\n").pushed is True
    with pytest.raises(RuleError, match=r"rules:2: invalid directive '\[pushed maybe\]'"):
        parse_rules_file("a.example\n[pushed maybe]\n", "rules")
    with pytest.raises(RuleError, match=r"f:1: '\[pushed off\]' belongs in client_a's own"):
        parse_rules_file("[pushed off]\n", "f", local=False)


def test_merge_same_pattern_takes_local_options() -> None:
    local = parse_rules_file(".corp.example fallback=direct\n")
    pushed = parse_rules_file(".corp.example @corp\nother.example @corp\n", local=False)
    merged, in_effect = merge(local, pushed.entries)
    rules = Rules(merged)
    assert rules.lookup("a.corp.example") == Rule("default", Fallback.DIRECT)
    assert rules.lookup("other.example") == Rule("corp")
    assert in_effect == 1


# --- the switch pushes, a session receives ---


def _rules_frames(data: bytes) -> list[PushedRules]:
    view = memoryview(data)
    return [
        PushedRules.decode(view[offset : offset + length])
        for frame_type, _, _, offset, length in iter_frames(view)
        if frame_type == FrameType.RULES
    ]


def test_switch_sends_rules_after_hello_only_to_clients_that_asked() -> None:
    pair = Pair()
    first = PushedRules.from_entries(parse_rules_file("a.example\n").entries)
    pair.switch.set_rules(first.encode())
    asking, old = pair.client(rules=True), pair.client()
    agent = pair.agent()
    pair.run()
    assert asking.hello is not None and old.hello is not None
    assert asking.pushed == [first]
    assert old.pushed == [] and agent.pushed == []
    # A change reaches every connected client_a that asked; the same rules again do not.
    second = PushedRules.from_entries(parse_rules_file("a.example\nb.example\n").entries)
    pair.switch.set_rules(second.encode())
    pair.switch.set_rules(second.encode())
    pair.run()
    assert asking.pushed == [first, second]
    assert old.pushed == [] and old.closed is None
    late = pair.client(rules=True)
    pair.run()
    assert late.pushed == [second]


def test_a_relay_without_rules_sends_none() -> None:
    pair = Pair()
    client = pair.client(rules=True)
    pair.run()
    assert client.hello is not None and client.pushed == []


def test_rules_from_a_client_are_ignored_and_malformed_ones_close_it() -> None:
    pair = Pair()
    client, bystander = pair.client(rules=True), pair.client()
    pair.run()
    frame = PushedRules.from_entries(()).encode()
    pair.switch.receive(client.conn, memoryview(frame), pair.now)
    assert not client.conn.failed  # as MEMBERS from a peer: decoded, nothing to do
    assert bystander.pushed == [] and client.pushed == []
    bad = encode_frame(FrameType.RULES, 0, b'{"type":"RULES"}')
    pair.switch.receive(client.conn, memoryview(bad), pair.now)
    assert client.conn.failed
    assert pair.switch.stats.protocol_errors["malformed_control"] == 1
    assert bystander.closed is None and not bystander.conn.failed


@settings(max_examples=30)
@given(st.binary(max_size=64))
def test_bad_rules_frame_keeps_the_connection_and_the_old_rules(junk: bytes) -> None:
    pair = Pair()
    client = pair.client(rules=True)
    pair.agent()
    good = PushedRules.from_entries(parse_rules_file("a.example\n").entries)
    pair.switch.set_rules(good.encode())
    pair.run()
    stream_id = client.open()
    pair.run()
    # A malformed RULES payload (as a buggy or newer relay might send) reaches the session.
    client.session.receive(memoryview(encode_frame(FrameType.RULES, 0, junk)), pair.now)
    assert client.rules_refused, "refused"
    assert client.session.stats.protocol_errors["bad_rules"] == 1
    assert client.closed is None  # the link stays up...
    assert stream_id in client.session.streams  # ...with its streams
    assert client.pushed == [good]  # and the rules it had are the ones it has


def test_unknown_frame_closes_an_old_receiver() -> None:
    """Why RULES goes only to client_a that ask: a receiver that does not know a frame type
    closes the connection (1002), as before RULES existed for 0x0d today."""
    pair = Pair()
    client = pair.client()
    pair.run()
    with pytest.raises(Exception) as info:
        client.session.receive(memoryview(bytes([0x0D, 0, 0, 0, 0, 0, 0, 0, 0, 0])), pair.now)
    assert "unknown frame type 0x0d" in str(info.value)
    assert getattr(info.value, "close_code", None) == CLOSE_PROTOCOL_ERROR
