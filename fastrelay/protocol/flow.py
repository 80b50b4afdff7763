"""Per-stream credit windows, one pair per stream per endpoint.

The sender of a direction may have at most `window` bytes of TUNNEL_DATA
outstanding. The receiver returns credit with WINDOW_UPDATE only after it has
written the bytes to its TCP socket *and* that socket's write buffer is below
its low-water mark (the adapter decides when that is and calls `release`), so
a slow reader stops its own stream's sender and nobody else's.
"""

from __future__ import annotations

from fastrelay.protocol.errors import FlowControlError


class SendWindow:
    """Credit this endpoint may still spend on one stream's outgoing data."""

    __slots__ = ("available",)

    def __init__(self, initial: int) -> None:
        self.available = initial

    def consume(self, n: int) -> None:
        # The adapter never sends more than `available`; a bug here would
        # silently let memory grow at the relay, so fail loudly instead.
        if n > self.available:
            raise FlowControlError(f"sending {n} bytes with {self.available} bytes of credit")
        self.available -= n

    def grant(self, increment: int) -> None:
        if self.available + increment > 2**31 - 1:
            raise FlowControlError("WINDOW_UPDATE overflows the send window")
        self.available += increment


class RecvWindow:
    """Credit the peer still holds for data towards this endpoint, and the
    bytes this endpoint has delivered but not yet returned as credit."""

    __slots__ = ("outstanding", "unreturned", "update_threshold")

    def __init__(self, window: int) -> None:
        self.outstanding = window  # bytes the peer may still send
        self.unreturned = 0  # delivered and drained, not yet announced
        # Batch updates (as h2 does) so a bulk stream sends one WINDOW_UPDATE
        # per quarter window rather than one per chunk.
        self.update_threshold = max(1, window // 4)

    def received(self, n: int) -> None:
        if n > self.outstanding:
            raise FlowControlError(
                f"peer sent {n} bytes with only {self.outstanding} bytes of credit"
            )
        self.outstanding -= n

    def release(self, n: int) -> int:
        """Record `n` bytes drained to the socket; return the increment to
        announce now, or 0 while it is below the batching threshold."""
        self.unreturned += n
        if self.unreturned < self.update_threshold:
            return 0
        return self.flush()

    def flush(self) -> int:
        """Return all unannounced credit (for when the batch must go now)."""
        increment, self.unreturned = self.unreturned, 0
        self.outstanding += increment
        return increment
