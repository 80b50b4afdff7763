"""One line per finished tunnel (never per frame), in logfmt or JSON.

Fields: time, program, sessionId, client address, target host:port, route,
result, bytes up and down (not at the relay, which does not count per
tunnel), duration, plus program-specific extras (the relay adds the agent's
address). Tokens and request headers never appear.
SIGHUP reopens the file, so logrotate can move it away.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import orjson

from fastrelay.logs import RateLimitedLog

log = logging.getLogger("fastrelay.access")


class AccessLog:
    def __init__(self, path: Path, fmt: str, program: str) -> None:
        self.path = path
        self.json = fmt == "json"
        self.program = program
        self.lines = 0
        self.errors = 0
        self.error_log = RateLimitedLog(log)
        self.file: TextIO = self._open()

    def _open(self) -> TextIO:
        if str(self.path) == "-":
            return sys.stderr
        # Line-buffered: a line reaches the file when its tunnel ends.
        return open(self.path, "a", buffering=1, encoding="utf-8")

    def reopen(self) -> None:
        if self.file is sys.stderr:
            return
        try:
            new = self._open()
        except OSError as exc:
            self.error_log.warning("cannot reopen the access log; keeping the old file", error=exc)
            return
        self.file.close()
        self.file = new

    def write(
        self,
        *,
        session: str,
        client: str,
        target: str,
        route: str,
        result: str,
        bytes_up: int | None = 0,
        bytes_down: int | None = 0,
        duration: float = 0.0,
        **extra: str,
    ) -> None:
        ts = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        record = {
            "ts": ts,
            "program": self.program,
            "session": session,
            "client": client,
            "target": target,
            "route": route,
            "result": result,
            "bytes_up": bytes_up,
            "bytes_down": bytes_down,
            "duration_s": round(duration, 6),
            **extra,
        }
        if bytes_up is None:  # the relay does not count bytes per tunnel
            del record["bytes_up"], record["bytes_down"]
        if self.json:
            line = orjson.dumps(record).decode()
        else:
            line = " ".join(f"{k}={_logfmt(v)}" for k, v in record.items())
        try:
            self.file.write(line + "\n")
            self.lines += 1
        except (OSError, ValueError) as exc:  # disk full, file closed: the tunnel is not at fault
            self.errors += 1
            self.error_log.warning("access log write failed", error=exc)

    def close(self) -> None:
        if self.file is not sys.stderr:
            self.file.close()


def _logfmt(value: object) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\\') or not text.isprintable():
        return orjson.dumps(text).decode()  # quoted, with escapes
    return text
