"""The relay's safety net for memory: when a WebSocket's write buffer passes
its high-water mark, stop reading from the peers that feed it until it drains.

Per-stream credit windows keep each stream within its window already; this
bounds what a misbehaving or very busy peer can make the relay hold.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastrelay.relay.peer import Peer
    from fastrelay.relay.stats import RelayStats


class Backpressure:
    def __init__(self, stats: RelayStats) -> None:
        self.stats = stats

    def pause_feeders(self, dest: Peer) -> None:
        self.stats.backpressure_pauses += 1
        for stream in dest.streams.values():
            feeder = stream.client if dest is stream.agent else stream.agent
            if feeder not in dest.paused_feeders and not feeder.closed:
                dest.paused_feeders.add(feeder)
                feeder.pause_reading()

    def resume_feeders(self, dest: Peer) -> None:
        feeders, dest.paused_feeders = dest.paused_feeders, set()
        for feeder in feeders:
            feeder.resume_reading()

    def forget(self, peer: Peer) -> None:
        """A peer went away: release whoever it paused."""
        self.resume_feeders(peer)
