"""`fastrelay relay`: registers the program with :mod:`fastrelay.programs`."""

from __future__ import annotations

from fastrelay.programs import Program, run_service


def main(argv: list[str]) -> int:
    from fastrelay.relay import app, config

    return run_service("relay", config.load, app.serve, argv)


PROGRAM = Program("relay", "the WebSocket relay that joins client_a and agents", main)
