"""pproxy (PyPI: `pip install pproxy`, python-proxy), run through its own command line.

A peer, not a baseline: a one-hop HTTP CONNECT proxy in Python on uvloop that a user could
install instead. Run as `python -m bench.baselines.pproxy_peer -l http://127.0.0.1:0`; every
argument goes to pproxy's own `main()` (what `python -m pproxy` runs), unchanged.

Three shims, none of which touches how pproxy carries a byte:
- pproxy's main() calls `uvloop.install()` and then `asyncio.get_event_loop()`, which
  uvloop >= 0.22 refuses when no loop is set (pproxy 2.7.9 predates that): we install uvloop's
  policy and set a loop first, and make pproxy's own install a no-op so it keeps that loop;
- pproxy prints to stdout ("Using uvloop", "Serving on ..."): that goes to stderr (the log);
- the bench wants one JSON ready line with the address: written once pproxy reports the
  listening socket (so `-l ...:0` works and no port is guessed).
"""

from __future__ import annotations

import asyncio
import json
import sys


def main(argv: list[str]) -> None:
    try:
        from pproxy import server
    except ModuleNotFoundError:
        sys.exit("pproxy is not installed (pip install pproxy, or the bench extra)")
    ready_out = sys.stdout
    sys.stdout = sys.stderr
    try:
        import uvloop
    except ImportError:  # pproxy then runs on the stdlib loop
        asyncio.set_event_loop(asyncio.new_event_loop())
    else:
        uvloop.install()
        asyncio.set_event_loop(asyncio.new_event_loop())
        uvloop.install = lambda: None  # type: ignore[assignment]

    reported = server.print_server_started

    def print_server_started(option, srv, print_fn):  # type: ignore[no-untyped-def]
        reported(option, srv, print_fn)
        host, port = srv.sockets[0].getsockname()[:2]
        ready_out.write(json.dumps({"event": "ready", "listen": f"{host}:{port}"}) + "\n")
        ready_out.flush()

    server.print_server_started = print_server_started
    server.main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
