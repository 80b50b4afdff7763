"""docs/OPERATIONS.md against the running programs: the metric table names
every fastrelay_ family each program exports, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from support.procs import Chain, http_get

DOC = Path(__file__).resolve().parents[2] / "docs" / "OPERATIONS.md"
ROW = re.compile(r"^\| `(fastrelay_[a-z_]+)(?:\{[^}]*\})?` \| (\w+) \| ([^|]+) \|", re.M)
PROGRAMS = {"relay": "relay", "agent": "agent", "client": "client_a"}


def documented() -> dict[str, tuple[str, set[str]]]:
    """{metric name: (type, programs)} from the table in the Metrics section."""
    section = DOC.read_text().split("## Metrics", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, tuple[str, set[str]]] = {}
    for name, kind, where in ROW.findall(section):
        programs = {"relay", "agent", "client_a"} if where.startswith("all") else set()
        programs |= {p for p in ("relay", "agent", "client_a") if p in where}
        rows[name] = (kind, programs)
    return rows


def exported(admin: str) -> dict[str, str]:
    """{fastrelay_ family name as written in the exposition: type}."""
    status, text = http_get(f"http://{admin}/metrics")
    assert status == 200
    families = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("fastrelay_"):
            continue
        name = family.name + ("_total" if family.type == "counter" else "")
        if family.type == "info":
            name, family.type = family.name + "_info", "gauge"
        families[name] = family.type
    return families


def test_metric_table_matches_what_the_programs_export(chain: Chain) -> None:
    table = documented()
    assert len(table) >= 20, "the metric table in docs/OPERATIONS.md was not found"
    seen: dict[str, set[str]] = {}
    problems = []
    for proc in chain.procs:
        program = PROGRAMS[proc.name]
        for name, kind in exported(proc.ready["admin"]).items():
            seen.setdefault(name, set()).add(program)
            if name not in table:
                problems.append(f"{program} exports {name}, which the table lacks")
            elif table[name][0] != kind:
                problems.append(f"{name} is a {kind}, the table says {table[name][0]}")
    for name, (_, programs) in table.items():
        if seen.get(name, set()) != programs:
            problems.append(
                f"{name}: the table says {sorted(programs)}, "
                f"exported by {sorted(seen.get(name, set()))}"
            )
    assert not problems, "\n".join(problems)
