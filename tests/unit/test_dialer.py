"""The agent's resolve step: IP literals skip getaddrinfo, names go through it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agent.dialer import DialFailure, resolve
from fastrelay.protocol.status import Failure


def _run(host: str, lookups: list[str]) -> list[str]:
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        real = loop.getaddrinfo

        async def counting(host: Any, *args: Any, **kwargs: Any) -> Any:
            lookups.append(host)
            return await real(host, *args, **kwargs)

        loop.getaddrinfo = counting  # type: ignore[method-assign]
        return await resolve(host, 443)

    return asyncio.run(main())


@pytest.mark.parametrize(
    ("host", "address"),
    [("127.0.0.2", "127.0.0.2"), ("::1", "::1"), ("2001:DB8::0:1", "2001:db8::1")],
)
def test_an_ip_literal_is_its_own_answer_without_a_lookup(host: str, address: str) -> None:
    lookups: list[str] = []
    assert _run(host, lookups) == [address]
    assert lookups == []


def test_a_name_is_looked_up() -> None:
    lookups: list[str] = []
    assert "127.0.0.1" in _run("localhost", lookups)
    assert lookups == ["localhost"]


def test_a_name_that_does_not_resolve_is_a_dns_failure() -> None:
    with pytest.raises(DialFailure) as info:
        _run("no-such-host.invalid", [])
    assert info.value.failure is Failure.DNS
