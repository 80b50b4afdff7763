"""Where a connection's outgoing mux frames go.

`Output` is the base of every such sink: the io layer's `MuxWriter` (a real
WebSocket), the in-memory pair's wire, the seed dialect's translator, and the
endpoints' link while it is down. The switch and the session hold it as a C
type when compiled (fastrelay/hotpath.py), so each write is a C call through
its vtable rather than a Python-level method call.
"""

from __future__ import annotations


class Output:
    """One connection's outgoing side, in whole mux frames."""

    __slots__ = ()

    def write(self, frames: bytes | bytearray | memoryview) -> None:
        """Queue one or more complete mux frames (header and payload)."""
        raise NotImplementedError

    def write_external(self, buf: bytearray, offset: int) -> None:
        """Send `buf[offset:]`, one complete mux frame, as its own message,
        without copying it (the sink may use `buf[:offset]` for its own header)."""
        raise NotImplementedError
