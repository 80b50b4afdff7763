"""Logging set-up shared by the three programs: text or JSON lines on stderr.

Nothing on a data path logs; connection-level events (connects, auth
failures, reconnects) do, and auth failures are rate-limited per program.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

import orjson


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        extra = getattr(record, "fields", None)
        if extra:
            doc.update(extra)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = getattr(record, "fields", None)
        if extra:
            line += " " + " ".join(f"{k}={v}" for k, v in extra.items())
        return line


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # picows logs two INFO lines per connection; at thousands of tunnels that
    # is noise, and its per-connection child loggers are not needed.
    logging.getLogger("picows").setLevel(logging.WARNING)
    logging.getLogger("aiofastnet").setLevel(logging.WARNING)


class RateLimitedLog:
    """At most `burst` lines per `period` seconds; the rest are counted. The
    count is reported in the next line that gets through (`suppressed=N`), or,
    when the caller calls `flush()` (e.g. from a timer), as a summary line
    "N more <what> suppressed in the last Ts" once the period is over. `clock`
    gives the time in seconds (tests pass their own)."""

    def __init__(
        self,
        logger: logging.Logger,
        period: float = 10.0,
        burst: int = 5,
        what: str = "lines",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.clock = clock
        self.period = period
        self.burst = burst
        self.what = what
        self.window_start = 0.0
        self.sent = 0
        self.suppressed = 0
        self.level = logging.WARNING  # of the lines being suppressed, for the summary

    def warning(self, msg: str, **fields: object) -> None:
        self.log(logging.WARNING, msg, **fields)

    def info(self, msg: str, **fields: object) -> None:
        self.log(logging.INFO, msg, **fields)

    def log(self, level: int, msg: str, **fields: object) -> None:
        if not self.logger.isEnabledFor(level):
            return
        now = self.clock()
        if now - self.window_start >= self.period:
            self.window_start, self.sent = now, 0
        if self.sent >= self.burst:
            self.suppressed += 1
            self.level = level
            return
        self.sent += 1
        if self.suppressed:
            fields["suppressed"] = self.suppressed
            self.suppressed = 0
        self.logger.log(level, msg, extra={"fields": fields})

    def flush(self) -> None:
        """Cheap when there is nothing to say; call it a few times a second."""
        if not self.suppressed or self.clock() - self.window_start < self.period:
            return
        count, self.suppressed = self.suppressed, 0
        self.logger.log(
            self.level,
            "%d more %s suppressed in the last %gs",
            count,
            self.what,
            self.period,
            extra={"fields": {"suppressed": count}},
        )
