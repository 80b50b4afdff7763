"""Routing state of the relay: which agent takes a new stream, and which
stream-id range each client_a connection allocates from."""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar

# Stream ids are u32. Each client_a connection owns 2**20 of them, so ids are
# unique relay-wide and frames cross the relay without rewriting.
SLOT_BITS = 20
SLOT_SIZE = 1 << SLOT_BITS
SLOT_COUNT = 1 << (32 - SLOT_BITS)  # slot 0 is never handed out: stream id 0 is the connection


class StreamIdSlots:
    """Hands out id ranges round-robin, so a freed range is reused as late as
    possible and stale frames for an old connection's streams find nothing."""

    def __init__(self, count: int = SLOT_COUNT) -> None:
        self.count = count
        self.used: set[int] = set()
        self.next = 1

    def acquire(self) -> int | None:
        """The base stream id of a free range, or None when all are taken."""
        for _ in range(self.count - 1):
            slot = self.next
            self.next = slot + 1 if slot + 1 < self.count else 1
            if slot not in self.used:
                self.used.add(slot)
                return slot << SLOT_BITS
        return None

    def release(self, base: int) -> None:
        self.used.discard(base >> SLOT_BITS)


A = TypeVar("A", bound="RoutableAgent")


class RoutableAgent(Protocol):
    streams: dict
    draining: bool


class AgentPool(Generic[A]):
    """Connected agents. New streams go to the agent carrying the fewest,
    ties broken round-robin; agents that are draining or gone are skipped."""

    def __init__(self) -> None:
        self.agents: list[A] = []
        self.turn = 0

    def add(self, agent: A) -> None:
        self.agents.append(agent)

    def remove(self, agent: A) -> None:
        if agent in self.agents:
            self.agents.remove(agent)

    def pick(self) -> A | None:
        # Rotate among the tied agents only: rotating the scan's start over
        # all agents would favour whichever tied agent follows a busier one.
        tied: list[A] = []
        least = 0
        for agent in self.agents:
            if agent.draining:
                continue
            load = len(agent.streams)
            if not tied or load < least:
                tied, least = [agent], load
            elif load == least:
                tied.append(agent)
        if not tied:
            return None
        self.turn += 1
        return tied[self.turn % len(tied)]

    def __len__(self) -> int:
        return len(self.agents)
