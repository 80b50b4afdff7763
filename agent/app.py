"""Wires the agent ("Client B"): a carrier to every relay (the mesh), a dial per stream."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

from prometheus_client.core import Metric

from agent.config import AgentConfig
from agent.dialer import DIAL_RESULTS, DialFailure, dial
from agent.mesh import AgentMesh
from fastrelay import metrics
from fastrelay.accesslog import AccessLog
from fastrelay.io.admin import Readiness, start_admin
from fastrelay.io.carrier import (
    Carrier,
    CarrierStats,
    RelayLink,
    carrier_metrics,
    carrier_stream_bytes,
)
from fastrelay.io.tunnel import attach
from fastrelay.lifecycle import Service, bound_address, cancel_all, serve_service
from fastrelay.metrics import by_label
from fastrelay.protocol.messages import OpenStream, format_authority
from fastrelay.protocol.session import End, Stream
from fastrelay.protocol.status import dial_timeout
from fastrelay.resolver import make_resolver, resolver_metrics

log = logging.getLogger("fastrelay.agent")
T = TypeVar("T")
_FINISHED = End.FINISHED  # a module name: no EnumType hook per look-up on Python 3.11


class Dial:
    """The agent's record of one stream (`Stream.owner`), for the access log."""

    __slots__ = ("result", "target")

    def __init__(self, target: str) -> None:
        self.target = target  # the host:port asked for
        self.result = ""  # why the dial failed


async def within(seconds: float, dialing: Coroutine[Any, Any, T]) -> T:
    """Await `dialing` in this task; TimeoutError once `seconds` have passed (the dial is
    cancelled). asyncio.wait_for and asyncio.timeout do the same at a higher cost per open
    (timeit on uvloop: +8.2 and +5.5 µs over a bare await, this +2): wait_for runs the
    coroutine in a Task of its own, timeout is a Python context manager. A cancel from
    outside during the dial is never taken for the timeout (the same uncancel count
    asyncio.timeout keeps)."""
    task = asyncio.current_task()
    assert task is not None
    cancelling = task.cancelling()
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        task.cancel()

    timer = asyncio.get_running_loop().call_later(seconds, expire)
    try:
        result = await dialing
    except asyncio.CancelledError:
        if expired and task.uncancel() <= cancelling:
            raise TimeoutError from None
        raise
    finally:
        timer.cancel()
    if expired:
        task.uncancel()  # the dial ended despite the cancel: take it back
    return result


class Agent:
    def __init__(self, config: AgentConfig, access_log: AccessLog | None = None) -> None:
        self.config = config
        self.stats = CarrierStats()
        self.dials: Counter[str] = Counter({r: 0 for r in DIAL_RESULTS})
        self.dial_latency = metrics.Histogram()
        self.resolver = make_resolver(config.resolver, config.dns_server, config.dns_cache)
        self.access_log = access_log
        self.tasks: set[asyncio.Task[None]] = set()
        self.mesh = AgentMesh(RelayLink.from_config(config, "agent", config.pool), self, self.stats)

    # --- the carriers' events (CarrierHandler) ---

    def on_opened(self, carrier: Carrier, stream: Stream) -> None:
        pass  # the agent answers opens; it never sends one

    def on_open(self, carrier: Carrier, stream: Stream, request: OpenStream) -> None:
        stream.owner = Dial(format_authority(request.host, request.port))
        task = asyncio.get_running_loop().create_task(self._open(stream, request))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def on_stream_end(self, carrier: Carrier, stream: Stream) -> None:
        dial = stream.owner
        if self.access_log is None or not isinstance(dial, Dial):
            return
        result = dial.result or ("ok" if stream.end is _FINISHED else "aborted")
        self.access_log.write(
            session=stream.session_id,
            client=carrier.relay_address,
            target=dial.target,
            route="relay",
            result=result,
            bytes_up=stream.bytes_up,
            bytes_down=stream.bytes_down,
            duration=time.monotonic() - stream.started_at,
        )

    async def _open(self, stream: Stream, request: OpenStream) -> None:
        started = time.monotonic()
        try:
            sock = await within(
                self.config.dial_timeout,
                dial(stream, request.host, request.port, self.config.policy, self.resolver),
            )
        except DialFailure as failure:
            self._refuse(stream, failure)
            return
        except TimeoutError:
            timed_out = dial_timeout(request.host, request.port, self.config.dial_timeout)
            self._refuse(stream, DialFailure(*timed_out))
            return
        if stream.ended:  # aborted (relay timeout, lost carrier) while dialing
            sock.abort()
            return
        self.dials["ok"] += 1
        now = time.monotonic()
        self.dial_latency.observe(now - started)
        attach(stream, sock.transport, sock)  # type: ignore[arg-type]
        stream.accept(request.window, now)
        log.debug(
            "stream %s open to %s:%d in %.1f ms",
            stream.session_id,
            request.host,
            request.port,
            (now - started) * 1000,
        )

    def _refuse(self, stream: Stream, refusal: DialFailure) -> None:
        failure = refusal.failure
        self.dials[failure.reason] += 1
        if stream.ended:
            return
        if isinstance(stream.owner, Dial):
            stream.owner.result = failure.reason
        stream.refuse(failure.status, refusal.message, failure.reason)

    def collect(self) -> Iterable[Metric]:
        yield metrics.F_AGENT_DIALS.build(by_label(self.dials))
        yield from resolver_metrics(self.resolver)
        yield metrics.F_STREAMS_ACTIVE_AGENT.one(sum(len(c.streams) for c in self.mesh.carriers))
        yield metrics.F_AGENT_DIAL.one(self.dial_latency)
        up, down = carrier_stream_bytes(self.stats, self.mesh.carriers)
        yield metrics.by_direction(metrics.F_STREAM_BYTES_AGENT, up, down)
        yield metrics.stream_duration(self.stats.stream_duration)
        yield metrics.F_RELAY_DIALS_AGENT.build(
            {("agent", r): n for r, n in self.mesh.dials.items()}
        )
        wanted = self.mesh.wanted()
        yield metrics.F_CLUSTER_MEMBERS_AGENT.one(
            len(wanted) if wanted is not None else len(self.mesh.held)
        )
        yield from carrier_metrics(self.stats, "agent", self.mesh.carriers)


async def serve(config: AgentConfig, stop: asyncio.Event) -> int:
    return await serve_service(AgentService(config), stop)


class AgentService(Service):
    """The agent process: the admin port and the mesh of carriers to the relays."""

    program = name = "agent"
    log = log

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        if config.access_log is not None:
            self.access_log = AccessLog(config.access_log, config.log_format, "agent")
        self.agent = Agent(config, self.access_log)
        self.readiness = Readiness(connected=lambda: self.agent.mesh.ready)

    async def start(self) -> dict[str, Any]:
        registry = metrics.make_registry("agent", self.agent.collect, self.readiness.check)
        self.admin = await start_admin(*self.config.admin, registry, self.readiness.check)
        admin_at = bound_address(self.admin)
        log.info(
            "agent in pool %s dialing %s, admin on %s",
            self.config.pool,
            self.config.relay,
            admin_at,
        )
        return {"admin": admin_at}

    def background(self, stop: asyncio.Event) -> list[Coroutine[Any, Any, None]]:
        return [self.agent.mesh.run(stop)]

    async def close(self) -> None:
        await cancel_all(self.agent.tasks)  # dials still in progress
        await self.agent.resolver.close()
        self.admin.close()
