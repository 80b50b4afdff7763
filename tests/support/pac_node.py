"""Evaluate PAC files in node (tests/support/pac_eval.js) from Python: one node process, many
PAC files and hosts, one JSON line each way.  Every read is bounded in time."""

from __future__ import annotations

import json
import select
import shutil
import subprocess
from pathlib import Path
from typing import Any

EVAL_JS = Path(__file__).with_name("pac_eval.js")
TIMEOUT = 120.0


def node_path() -> str | None:
    return shutil.which("node") or shutil.which("nodejs")


class PacNode:
    def __init__(self) -> None:
        node = node_path()
        if node is None:
            raise RuntimeError("node is not installed (Debian: apt-get install nodejs)")
        self.proc = subprocess.Popen(
            [node, str(EVAL_JS)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def run(self, pac: str, hosts: list[str], rounds: int = 0) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        request = json.dumps({"pac": pac, "hosts": hosts, "rounds": rounds}) + "\n"
        self.proc.stdin.write(request.encode())
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], TIMEOUT)
        if not ready:
            raise TimeoutError(f"node gave no answer within {TIMEOUT:g} s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(
                f"node exited: {self.proc.stderr.read().decode() if self.proc.stderr else ''}"
            )
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"the PAC failed in node: {answer['error']}")
        return answer

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


__all__ = ["PacNode", "node_path"]
