"""client_a's filter list: the parser and matcher live in :mod:`fastrelay.protocol.rules`
(the relay validates the rules it pushes with the same code); this module adds reading the
local file.  See that module for the file format and the matching order.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastrelay.protocol import rules as _rules
from fastrelay.protocol.rules import (
    DEFAULT_POOL,
    DEFAULT_RULE,
    Entry,
    Fallback,
    PushedRules,
    Rule,
    RuleError,
    RulesFile,
    check_pool_name,
    decode_rules_file,
    merge,
    parse_entries,
)

__all__ = [
    "DEFAULT_POOL",
    "DEFAULT_RULE",
    "Entry",
    "Fallback",
    "PushedRules",
    "Rule",
    "RuleError",
    "RuleSources",
    "Rules",
    "RulesFile",
    "check_pool_name",
    "merge",
    "parse_entries",
    "read_rules_file",
]


def read_rules_file(path: str | os.PathLike[str]) -> RulesFile:
    """client_a's local rules file; :class:`RuleError` or OSError."""
    return decode_rules_file(Path(path).read_bytes(), os.fspath(path))


class Rules(_rules.Rules):
    """Compiled filter list; :meth:`load` reads a local file."""

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Rules:
        return cls(read_rules_file(path).entries)


class RuleSources:
    """The rules client_a routes by: its local file merged with the rules the relay pushes
    (:func:`merge`: local wins; ``[pushed off]`` in the local file ignores the pushed ones).

    ``rules`` is rebuilt whenever either source changes; open tunnels never look at it again.
    """

    def __init__(self, local: RulesFile | None = None) -> None:
        self.local = local if local is not None else RulesFile()
        self.pushed: PushedRules | None = None
        self.pushed_in_effect = 0  # pushed rules in ``rules`` (not replaced, not turned off)
        self.rules = Rules()
        self._merge()

    def set_local(self, local: RulesFile) -> Rules:
        self.local = local
        return self._merge()

    def set_pushed(self, pushed: PushedRules) -> Rules:
        self.pushed = pushed
        return self._merge()

    def _merge(self) -> Rules:
        entries, self.pushed_in_effect = merge(
            self.local, self.pushed.entries if self.pushed is not None else ()
        )
        self.rules = Rules(entries)
        return self.rules

    def counts(self) -> dict[str, int]:
        """Rules in effect by source: ``local`` and ``pushed``."""
        return {"local": len(self.local.entries), "pushed": self.pushed_in_effect}
