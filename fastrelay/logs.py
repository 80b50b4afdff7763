"""Logging set-up shared by the three programs: text or JSON lines on stderr.

Nothing on a data path logs; connection-level events (connects, auth
failures, reconnects) do, and auth failures are rate-limited per program.
"""

from __future__ import annotations

import logging
import sys
import time

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
    """At most `burst` lines per `period` seconds; the rest are counted and
    summarised in the next line that gets through."""

    def __init__(self, logger: logging.Logger, period: float = 10.0, burst: int = 5) -> None:
        self.logger = logger
        self.period = period
        self.burst = burst
        self.window_start = 0.0
        self.sent = 0
        self.suppressed = 0

    def warning(self, msg: str, **fields: object) -> None:
        now = time.monotonic()
        if now - self.window_start >= self.period:
            self.window_start, self.sent = now, 0
        if self.sent >= self.burst:
            self.suppressed += 1
            return
        self.sent += 1
        if self.suppressed:
            fields["suppressed"] = self.suppressed
            self.suppressed = 0
        self.logger.warning(msg, extra={"fields": fields})
