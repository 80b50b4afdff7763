"""The programs ``fastrelay PROGRAM`` runs.

Each program declares itself with a :class:`Program` named ``PROGRAM`` in its own package
(``fastrelay/relay/program.py``, ``agent/program.py``, ``client_a/program.py``,
``fastrelay/demo.py``); :data:`PROGRAM_MODULES` lists where to find them, in the order
``fastrelay --help`` shows them.  A program module is small: it imports its configuration and
application only when the program runs.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

if TYPE_CHECKING:
    import asyncio

PROGRAM_MODULES: tuple[str, ...] = (
    "fastrelay.relay.program",
    "agent.program",
    "client_a.program",
    "fastrelay.demo",
)


@dataclass(frozen=True, slots=True)
class Program:
    """One ``fastrelay`` subcommand: ``main(argv)`` returns the exit status."""

    name: str
    summary: str
    main: Callable[[list[str]], int]


def programs() -> dict[str, Program]:
    """Every registered program by name, in :data:`PROGRAM_MODULES` order."""
    found: dict[str, Program] = {}
    for module in PROGRAM_MODULES:
        program: Program = importlib.import_module(module).PROGRAM
        found[program.name] = program
    return found


class _Config(Protocol):
    @property
    def log_level(self) -> str: ...

    @property
    def log_format(self) -> str: ...


C = TypeVar("C", bound=_Config)


def run_service(
    program: str,
    load: Callable[[Sequence[str]], C],
    serve: Callable[[C, asyncio.Event], Awaitable[int]],
    argv: list[str],
) -> int:
    """Load ``program``'s configuration from ``argv``, set up logging and run ``serve``.

    A configuration error exits 2 and an OS error (a port in use) exits 1, each with one line
    naming the program.
    """

    from fastrelay.config import ConfigError
    from fastrelay.eventloop import LoopChoiceError, choose_loop
    from fastrelay.lifecycle import run
    from fastrelay.logs import setup_logging

    try:
        config = load(argv)
        choice = choose_loop()
    except (ConfigError, LoopChoiceError) as exc:
        print(f"fastrelay {program}: error: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_level, config.log_format)

    async def main(stop: asyncio.Event) -> int:
        try:
            return await serve(config, stop)
        except ConfigError as exc:
            print(f"fastrelay {program}: error: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:
            print(f"fastrelay {program}: error: {exc}", file=sys.stderr)
            return 1

    return run(main, choice)
