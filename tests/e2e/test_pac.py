"""client_a's proxy auto-config file (issue 13 part 1), with real clients: curl for the HTTP
side (both ports, ETag and 304, regeneration on a rules reload) and headless Chromium with
``--proxy-pac-url`` for the routing: a listed HTTPS page through the relay, an unlisted one
directly, checked on the DOM and by the relay's and client_a's counters."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import LISTED, UNLISTED, Chain, Target, curl_path
from support import dns_server
from support.procs import metric, wait_until
from test_browser import chromium_dom

PAC_TYPE = "application/x-ns-proxy-autoconfig"
# Chromium sends loopback hosts (127.0.0.0/8, their IPv4-mapped IPv6 forms, localhost) direct
# before it asks a PAC, and no PAC can change that; so the browser test uses made-up names.
# The agent resolves LISTED_NAME with a DNS server of the test's (tests/support/dns_server.py);
# Chromium resolves UNLISTED_NAME with --host-resolver-rules, when the PAC says DIRECT.
LISTED_NAME = "pac-listed.test"
UNLISTED_NAME = "pac-unlisted.test"


def fetch(url: str, *args: str) -> tuple[int, dict[str, str], bytes]:
    """curl `url` (no proxy); the status, the header fields (lowercase names) and the body."""
    result = subprocess.run(
        [
            curl_path(),
            *("-sS", "--noproxy", "*", "--max-time", "10"),
            *(() if "-I" in args else ("-D", "-")),  # -I prints the head itself
            *args,
            url,
        ],
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    head, _, body = result.stdout.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), fields, body


@pytest.fixture
def pac_chain(make_chain, tmp_path: Path) -> tuple[Chain, Path]:
    rules = tmp_path / "rules.txt"
    rules.write_text(f"{LISTED}/32\n")
    chain = make_chain()
    chain.start_relay()
    chain.start_agent("--allow", "127.0.0.0/8")
    chain.start_client(rules, "--rules-poll", "0.1")
    return chain, rules


def test_pac_on_both_ports_etag_304_and_reload(pac_chain: tuple[Chain, Path]) -> None:
    chain, rules = pac_chain
    client = chain.clients[0]
    listen, admin = client.ready["listen"], client.ready["admin"]
    assert client.ready["pac"] == f"http://{listen}/proxy.pac"
    status, fields, body = fetch(f"http://{listen}/proxy.pac")
    assert status == 200
    assert fields["content-type"] == PAC_TYPE
    assert "max-age" in fields["cache-control"]
    etag = fields["etag"]
    assert etag.startswith('"') and not etag.startswith("W/")
    assert f'"PROXY {listen}"'.encode() in body
    assert b"FindProxyForURL" in body
    assert int(fields["content-length"]) == len(body)
    # The admin port serves the same file (the PROXY address is the proxy port's).
    assert fetch(f"http://{admin}/proxy.pac")[2] == body
    # A conditional GET with the current ETag: 304, no body; another tag: the file.
    status, fields, body304 = fetch(f"http://{listen}/proxy.pac", "-H", f"If-None-Match: {etag}")
    assert (status, body304, fields["etag"]) == (304, b"", etag)
    status, _, _ = fetch(f"http://{admin}/proxy.pac", "-H", f'If-None-Match: "x", {etag}')
    assert status == 304
    status, _, again = fetch(f"http://{listen}/proxy.pac", "-H", 'If-None-Match: "other"')
    assert (status, again) == (200, body)
    # HEAD: the fields, no body.
    status, fields, empty = fetch(f"http://{listen}/proxy.pac", "-I")
    assert (status, empty, fields["etag"]) == (200, b"", etag)
    status, _, text = fetch(f"http://{admin}/nope")
    assert status == 404 and b"/proxy.pac" in text  # the admin port names it
    status, fields, empty = fetch(f"http://{admin}/proxy.pac", "-I")
    assert (status, empty, fields["content-type"]) == (200, b"", PAC_TYPE)
    # Any other origin-form request on the proxy port keeps its 400.
    status, _, text = fetch(f"http://{listen}/other.pac")
    assert status == 400 and b"origin-form request target '/other.pac'" in text

    # A rules reload regenerates it: a new rule, a new ETag; the old tag now gets the file.
    before = metric(admin, "fastrelay_rules_reloads_total", result="ok")
    rules.write_text(f"{LISTED}/32\n.added.example fallback=direct\n")
    wait_until(
        lambda: metric(admin, "fastrelay_rules_reloads_total", result="ok") > before,
        what="the rules reload",
    )
    status, fields, changed = fetch(f"http://{listen}/proxy.pac", "-H", f"If-None-Match: {etag}")
    assert status == 200
    assert fields["etag"] != etag
    assert b'".added.example":1' in changed and b'".added.example"' not in body
    assert fetch(f"http://{admin}/proxy.pac")[1]["etag"] == fields["etag"]


def dump_dom(pac_url: str, certs: dict[str, Path], url: str, profile: Path) -> str:
    return chromium_dom(
        certs,
        url,
        profile,
        f"--proxy-pac-url={pac_url}",
        f"--host-resolver-rules=MAP {UNLISTED_NAME} {UNLISTED}",
    )


@pytest.fixture
def pac_dns() -> Iterator[str]:
    """A DNS server that resolves LISTED_NAME to LISTED: its address, for --dns-server."""
    with dns_server.running({LISTED_NAME: [LISTED]}) as (_server, address):
        yield address


def test_chromium_with_the_pac_sends_listed_through_relay_and_unlisted_direct(
    make_chain, target: Target, certs: dict[str, Path], tmp_path: Path, pac_dns: str
) -> None:
    rules = tmp_path / "rules.txt"
    rules.write_text(f"{LISTED_NAME}\n{LISTED}/32\n")
    chain = make_chain()
    relay = chain.start_relay()
    agent = chain.start_agent("--allow", "127.0.0.0/8", "--dns-server", pac_dns)
    client = chain.start_client(rules)
    relay_admin, client_admin = relay.ready["admin"], client.ready["admin"]
    pac_url = client.ready["pac"]

    def relay_down() -> float:
        return metric(relay_admin, "fastrelay_stream_bytes_total", direction="downstream")

    def client_requests(route: str) -> float:
        return metric(client_admin, "fastrelay_client_requests_total", route=route)

    listed = f"https://{LISTED_NAME}:{target.port(LISTED, 'https')}/hello"
    dom = dump_dom(pac_url, certs, listed, tmp_path / "p1")
    assert f'<h1 id="greeting">hello from the target at {LISTED}</h1>' in dom
    assert relay_down() > 0  # the TLS session crossed the relay
    assert client_requests("relay") >= 1
    assert metric(agent.ready["admin"], "fastrelay_agent_dials_total", result="ok") >= 1

    down = relay_down()
    unlisted = f"https://{UNLISTED_NAME}:{target.port(UNLISTED, 'https')}/hello"
    dom = dump_dom(pac_url, certs, unlisted, tmp_path / "p2")
    assert f'<h1 id="greeting">hello from the target at {UNLISTED}</h1>' in dom
    assert relay_down() == down  # not through the relay ...
    assert client_requests("direct") == 0  # ... and not even through client_a: DIRECT
