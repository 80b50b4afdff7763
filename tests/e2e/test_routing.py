"""Listed hosts go through the relay, unlisted hosts go direct (curl as the client)."""

from __future__ import annotations

from conftest import LISTED, UNLISTED, Chain, Target
from helpers import curl, relay_bytes
from support.procs import metric


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
