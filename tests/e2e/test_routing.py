"""Listed hosts go through the relay, unlisted hosts go direct (curl as the client)."""

from __future__ import annotations

import subprocess

from conftest import LISTED, UNLISTED, Chain, Target, curl_path
from support.procs import metric


def curl(chain: Chain, target: Target, url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            curl_path(),
            "-sS",
            "--max-time",
            "30",
            "--cacert",
            str(target.ca_pem),
            "-x",
            chain.proxy,
            *args,
            url,
        ],
        capture_output=True,
        timeout=60,
    )


def relay_bytes(chain: Chain) -> float:
    admin = chain.relay.ready["admin"]
    return metric(admin, "fastrelay_stream_bytes_total", direction="downstream")


def test_listed_host_goes_through_the_relay(chain: Chain, target: Target) -> None:
    before = relay_bytes(chain)
    result = curl(chain, target, target.https(LISTED, "/hello"))
    assert result.returncode == 0, result.stderr
    assert f"hello from the target at {LISTED}".encode() in result.stdout
    assert relay_bytes(chain) > before + len(result.stdout)


def test_unlisted_host_goes_direct(chain: Chain, target: Target) -> None:
    before = relay_bytes(chain)
    client_admin = chain.clients[0].ready["admin"]
    direct_before = metric(
        client_admin, "fastrelay_client_requests_total", route="direct", result="ok"
    )
    result = curl(chain, target, target.https(UNLISTED, "/hello"))
    assert result.returncode == 0, result.stderr
    assert f"hello from the target at {UNLISTED}".encode() in result.stdout
    assert relay_bytes(chain) == before
    assert (
        metric(client_admin, "fastrelay_client_requests_total", route="direct", result="ok")
        == direct_before + 1
    )
