"""Numeric IPv4 spellings of a listed address go through the relay (issue 10, item 4).

The rules list 127.0.0.2/32; `127.2`, `0x7f.2`, `2130706434` and the like are that address to a
browser, so client_a must send them through the relay too, and on as 127.0.0.2 so that the
agent's policy judges (and the dial reaches) the address the rules matched. curl normalises
such hosts itself, so the requests here are written on raw sockets.
"""

from __future__ import annotations

import pytest
from conftest import DENIED, LISTED, UNLISTED, Chain, Target
from helpers import (
    SOCKET_TIMEOUT,
    echo_reply,
    half_close_exchange,
    open_connect,
    raw_exchange,
    response_head,
)
from support.procs import metric

LISTED_SPELLINGS = ["127.2", "0x7f.2", "0x7f000002", "2130706434", "0177.0.0.02", "127.000.0.002."]


def requests(chain: Chain, route: str, result: str = "ok") -> float:
    admin = chain.clients[0].ready["admin"]
    return metric(admin, "fastrelay_client_requests_total", route=route, result=result)


def get(chain: Chain, host: str, port: int) -> bytes:
    """An absolute-form GET /hello for http://host:port through client_a; the raw answer."""
    head = (
        f"GET http://{host}:{port}/hello HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Connection: close\r\n\r\n"
    )
    return raw_exchange(chain.clients[0].ready["listen"], head.encode(), timeout=SOCKET_TIMEOUT)


@pytest.mark.parametrize("spelling", LISTED_SPELLINGS)
def test_a_spelling_of_a_listed_address_goes_through_the_relay(
    chain: Chain, target: Target, spelling: str
) -> None:
    relay_before, direct_before = requests(chain, "relay"), requests(chain, "direct")
    answer = get(chain, spelling, target.port(LISTED, "http"))
    status, _ = response_head(answer)
    assert status == 200, answer[:300]
    assert f"hello from the target at {LISTED}".encode() in answer
    assert requests(chain, "relay") == relay_before + 1
    assert requests(chain, "direct") == direct_before


def test_a_connect_to_a_spelling_of_a_listed_address_goes_through_the_relay(
    chain: Chain, target: Target
) -> None:
    relay_before, direct_before = requests(chain, "relay"), requests(chain, "direct")
    with open_connect(chain, "0x7f.0.2", target.port(LISTED, "echo")) as sock:
        assert half_close_exchange(sock, b"ping") == echo_reply(b"ping")
    assert requests(chain, "relay") == relay_before + 1
    assert requests(chain, "direct") == direct_before


@pytest.mark.parametrize("spelling", ["127.4", "0x7f000004"])
def test_the_agents_policy_judges_the_address_a_spelling_means(
    chain: Chain, target: Target, spelling: str
) -> None:
    relay_before = requests(chain, "relay")
    answer = get(chain, spelling, target.port(DENIED, "http"))
    status, _ = response_head(answer)
    assert status == 403, answer[:300]
    assert b"hello from the target" not in answer
    assert requests(chain, "relay", "ok") == relay_before  # refused: no successful relay open


def test_a_spelling_of_an_unlisted_address_goes_direct(chain: Chain, target: Target) -> None:
    relay_before, direct_before = requests(chain, "relay"), requests(chain, "direct")
    answer = get(chain, "127.3", target.port(UNLISTED, "http"))
    status, _ = response_head(answer)
    assert status == 200, answer[:300]
    assert f"hello from the target at {UNLISTED}".encode() in answer
    assert requests(chain, "direct") == direct_before + 1
    assert requests(chain, "relay") == relay_before


def test_a_name_ending_in_a_number_that_is_no_address_is_refused(
    chain: Chain, target: Target
) -> None:
    answer = get(chain, "127.0.0.256", target.port(LISTED, "http"))
    status, _ = response_head(answer)
    assert status == 502, answer[:300]
