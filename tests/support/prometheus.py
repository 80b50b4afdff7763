"""A real Prometheus server (Debian's /usr/bin/prometheus) for the deploy/ tests,
and readers for the Grafana dashboard and the alerting rules in deploy/."""

from __future__ import annotations

import json
import os
import re
import subprocess
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support.procs import ROOT, http_get, require_tools_or_skip, wait_until

from fastrelay.lifecycle import stop_process

PROMETHEUS = "/usr/bin/prometheus"
PROMTOOL = "/usr/bin/promtool"
DASHBOARD = ROOT / "deploy/grafana/fastrelay.json"
ALERTS = ROOT / "deploy/prometheus/alerts.yml"
ALERTS_TEST = ROOT / "deploy/prometheus/alerts_test.yml"
EXAMPLE_CONFIG = ROOT / "deploy/prometheus/prometheus.yml"

# What Grafana puts in for its built-in interval variables (our scrape interval is 1 s).
GRAFANA_INTERVALS = {"$__rate_interval": "10s", "$__interval": "2s", "$__range": "1m"}


def require_prometheus() -> None:
    """Skip when Prometheus is not installed, except in CI, where that is a failure."""
    missing = [path for path in (PROMETHEUS, PROMTOOL) if not os.access(path, os.X_OK)]
    require_tools_or_skip(missing, "scripts/system-deps.sh installs Debian's prometheus")


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)


def write_config(path: Path, targets: dict[str, str], rule_file: Path) -> Path:
    """A Prometheus config scraping each job's one target every second (JSON is YAML)."""
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rule_file)],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [address]}]}
            for job, address in targets.items()
        ],
    }
    path.write_text(json.dumps(config, indent=2))
    return path


@dataclass
class Prometheus:
    popen: subprocess.Popen
    address: str
    log_path: Path

    @classmethod
    def start(cls, config: Path, storage: Path, address: str, log_path: Path) -> Prometheus:
        argv = [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={storage}",
            f"--web.listen-address={address}",
        ]
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        prom = cls(popen, address, log_path)
        try:
            wait_until(prom.ready, timeout=30, interval=0.2, what="Prometheus /-/ready")
        except BaseException:
            prom.stop()
            raise AssertionError(f"Prometheus did not become ready:\n{prom.log_tail()}") from None
        return prom

    def ready(self) -> bool:
        assert self.popen.poll() is None, f"Prometheus exited:\n{self.log_tail()}"
        try:
            return http_get(f"http://{self.address}/-/ready", timeout=1)[0] == 200
        except OSError:
            return False

    def api(self, path: str, **params: str) -> dict[str, Any]:
        """GET /api/v1/<path>; returns the decoded JSON body (errors included)."""
        query = urllib.parse.urlencode(params, doseq=True)
        status, body = http_get(f"http://{self.address}/api/v1/{path}?{query}", timeout=10)
        try:
            return json.loads(body)
        except ValueError:
            return {"status": "error", "error": f"HTTP {status}: {body[:300]}"}

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = self.api("query", query=expr)
        assert answer["status"] == "success", (expr, answer)
        return answer["data"]["result"]

    def stop(self) -> None:
        stop_process(self.popen, 10)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def panel_queries(dashboard: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(panel title, refId, expr) of every target of every panel."""
    return [
        (panel["title"], target.get("refId", "?"), target["expr"])
        for panel in all_panels(dashboard)
        for target in panel.get("targets", [])
        if "expr" in target
    ]


def grafana_expand(expr: str, variables: dict[str, str]) -> str:
    """The PromQL Grafana would send: template variables and interval macros replaced."""
    for macro, value in GRAFANA_INTERVALS.items():
        expr = expr.replace(macro, value)
    for name, value in sorted(variables.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace("${" + name + "}", value).replace("$" + name, value)
    return expr


LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(?P<match>.+),\s*)?(?P<label>\w+)\s*\)\s*$")


def label_values(prom: Prometheus, query: str) -> list[str]:
    """Evaluate a Grafana `label_values([series,] label)` variable query."""
    found = LABEL_VALUES.match(query)
    assert found, f"not a label_values() query: {query}"
    params = {"match[]": found["match"]} if found["match"] else {}
    answer = prom.api(f"label/{found['label']}/values", **params)
    assert answer["status"] == "success", (query, answer)
    return answer["data"]


def rule_count(path: Path) -> int:
    """How many alerting and recording rules a rules file defines."""
    return len(re.findall(r"^\s*- (?:alert|record):", path.read_text(), flags=re.MULTILINE))
