"""Per-phase latency and ping RTT histograms, and the metric naming conventions,
scraped from all three programs.

    curl -> client_a -> relay -> agent -> target        all with --ping-interval 0.3
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import DENIED, LISTED, UNLISTED, Chain, Target
from helpers import (
    all_streams_idle,
    proxy_status,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from support.procs import (
    http_get,
    metric,
    wait_until,
)

from fastrelay import __version__
from fastrelay.protocol.status import RESULTS

PING = ("--ping-interval", "0.3")
FORBIDDEN_LABELS = {"host", "ip", "token", "session", "session_id", "target", "address", "peer"}


@pytest.fixture(scope="module")
def pinged(tmp_path_factory: pytest.TempPathFactory, rules_file: Path) -> Iterator[Chain]:
    chain = Chain(tmp_path_factory.mktemp("chain-logs"))
    try:
        chain.start_relay(*PING)
        chain.start_agent("--allow", "127.0.0.0/8", "--deny", f"{DENIED}/32", *PING)
        chain.start_client(rules_file, *PING)
        yield chain
    finally:
        chain.stop()


def programs(chain: Chain) -> dict[str, str]:
    """program -> admin address."""
    assert chain.relay is not None
    return {
        "relay": chain.relay.ready["admin"],
        "agent": chain.agents[0].ready["admin"],
        "client": chain.clients[0].ready["admin"],
    }


def families(admin: str) -> dict[str, object]:
    status, text = http_get(f"http://{admin}/metrics")
    assert status == 200, text
    return {f.name: f for f in text_string_to_metric_families(text)}


def raw_metrics(admin: str) -> str:
    status, text = http_get(f"http://{admin}/metrics")
    assert status == 200, text
    return text


# One histogram series each: (program, family, labels).
PHASES = [
    ("client", "fastrelay_client_connect_seconds", {"route": "relay"}),
    ("client", "fastrelay_client_connect_seconds", {"route": "direct"}),
    ("client", "fastrelay_client_first_byte_seconds", {"route": "relay"}),
    ("client", "fastrelay_client_first_byte_seconds", {"route": "direct"}),
    ("client", "fastrelay_stream_duration_seconds", {"route": "relay"}),
    ("client", "fastrelay_stream_duration_seconds", {"route": "direct"}),
    ("relay", "fastrelay_relay_open_seconds", {}),
    ("relay", "fastrelay_stream_duration_seconds", {}),
    ("agent", "fastrelay_agent_dial_seconds", {}),
    ("agent", "fastrelay_stream_duration_seconds", {}),
]
RELAY_OPEN = 6  # PHASES' index of fastrelay_relay_open_seconds


def phase_stats(chain: Chain, suffix: str) -> list[float]:
    """_count or _sum of every series in PHASES."""
    admins = programs(chain)
    return [metric(admins[prog], name + suffix, **labels) for prog, name, labels in PHASES]


def test_each_phase_is_timed_once_per_tunnel(pinged: Chain, target: Target) -> None:
    counts, sums = phase_stats(pinged, "_count"), phase_stats(pinged, "_sum")
    for url, status in (
        (target.https(LISTED, "/bytes/20000"), 200),
        (target.https(UNLISTED, "/bytes/20000"), 200),
        (target.https(DENIED, "/hello"), 403),  # answered, never opened
    ):
        assert proxy_status(pinged, target, url) == status, url
    wait_until(lambda: all_streams_idle(pinged), what="every tunnel closed")
    # One successful open per route; the denied open is timed only at the relay
    # (open -> answer), and a tunnel that never opened has no duration.
    expected = [1] * len(PHASES)
    expected[RELAY_OPEN] = 2
    assert PHASES[RELAY_OPEN][1] == "fastrelay_relay_open_seconds"
    wait_until(
        lambda: all(
            now >= was + n
            for now, was, n in zip(phase_stats(pinged, "_count"), counts, expected, strict=True)
        ),
        what="every phase observed",
    )
    grown = [now - was for now, was in zip(phase_stats(pinged, "_count"), counts, strict=True)]
    assert dict(zip(map(str, PHASES), grown, strict=True)) == dict(
        zip(map(str, PHASES), expected, strict=True)
    )
    for phase, now, was in zip(PHASES, phase_stats(pinged, "_sum"), sums, strict=True):
        assert now > was, phase  # a real duration, not a zero observation


def ping_counts(chain: Chain) -> dict[tuple[str, str], float]:
    admins = programs(chain)
    name = "fastrelay_ws_ping_rtt_seconds_count"
    return {
        ("relay", "client"): metric(admins["relay"], name, role="client"),
        ("relay", "agent"): metric(admins["relay"], name, role="agent"),
        ("client", "client"): metric(admins["client"], name, role="client"),
        ("agent", "agent"): metric(admins["agent"], name, role="agent"),
    }


def test_ping_rtt_grows_at_every_end_of_both_websockets(pinged: Chain) -> None:
    before = ping_counts(pinged)
    wait_until(
        lambda: all(n >= before[k] + 2 for k, n in ping_counts(pinged).items()),
        what="two more pings on every WebSocket end",
    )
    admins = programs(pinged)
    for (program, role), _ in before.items():
        total = metric(admins[program], "fastrelay_ws_ping_rtt_seconds_sum", role=role)
        assert total > 0, (program, role)


def histogram_series(family) -> dict[tuple, list[Sample]]:
    series: dict[tuple, list[Sample]] = {}
    for sample in family.samples:
        key = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
        series.setdefault(key, []).append(sample)
    return series


# Histograms whose observations may all be 0: the path's queueing delay is 0 when a probe's
# round trip is the least one yet (the first probe always is).
ZERO_SUM_OK = {"fastrelay_path_queueing_seconds"}


def test_every_histogram_is_cumulative_with_inf_equal_to_count(
    pinged: Chain, target: Target
) -> None:
    assert proxy_status(pinged, target, target.https(LISTED, "/hello")) == 200
    wait_until(lambda: all_streams_idle(pinged), what="the tunnel closed")
    checked = 0
    for program, admin in programs(pinged).items():
        for family in families(admin).values():
            if family.type != "histogram" or not family.name.startswith("fastrelay_"):
                continue
            for labels, samples in histogram_series(family).items():
                where = (program, family.name, labels)
                buckets = [s for s in samples if s.name.endswith("_bucket")]
                [count] = [s.value for s in samples if s.name.endswith("_count")]
                [total] = [s.value for s in samples if s.name.endswith("_sum")]
                bounds = [float(s.labels["le"]) for s in buckets]
                assert bounds == sorted(bounds) and bounds[-1] == float("inf"), where
                values = [s.value for s in buckets]
                assert values == sorted(values), where  # cumulative: never decreasing
                assert values[-1] == count, where
                if family.name in ZERO_SUM_OK:
                    assert total >= 0 and (count > 0 or total == 0), where
                else:
                    assert total >= 0 and (total > 0) == (count > 0), where
                checked += 1
    assert checked >= 14  # every histogram series of the spec


# --- naming conventions and the spec's families ---

COMMON = {
    "fastrelay_build_info": "gauge",
    "fastrelay_ready": "gauge",
    "fastrelay_streams_active": "gauge",
    "fastrelay_stream_bytes": "counter",
    "fastrelay_stream_duration_seconds": "histogram",
    "fastrelay_frames_dropped": "counter",
    "fastrelay_ws_write_buffer_bytes": "gauge",
    "fastrelay_ws_ping_rtt_seconds": "histogram",
}
CARRIER = {
    "fastrelay_backpressure_pauses": "counter",  # the relay never pauses a connection
    "fastrelay_relay_connected": "gauge",
    "fastrelay_reconnects": "counter",
    "fastrelay_flow_control_stalls": "counter",
}
SPEC = {
    "relay": {
        **COMMON,
        "fastrelay_connections": "gauge",
        "fastrelay_connections_accepted": "counter",
        "fastrelay_auth_failures": "counter",
        "fastrelay_streams": "counter",
        "fastrelay_stream_frames": "counter",
        "fastrelay_relay_open_seconds": "histogram",
        "fastrelay_limit_hits": "counter",
        "fastrelay_open_retries": "counter",
        "fastrelay_agent_stalls": "counter",
    },
    "agent": {
        **COMMON,
        **CARRIER,
        "fastrelay_agent_dials": "counter",
        "fastrelay_agent_dial_seconds": "histogram",
    },
    "client": {
        **COMMON,
        **CARRIER,
        "fastrelay_client_requests": "counter",
        "fastrelay_client_connect_seconds": "histogram",
        "fastrelay_client_first_byte_seconds": "histogram",
        "fastrelay_rules": "gauge",
        "fastrelay_rules_reloads": "counter",
    },
}
STANDARD = ("process_open_fds", "process_max_fds", "process_resident_memory_bytes")
SAMPLE_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? \S+$")


@pytest.mark.parametrize("program", ["relay", "agent", "client"])
def test_metric_names_follow_the_conventions(pinged: Chain, program: str) -> None:
    admin = programs(pinged)[program]
    text = raw_metrics(admin)
    series = []
    for line in text.splitlines():
        if line and not line.startswith("#"):
            match = SAMPLE_LINE.match(line)
            assert match, line
            series.append(line.rsplit(" ", 1)[0])
    assert len(series) == len(set(series)), "a series is exported twice"
    found = families(admin)
    for name, family in found.items():
        if not name.startswith("fastrelay_"):
            continue
        names = {s.name for s in family.samples}
        if family.type == "counter":
            assert all(n == name + "_total" for n in names), (name, names)
        elif family.type == "histogram":
            assert name.endswith("_seconds"), name  # base unit in the name
            assert names == {name + "_bucket", name + "_sum", name + "_count"}, (name, names)
        else:
            assert family.type == "gauge", (name, family.type)
            assert names == {name}, (name, names)
            assert not name.endswith(("_total", "_count", "_sum", "_bucket")), name
        for sample in family.samples:
            assert not FORBIDDEN_LABELS & set(sample.labels), (name, sample.labels)
            if sample.name.endswith("_bucket"):
                assert "le" in sample.labels
            else:
                assert "le" not in sample.labels, sample
    types = {name: found[name].type for name in SPEC[program] if name in found}
    assert types == SPEC[program]
    [build] = found["fastrelay_build_info"].samples
    assert build.labels == {"version": __version__, "program": program}
    assert build.value == 1
    for name in STANDARD:
        assert name in found and found[name].samples, name
    assert "python_info" in found and "python_gc_objects_collected" in found


def test_spec_label_values_are_preinitialised(pinged: Chain) -> None:
    admins = programs(pinged)

    def labels(admin: str, sample_name: str, label: str) -> set[str]:
        family_name = re.sub(r"_(total|count)$", "", sample_name)
        family = families(admin)[family_name]
        return {s.labels[label] for s in family.samples if s.name == sample_name}

    results = {"ok", "refused", "denied", "dial_failed", "no_agent", "limited", "timeout", "error"}
    assert labels(admins["relay"], "fastrelay_streams_total", "result") == results
    limits = {
        "connections",
        "connections_per_token",
        "streams_per_connection",
        "streams_per_agent",
        "opens_per_connection",
        "opens_per_agent",
        "token_streams",  # one client token's share of an agent (--max-token-share)
        "token_opens",
        "connection_buffer",
        "pools",  # an agent of one pool too many (--max-pools)
        "head_size",  # upgrade heads answered 431
        "head_line",
        "head_fields",
    }
    assert labels(admins["relay"], "fastrelay_limit_hits_total", "limit") == limits
    dials = {"ok", "denied", "refused", "unreachable", "dns", "timeout", "error"}
    assert labels(admins["agent"], "fastrelay_agent_dials_total", "result") == dials
    client = set(RESULTS)  # every result of the failure table, from the start
    assert labels(admins["client"], "fastrelay_client_requests_total", "result") == client
    assert labels(admins["client"], "fastrelay_client_requests_total", "route") == {
        "relay",
        "direct",
        "fallback",  # a fallback=direct rule's request dialled directly (issue 13 part 4)
    }
    for program, admin in admins.items():
        assert labels(admin, "fastrelay_frames_dropped_total", "reason") >= {"unknown_stream"}
        assert labels(admin, "fastrelay_stream_bytes_total", "direction") == {
            "upstream",
            "downstream",
        }, program
    assert labels(admins["relay"], "fastrelay_ws_ping_rtt_seconds_count", "role") == {
        "client",
        "agent",
    }
