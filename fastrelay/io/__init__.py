"""The asyncio, uvloop and picows adapters shared by the programs: listeners, carriers to the
relay, TCP tunnels, the WebSocket server and the admin port.

They join the sans-IO code in :mod:`fastrelay.protocol` to sockets.  Each program also has
adapters of its own that touch picows and sockets (``fastrelay/relay/peer.py`` and
``server.py``, ``agent/dialer.py`` and ``mesh.py``, ``client_a/browser.py``, ``proxy.py`` and
``routes.py``), as does :mod:`fastrelay.lifecycle` for signals and processes.
"""
