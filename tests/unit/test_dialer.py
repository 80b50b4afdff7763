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


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("loop_name", ["uvloop", "asyncio"])
def test_an_ipv4_connect_fails_as_the_loops_sock_connect_does(loop_name: str) -> None:
    """The dialer connects IPv4 itself (uvloop's sock_connect would look the literal up in
    its thread pool); a refused connect must raise what loop.sock_connect raises, since
    dial_failure turns its type, errno and text into the open's answer."""
    import socket

    import uvloop

    from agent.dialer import _sock_connect

    port = _free_port()

    async def main() -> list[tuple[type, int | None, str | None]]:
        loop = asyncio.get_running_loop()
        seen = []
        for connect in (loop.sock_connect, lambda s, a: _sock_connect(loop, s, a)):
            with socket.socket() as sock:
                sock.setblocking(False)
                try:
                    await connect(sock, ("127.0.0.1", port))
                except OSError as exc:
                    seen.append((type(exc), exc.errno, exc.strerror))
        return seen

    run = uvloop.run if loop_name == "uvloop" else asyncio.run
    theirs, ours = run(main())
    assert ours == theirs
    assert ours[0] is ConnectionRefusedError


def test_an_ipv4_connect_reaches_a_listener() -> None:
    import socket

    from agent.dialer import _sock_connect

    async def main() -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        with socket.socket() as sock:
            sock.setblocking(False)
            await _sock_connect(loop, sock, ("127.0.0.1", port))
            peer = sock.getpeername()
        server.close()
        return peer[0], peer[1] - port

    assert asyncio.run(main()) == ("127.0.0.1", 0)
