"""`fastrelay relay|agent|client|demo`: one entry point for every program."""

from __future__ import annotations

import sys
from collections.abc import Sequence

USAGE = """usage: fastrelay {relay,agent,client,demo} [options]

  relay    the WebSocket relay that joins client_a and agents
  agent    dials the relay and opens TCP connections to targets ("Client B")
  client   client_a, the local HTTP proxy a browser points at
  demo     all three on loopback with generated tokens (what `make run` starts)

`fastrelay PROGRAM --help` lists a program's options."""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    program, rest = args[0], args[1:]
    if program == "demo":
        from fastrelay.demo import main as demo_main

        return demo_main(rest)
    loaders = {
        "relay": ("fastrelay.relay.config", "fastrelay.relay.app"),
        "agent": ("agent.config", "agent.app"),
        "client": ("client_a.config", "client_a.app"),
    }
    if program not in loaders:
        print(f"fastrelay: unknown program {program!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    return run_program(program, *loaders[program], rest)


def run_program(program: str, config_module: str, app_module: str, argv: list[str]) -> int:
    import importlib

    from fastrelay.config import ConfigError
    from fastrelay.lifecycle import run
    from fastrelay.logs import setup_logging

    config_mod = importlib.import_module(config_module)
    app = importlib.import_module(app_module)
    try:
        config = config_mod.load(argv)
    except ConfigError as exc:
        print(f"fastrelay {program}: error: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_level, config.log_format)

    async def main(stop):  # type: ignore[no-untyped-def]
        try:
            return await app.serve(config, stop)
        except ConfigError as exc:
            print(f"fastrelay {program}: error: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:
            print(f"fastrelay {program}: error: {exc}", file=sys.stderr)
            return 1

    return run(main)


if __name__ == "__main__":
    sys.exit(main())
