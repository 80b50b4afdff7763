"""`fastrelay agent`: registers the program with :mod:`fastrelay.programs`."""

from __future__ import annotations

from fastrelay.programs import Program, run_service


def main(argv: list[str]) -> int:
    from agent import app, config

    return run_service("agent", config.load, app.serve, argv)


PROGRAM = Program(
    "agent", 'dials the relay and opens TCP connections to targets ("Client B")', main
)
