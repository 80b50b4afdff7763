"""How client_a's pool and the agent's mesh use the redial policy (`Backoff`,
fastrelay/protocol/carriers.py, whose own tests are tests/protocol/test_carriers.py):
the redial loops run against fake carriers with `pause` replaced by a
recorder, so nothing sleeps."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from agent import mesh as mesh_module
from fastrelay.io import pool as pool_module
from fastrelay.io.carrier import CarrierStats, RelayLink
from fastrelay.protocol.carriers import Backoff

INITIAL = 0.1
CAP = 10.0


# --- the redial loops, against fake carriers ---


class Recording(Backoff):
    """A Backoff that records the bound of every delay it hands out."""

    log: list[tuple[float, float]]  # (initial, bound), set per test

    def next_delay(self, now: float) -> float:
        self.log.append((self.initial, self.bound(now)))
        return super().next_delay(now)


class Healthy(Recording):
    """Every connection counts as having settled (its life is not simulated)."""

    def __init__(self, initial: float, cap: float) -> None:
        super().__init__(initial, cap, settle=0.0)


class FakeCarrier:
    """Scripted dials: each entry of `script` is "error" (the dial fails),
    "flap" (HELLO, then the connection is already gone) or "up" (HELLO, then
    lost once the loop has taken it)."""

    script: list[str]
    dialled: int

    def __init__(
        self, link: object, handler: object, owner: object, stats: object, *timeout: float
    ) -> None:
        self.owner = owner
        self.session = SimpleNamespace(retire=lambda why: None)
        self.lost = self.goaway = self.leaving = self.closing = False
        self.streams: dict = {}
        self.instance_id = "relay-1"
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def ready(self) -> bool:
        return not self.lost

    async def open(self) -> SimpleNamespace:
        step = FakeCarrier.script[FakeCarrier.dialled % len(FakeCarrier.script)]
        FakeCarrier.dialled += 1
        if step == "error":
            raise ConnectionRefusedError("refused")
        if step == "flap":
            self._lose()
        else:
            asyncio.get_running_loop().call_soon(self._lose)
        return SimpleNamespace(instance_id=self.instance_id)

    def _lose(self) -> None:
        self.lost = True
        if not self.done.done():
            self.done.set_result(None)
        self.owner.carrier_lost(self)  # type: ignore[attr-defined]

    def close(self, *args: object) -> None:
        pass

    def send(self, frames: bytes) -> None:
        pass

    def close_if_idle(self) -> None:
        pass


def run_loop(
    monkeypatch: pytest.MonkeyPatch,
    module: object,
    backoff_class: type[Recording],
    script: list[str],
    pauses: int,
    make_loop,
) -> list[float]:
    """Run a redial loop until it has paused `pauses` times; the bounds of
    the error backoff's delays, in order."""
    log: list[tuple[float, float]] = []
    monkeypatch.setattr(backoff_class, "log", log, raising=False)
    monkeypatch.setattr(FakeCarrier, "script", script, raising=False)
    monkeypatch.setattr(FakeCarrier, "dialled", 0, raising=False)
    monkeypatch.setattr(module, "Carrier", FakeCarrier)
    monkeypatch.setattr(module, "Backoff", backoff_class)
    paused = 0

    async def no_sleep(stop: asyncio.Event, seconds: float) -> None:
        nonlocal paused
        paused += 1
        if paused >= pauses:
            stop.set()
        await asyncio.sleep(0)

    monkeypatch.setattr(module, "pause", no_sleep)

    async def main() -> None:
        stop = asyncio.Event()
        link = RelayLink("ws://127.0.0.1:1/v1/x", "x", "t", None, 20, 1 << 20, CAP, 1 << 20)
        await asyncio.wait_for(make_loop(link, stop), 10)

    asyncio.run(main())
    return [bound for initial, bound in log if initial == INITIAL]


def pool_slot(link: RelayLink, stop: asyncio.Event):
    pool = pool_module.CarrierPool(link, handler=None, stats=CarrierStats(), size=1)  # type: ignore[arg-type]
    return pool._slot(stop)


def mesh_dial_loop(link: RelayLink, stop: asyncio.Event):
    mesh = mesh_module.AgentMesh(link, handler=None, stats=CarrierStats())  # type: ignore[arg-type]
    return mesh._dial_loop(stop)


@pytest.mark.parametrize(
    ("module", "make_loop"), [(pool_module, pool_slot), (mesh_module, mesh_dial_loop)]
)
def test_after_an_outage_a_restarted_relay_resets_the_backoff(
    monkeypatch: pytest.MonkeyPatch, module: object, make_loop
) -> None:
    # Down for 5 dials, up, lost again: the redial after that loss is drawn
    # from [0, 100 ms], not from the 3.2 s the outage had reached.
    bounds = run_loop(monkeypatch, module, Healthy, ["error"] * 5 + ["up", "error"], 7, make_loop)
    assert bounds == [0.1, 0.2, 0.4, 0.8, 1.6, 0.1, 0.2]


@pytest.mark.parametrize(
    ("module", "make_loop"), [(pool_module, pool_slot), (mesh_module, mesh_dial_loop)]
)
def test_a_relay_that_drops_right_after_hello_gets_a_growing_delay(
    monkeypatch: pytest.MonkeyPatch, module: object, make_loop
) -> None:
    bounds = run_loop(monkeypatch, module, Recording, ["flap"], 8, make_loop)
    assert bounds == [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0]
    assert FakeCarrier.dialled == 8  # one dial per (growing) pause, no dial without one
