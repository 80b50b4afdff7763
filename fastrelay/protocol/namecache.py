"""The agent's cache of resolved names: each answer kept for its TTL, the count bounded.

Pure: the caller passes ``now`` (monotonic seconds) and the answer's TTL. An answer with no TTL
(0: the hosts file, or a record that must not be cached) is not kept. A TTL over ``max_ttl`` is
cut to it, so a name that moves is looked up again within that time whatever its zone says.
Past ``max_names`` the name used least recently goes first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

MAX_TTL = 300.0  # seconds: the longest an answer is kept, whatever its TTL
MAX_NAMES = 10_000  # the agent's default (--dns-cache)


class NameCache:
    __slots__ = ("_entries", "max_names", "max_ttl")

    def __init__(self, max_names: int = MAX_NAMES, max_ttl: float = MAX_TTL) -> None:
        if max_names < 0 or max_ttl < 0:
            raise ValueError("max_names and max_ttl must not be negative")
        self.max_names = max_names
        self.max_ttl = max_ttl
        self._entries: OrderedDict[str, tuple[float, tuple[str, ...]]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, name: str, now: float) -> tuple[str, ...] | None:
        """The addresses ``name`` resolved to, while its TTL lasts; else None."""
        entry = self._entries.get(name)
        if entry is None:
            return None
        expires, addresses = entry
        if now >= expires:
            del self._entries[name]
            return None
        self._entries.move_to_end(name)
        return addresses

    def put(self, name: str, addresses: Iterable[str], ttl: float, now: float) -> None:
        """Keep ``name``'s answer for ``min(ttl, max_ttl)`` seconds from ``now``."""
        kept = tuple(addresses)
        if ttl <= 0 or not kept or self.max_names == 0 or self.max_ttl == 0:
            self._entries.pop(name, None)
            return
        self._entries[name] = (now + min(ttl, self.max_ttl), kept)
        self._entries.move_to_end(name)
        while len(self._entries) > self.max_names:
            self._entries.popitem(last=False)
