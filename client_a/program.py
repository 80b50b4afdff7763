"""`fastrelay client`: registers the program with :mod:`fastrelay.programs`."""

from __future__ import annotations

from fastrelay.programs import Program, run_service


def main(argv: list[str]) -> int:
    from client_a import app, config

    return run_service("client", config.load, app.serve, argv)


PROGRAM = Program("client", "client_a, the local HTTP proxy a browser points at", main)
