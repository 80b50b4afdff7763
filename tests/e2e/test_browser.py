"""The seed's first test scenario with a real browser: headless Chromium
loads an HTTPS page from a listed host through client_a, the relay and the
agent; a page from an unlisted host goes direct."""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import LISTED, UNLISTED, Chain, Target
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from support.procs import metric

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # tests run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # Without these Chromium dials Google's hosts at start; the sandbox has no internet.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Chromium bypasses proxies for loopback unless told otherwise.
    "--proxy-bypass-list=<-loopback>",
]


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("headless Chromium is required (make test installs Debian's chromium)")


def spki_hash(cert_pem: Path) -> str:
    """What --ignore-certificate-errors-spki-list wants: base64 sha256 of the SPKI."""
    cert = x509.load_pem_x509_certificate(cert_pem.read_bytes())
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def chromium_dom(certs: dict[str, Path], url: str, profile: Path, *proxy_flags: str) -> str:
    """The DOM headless Chromium renders for `url`, proxied as `proxy_flags` say
    (--proxy-server=..., or --proxy-pac-url=...), trusting the test CA's key."""
    result = subprocess.run(
        [
            chromium(),
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            *proxy_flags,
            f"--ignore-certificate-errors-spki-list={spki_hash(certs['cert'])}",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def dump_dom(chain: Chain, certs: dict[str, Path], url: str, profile: Path) -> str:
    return chromium_dom(certs, url, profile, f"--proxy-server={chain.proxy}")


def test_browser_loads_listed_page_through_relay_and_unlisted_direct(
    chain: Chain, target: Target, certs: dict[str, Path], tmp_path: Path
) -> None:
    relay_admin = chain.relay.ready["admin"]
    client_admin = chain.clients[0].ready["admin"]
    down_before = metric(relay_admin, "fastrelay_stream_bytes_total", direction="downstream")
    relay_ok = metric(client_admin, "fastrelay_client_requests_total", route="relay", result="ok")

    dom = dump_dom(chain, certs, target.https(LISTED, "/hello"), tmp_path / "profile1")
    assert f'<h1 id="greeting">hello from the target at {LISTED}</h1>' in dom
    down_after = metric(relay_admin, "fastrelay_stream_bytes_total", direction="downstream")
    assert down_after > down_before  # the TLS session really crossed the relay
    assert (
        metric(client_admin, "fastrelay_client_requests_total", route="relay", result="ok")
        > relay_ok
    )

    direct_ok = metric(client_admin, "fastrelay_client_requests_total", route="direct", result="ok")
    dom = dump_dom(chain, certs, target.https(UNLISTED, "/hello"), tmp_path / "profile2")
    assert f'<h1 id="greeting">hello from the target at {UNLISTED}</h1>' in dom
    assert (
        metric(client_admin, "fastrelay_client_requests_total", route="direct", result="ok")
        > direct_ok
    )
    assert metric(relay_admin, "fastrelay_stream_bytes_total", direction="downstream") == down_after
