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


class _Stream:
    """What LoopStreamSocket calls on its stream while nothing is read."""

    def __init__(self) -> None:
        self.lost: list[BaseException | None] = []

    def socket_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)

    def socket_paused_writing(self) -> None:
        pass

    def socket_resumed_writing(self) -> None:
        pass


@pytest.mark.parametrize("loop_name", ["uvloop", "asyncio"])
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_a_refused_connect_raises_what_dial_failure_reads(loop_name: str, host: str) -> None:
    """dial_failure turns the exception's type and errno into the open's answer (502
    refused); the loop's own create_connection must raise ConnectionRefusedError."""
    import socket

    import uvloop

    from agent.dialer import _connect

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.bind((host, 0))
        port = int(probe.getsockname()[1])

    async def main() -> None:
        await _connect(asyncio.get_running_loop(), _Stream(), host, port)  # type: ignore[arg-type]

    run = uvloop.run if loop_name == "uvloop" else asyncio.run
    with pytest.raises(ConnectionRefusedError):
        run(main())


@pytest.mark.parametrize("loop_name", ["uvloop", "asyncio"])
def test_a_connect_reaches_a_listener_with_reading_paused(loop_name: str) -> None:
    import uvloop

    from agent.dialer import _connect

    async def main() -> tuple[int, bool]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        sock = await _connect(loop, _Stream(), "127.0.0.1", port)  # type: ignore[arg-type]
        sock.resume_reading()
        sock.pause_reading()
        assert sock.transport is not None
        peer = sock.transport.get_extra_info("peername")
        reading = sock.transport.is_reading()  # type: ignore[attr-defined]
        sock.abort()
        server.close()
        return peer[1] - port, reading

    run = uvloop.run if loop_name == "uvloop" else asyncio.run
    assert run(main()) == (0, False)
