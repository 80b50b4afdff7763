"""A file a program re-reads on SIGHUP and when it changes: client_a's ``--rules`` and the
relay's ``--client-rules``.

:class:`FileReloader` polls the file's (mtime, size) and calls ``load`` then ``apply`` when
they change, or at once on :meth:`reload` (SIGHUP).  A file that fails to load keeps what was
applied before: the failure is logged and counted, and nothing else changes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from fastrelay.config import ConfigError
from fastrelay.lifecycle import pause
from fastrelay.protocol.rules import RuleError

T = TypeVar("T")


def load_at_start(option: str, path: Path, load: Callable[[Path], T]) -> T:
    """The file at start-up.  A bad one is a config error (exit 2) whose message names the
    file, the line and the problem, as a reload would log it."""
    try:
        return load(path)
    except (RuleError, ValueError) as exc:
        raise ConfigError(f"{option}: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{option}: cannot read {path}: {exc.strerror}") from None


class FileReloader(Generic[T]):
    """Re-reads ``path`` on :meth:`reload` and when its (mtime, size) changes (:meth:`watch`).

    ``load`` reads and validates it (RuleError, ValueError or OSError when it cannot);
    ``apply`` puts a good result in effect.  ``counts`` counts the outcomes (``ok``, ``error``)
    for the metrics.
    """

    def __init__(
        self,
        path: Path,
        what: str,
        load: Callable[[Path], T],
        apply: Callable[[T], None],
        log: logging.Logger,
    ) -> None:
        self.path = path
        self.what = what  # "rules", "client rules": for the log
        self.load = load
        self.apply = apply
        self.log = log
        self.counts = {"ok": 0, "error": 0}
        self.stamp = self._stamp()

    def _stamp(self) -> tuple[float, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime, st.st_size)

    def reload(self) -> bool:
        """Read the file now; True if it was applied."""
        self.stamp = self._stamp()
        try:
            value = self.load(self.path)
        except (RuleError, ValueError, OSError) as exc:
            self.counts["error"] += 1
            self.log.error("%s not reloaded, keeping the old ones: %s", self.what, exc)
            return False
        self.apply(value)
        self.counts["ok"] += 1
        return True

    async def watch(self, stop: asyncio.Event, interval: float) -> None:
        while not stop.is_set():
            await pause(stop, interval)
            if self._stamp() != self.stamp:
                self.reload()
