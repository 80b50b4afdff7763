"""Wires the agent ("Client B"): one carrier to the relay, a dial per stream."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Iterable

from prometheus_client.core import Metric

from agent.config import AgentConfig
from agent.dialer import DIAL_RESULTS, DialFailure, dial
from fastrelay import metrics
from fastrelay.io.admin import start_admin
from fastrelay.io.carrier import Carrier, CarrierStats, carrier_metrics
from fastrelay.io.tunnel import AGENT_SIDE, TunnelStream
from fastrelay.lifecycle import announce_ready, format_address
from fastrelay.protocol.frames import FrameType
from fastrelay.protocol.messages import ConnectResponse, Hello, OpenStream, TunnelError
from fastrelay.protocol.state import Event, State

log = logging.getLogger("fastrelay.agent")


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.stats = CarrierStats()
        self.dials: Counter[str] = Counter({r: 0 for r in DIAL_RESULTS})
        self.tasks: set[asyncio.Task[None]] = set()
        self.carrier = Carrier.from_config(config, "agent", self, self.stats)

    def on_hello(self, carrier: Carrier, hello: Hello) -> None:
        pass

    def on_response(self, carrier: Carrier, stream: TunnelStream, resp: ConnectResponse) -> None:
        stream.abort("agents do not accept CONNECT_RESPONSE")

    def on_open(self, carrier: Carrier, sid: int, request: OpenStream) -> None:
        if sid in carrier.streams:
            carrier.send(TunnelError(request.session_id, "stream id in use").encode(sid))
            return
        initial = State.CONNECT_REQUEST if request.kind == FrameType.CONNECT else State.REQUEST
        stream = TunnelStream(
            carrier, sid, request.session_id, AGENT_SIDE, initial, self.config.window
        )
        carrier.streams[sid] = stream
        task = asyncio.get_running_loop().create_task(self._open(stream, request))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _open(self, stream: TunnelStream, request: OpenStream) -> None:
        started = time.monotonic()
        try:
            transport = await asyncio.wait_for(
                dial(stream, request.host, request.port, self.config.policy, self.dials),
                self.config.dial_timeout,
            )
        except DialFailure as failure:
            self._refuse(stream, failure)
            return
        except TimeoutError:
            self._refuse(
                stream,
                DialFailure(
                    502,
                    "timeout",
                    f"no connection to {request.host}:{request.port} "
                    f"within {self.config.dial_timeout:g} s",
                ),
            )
            return
        if stream.state.closed:  # aborted (relay timeout, lost carrier) while dialing
            transport.abort()
            return
        self.dials["ok"] += 1
        stream.carrier.send(
            ConnectResponse(stream.session_id, 200, window=self.config.window).encode(stream.sid)
        )
        stream.attach_tcp(transport)
        stream.opened(request.window)
        log.debug(
            "stream %s open to %s:%d in %.1f ms",
            stream.session_id,
            request.host,
            request.port,
            (time.monotonic() - started) * 1000,
        )

    def _refuse(self, stream: TunnelStream, failure: DialFailure) -> None:
        self.dials[failure.reason] += 1
        if stream.state.closed:
            return
        stream.carrier.send(
            ConnectResponse(
                stream.session_id, failure.status, failure.message, reason=failure.reason
            ).encode(stream.sid)
        )
        stream.state.apply(Event.RESPONSE_FAIL)
        stream.carrier.forget(stream)

    def collect(self) -> Iterable[Metric]:
        yield metrics.counter(
            metrics.AGENT_DIALS,
            "Target dials by result",
            ["result"],
            {(r,): n for r, n in self.dials.items()},
        )
        yield metrics.gauge(
            metrics.STREAMS_ACTIVE,
            "Streams open at this agent",
            [],
            {(): len(self.carrier.streams)},
        )
        yield from carrier_metrics(self.stats, "agent", [self.carrier])


async def serve(config: AgentConfig, stop: asyncio.Event) -> int:
    agent = Agent(config)
    registry = metrics.make_registry("agent", agent.collect)

    def ready() -> tuple[bool, str]:
        return (True, "connected") if agent.carrier.ready else (False, "not connected to a relay")

    admin = await start_admin(*config.admin, registry, ready)
    admin_at = format_address(admin.sockets[0].getsockname())
    log.info("agent dialing %s, admin on %s", config.relay, admin_at)
    announce_ready("agent", admin=admin_at)
    await agent.carrier.run(stop)
    for task in list(agent.tasks):
        task.cancel()
    admin.close()
    log.info("agent stopped")
    return 0
