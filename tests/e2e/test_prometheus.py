"""deploy/: the alerting rules pass promtool, and a real Prometheus scraping a chain under
load (curl through client_a) loads every alert rule and answers every Grafana dashboard query.

    curl -> client_a -> relay -> agent -> target      all three scraped every 1 s by
                 \\---------------------> target      /usr/bin/prometheus on its own port
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import DENIED, LISTED, UNLISTED, Chain, Target, curl_path
from helpers import free_port
from support.procs import metric, wait_until
from support.prometheus import (
    ALERTS,
    ALERTS_TEST,
    EXAMPLE_CONFIG,
    Prometheus,
    all_panels,
    grafana_expand,
    label_values,
    load_dashboard,
    panel_queries,
    promtool,
    require_prometheus,
    rule_count,
    write_config,
)

LOAD_SECONDS = 12
PING = ("--ping-interval", "1")  # so every WebSocket has ping RTT samples
ROWS = [
    "Traffic",
    "Streams",
    "Latency",
    "Errors",
    "Agents and clients",
    "Scale-out",
    "Process health",
    "Limits and isolation",
]


@dataclass
class Stack:
    chain: Chain
    prom: Prometheus
    jobs: dict[str, str]  # job name -> the program's admin address (Prometheus' instance)


def run_load(chain: Chain, target: Target, seconds: float) -> dict[str, set[str]]:
    """curl through client_a for `seconds`: listed hosts (via the relay) and unlisted ones
    (direct), HTTPS and HTTP, and every few rounds opens that fail (agent policy denies
    DENIED, nothing listens on the closed port). Returns the HTTP codes seen per good URL."""
    good = [
        target.https(LISTED, "/bytes/200000"),
        target.http(LISTED, "/hello"),
        target.https(UNLISTED, "/hello"),
        target.http(UNLISTED, "/bytes/50000"),
    ]
    failing = [
        target.https(DENIED, "/hello"),
        target.http(DENIED, "/hello"),
        f"https://{LISTED}:{free_port(LISTED)}/hello",
    ]
    codes: dict[str, set[str]] = {url: set() for url in good}
    deadline = time.monotonic() + seconds
    rounds = 0
    while time.monotonic() < deadline:
        urls = good + (failing if rounds % 4 == 0 else [])
        argv = [curl_path(), "-sS", "--max-time", "10", "--cacert", str(target.ca_pem)]
        argv += ["-x", chain.proxy, "-w", "%{http_code}\\n"]
        for url in urls:
            argv += ["-o", "/dev/null", url]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        for url, code in zip(urls, result.stdout.split(), strict=False):
            codes.setdefault(url, set()).add(code)
        rounds += 1
    return {url: codes[url] for url in good}


def sample(prom: Prometheus, expr: str) -> float:
    result = prom.query(expr)
    return float(result[0]["value"][1]) if result else float("nan")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, target: Target, rules_file: Path):
    require_prometheus()
    work = tmp_path_factory.mktemp("prometheus")
    chain = Chain(work)
    prom: Prometheus | None = None
    try:
        relay = chain.start_relay("--connect-timeout", "2", *PING)
        agent = chain.start_agent("--allow", "127.0.0.0/8", "--deny", f"{DENIED}/32", *PING)
        client = chain.start_client(rules_file, *PING)
        jobs = {
            "fastrelay-relay": relay.ready["admin"],
            "fastrelay-agent": agent.ready["admin"],
            "fastrelay-client": client.ready["admin"],
        }
        config = write_config(work / "prometheus.yml", jobs, ALERTS)
        address = f"127.0.0.1:{free_port()}"
        prom = Prometheus.start(config, work / "tsdb", address, work / "prometheus.log")
        wait_until(
            lambda: len(prom.query("up == 1")) == len(jobs),
            timeout=30,
            interval=0.2,
            what="Prometheus scraping all three programs",
        )
        codes = run_load(chain, target, LOAD_SECONDS)
        assert all("200" in seen for seen in codes.values()), codes
        # the relay's final count is in Prometheus: the next scrapes saw the whole load
        ok = metric(relay.ready["admin"], "fastrelay_streams_total", result="ok")
        wait_until(
            lambda: sample(prom, 'sum(fastrelay_streams_total{result="ok"})') >= ok,
            timeout=30,
            interval=0.2,
            what="Prometheus scraping the load's final counters",
        )
        yield Stack(chain, prom, jobs)
    finally:
        if prom is not None:
            prom.stop()
        chain.stop()


def test_alert_rules_pass_promtool_check_and_unit_tests() -> None:
    require_prometheus()
    check = promtool("check", "rules", str(ALERTS))
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"{rule_count(ALERTS)} rules found" in check.stdout, check.stdout
    unit = promtool("test", "rules", str(ALERTS_TEST))
    assert unit.returncode == 0, unit.stdout + unit.stderr


def test_example_prometheus_config_is_valid() -> None:
    require_prometheus()
    check = promtool("check", "config", str(EXAMPLE_CONFIG))  # loads alerts.yml beside it
    assert check.returncode == 0, check.stdout + check.stderr


def test_every_program_is_up(stack: Stack) -> None:
    up = {r["metric"]["job"]: r["metric"]["instance"] for r in stack.prom.query("up == 1")}
    assert up == stack.jobs


def test_every_dashboard_query_returns_data(stack: Stack) -> None:
    dashboard = load_dashboard()
    variables = {"job": ".*", "instance": ".*"}  # "All"
    failures = []
    queries = panel_queries(dashboard)
    for title, ref, expr in queries:
        promql = grafana_expand(expr, variables)
        answer = stack.prom.api("query", query=promql)
        if answer["status"] != "success":
            failures.append(f"{title} [{ref}]: {answer.get('error')}: {promql}")
        elif not answer["data"]["result"]:
            failures.append(f"{title} [{ref}]: empty: {promql}")
    assert not failures, f"{len(failures)} of {len(queries)} dashboard queries failed:\n" + (
        "\n".join(failures)
    )


def test_dashboard_variables_list_every_program(stack: Stack) -> None:
    found = {}
    for var in load_dashboard()["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            query = grafana_expand(query, {"job": ".*", "instance": ".*"})
            found[var["name"]] = set(label_values(stack.prom, query))
    assert found == {"job": set(stack.jobs), "instance": set(stack.jobs.values())}


def test_prometheus_loads_and_evaluates_every_alert_rule(stack: Stack) -> None:
    def rules() -> list[dict]:
        groups = stack.prom.api("rules")["data"]["groups"]
        assert [group["name"] for group in groups] == ["fastrelay"], groups
        return [rule for group in groups for rule in group["rules"]]

    wait_until(
        lambda: all(rule["health"] != "unknown" for rule in rules()),
        timeout=30,
        interval=0.2,
        what="every alert rule evaluated once",
    )
    loaded = rules()
    unhealthy = [
        (r["name"], r["health"], r.get("lastError")) for r in loaded if r["health"] != "ok"
    ]
    assert not unhealthy, unhealthy
    assert all(rule["type"] == "alerting" for rule in loaded)
    assert len(loaded) == rule_count(ALERTS)


def test_dashboard_is_importable() -> None:
    dashboard = load_dashboard()
    assert dashboard["title"] == "fastrelay"
    assert dashboard["uid"] and isinstance(dashboard["uid"], str)
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    variables = {var["name"]: var for var in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("job", "instance"):
        var = variables[name]
        assert var["type"] == "query" and var["multi"] and var["includeAll"], var
        assert "label_values(" in var["definition"], var
        assert var["datasource"]["uid"] == "${datasource}", var
    panels = all_panels(dashboard)
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), ids
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert all(isinstance(pos[key], int) for key in "hwxy"), panel["title"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        area = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & area, f"{panel['title']} overlaps another panel"
        cells |= area
    assert [panel["title"] for panel in panels if panel["type"] == "row"] == ROWS
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["type"] in ("timeseries", "stat"), panel["type"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        assert all(target["expr"] for target in panel["targets"]), panel["title"]
