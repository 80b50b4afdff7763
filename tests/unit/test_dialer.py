"""The agent's connect step: the loop's own transport, what a refused connect raises, and
reading paused until the stream may send. Name look-ups: tests/unit/test_resolver.py."""

from __future__ import annotations

import asyncio

import pytest


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
