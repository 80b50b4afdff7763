"""Which event loop a program runs on: uvloop by default, the stdlib's on request or
where uvloop is missing.

``FASTRELAY_LOOP`` chooses:

* unset or empty: uvloop when it can be imported (winloop on Windows), else the stdlib
  loop (``asyncio``), with one log line saying why;
* ``uvloop`` / ``winloop``: that loop; not importable is a startup error (exit 2);
* ``asyncio``: the stdlib loop (``asyncio.SelectorEventLoop`` on Unix);
* anything else: a startup error (exit 2) naming the accepted values.

Nothing else in fastrelay depends on uvloop: picows and aiofastnet drive their sockets
through ``add_reader``/``add_writer`` on whichever loop runs them, and the agent's target
connections are the running loop's own transports (``fastrelay.io.tunnel.LoopStreamSocket``).
"""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

ENV = "FASTRELAY_LOOP"
STDLIB = "asyncio"
# The accelerated loop per platform: uvloop does not support Windows; winloop is its port.
ACCELERATED = {"win32": "winloop"}
T = TypeVar("T")


class LoopChoiceError(Exception):
    """FASTRELAY_LOOP names a loop that is unknown or not installed (exit 2)."""


@dataclass(frozen=True, slots=True)
class LoopChoice:
    name: str  # "uvloop", "winloop" or "asyncio": the ready line's "loop"
    factory: Callable[[], asyncio.AbstractEventLoop]
    note: str = ""  # why the default was not taken, for the log


def accelerated_name(platform: str = sys.platform) -> str:
    return ACCELERATED.get(platform, "uvloop")


def _import_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        module = importlib.import_module(name)
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = module.new_event_loop
    return factory


def _stdlib_factory() -> asyncio.AbstractEventLoop:
    return asyncio.new_event_loop()


def choose_loop(
    environ: Mapping[str, str] | None = None,
    platform: str = sys.platform,
    load: Callable[[str], Callable[[], asyncio.AbstractEventLoop] | None] = _import_factory,
) -> LoopChoice:
    """The loop FASTRELAY_LOOP asks for on `platform`; raises LoopChoiceError."""
    value = (os.environ if environ is None else environ).get(ENV, "").strip().lower()
    fast = accelerated_name(platform)
    if value == STDLIB:
        return LoopChoice(STDLIB, _stdlib_factory)
    if value in ("", fast):
        factory = load(fast)
        if factory is not None:
            return LoopChoice(fast, factory)
        if value:
            raise LoopChoiceError(
                f"{ENV}={value}: {fast} is not installed (pip install {fast}, "
                f"or {ENV}={STDLIB} for the stdlib loop)"
            )
        return LoopChoice(STDLIB, _stdlib_factory, f"{fast} is not installed")
    accepted = f"{fast} (the default when installed) or {STDLIB}"
    raise LoopChoiceError(f"{ENV}={value!r} is not a known event loop: use {accepted}")


def run(main: Coroutine[Any, Any, T], environ: Mapping[str, str] | None = None) -> T:
    """Run `main` to completion on the loop `choose_loop(environ)` picks (for the bench's
    and the tests' own clients, targets and baselines; the programs go through
    fastrelay.lifecycle.run). `environ={}` is the default loop whatever FASTRELAY_LOOP says:
    uvloop when installed, else the stdlib loop."""
    with asyncio.Runner(loop_factory=choose_loop(environ).factory) as runner:
        return runner.run(main)


def run_default(main: Coroutine[Any, Any, T]) -> T:
    """`run(main)` on the default loop, whatever FASTRELAY_LOOP says: the bench's load
    client, target and baselines stay on one loop while the chain under test changes."""
    return run(main, {})
