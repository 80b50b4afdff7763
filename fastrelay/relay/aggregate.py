"""Merging the /metrics of several relay workers into one exposition.

The supervisor of `--workers N` scrapes each worker's own admin port and
serves the merge: `fastrelay_*` samples with the same name and labels are
summed (counters, gauges and histogram buckets all add up across
processes), except a few gauges where a sum means nothing; the standard
process and Python families are kept per worker under a `worker` label. Pure
code: text in, families out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from fastrelay.metrics import BUILD, CLUSTER_MEMBERS, PREFIX, READY, RULES, RULES_VERSION

# Gauges that describe the deployment, not a share of the work: one value, not a sum.
NOT_SUMMED = {
    BUILD + "_info": "first",
    CLUSTER_MEMBERS: "max",
    READY: "min",
    RULES: "max",  # every worker pushes the same file
    RULES_VERSION: "max",  # 1 per version; two during a reload that reached some workers
}

Key = tuple[str, tuple[tuple[str, str], ...]]


def parse(text: str) -> list[Metric]:
    return list(text_string_to_metric_families(text))


def merge(
    workers: Mapping[str, list[Metric]], retired: Mapping[Key, float] | None = None
) -> list[Metric]:
    """One list of families from each worker's families.

    `retired` holds the counter samples of workers that have exited, so a
    restarted worker does not make the merged counters go backwards.
    """
    docs: dict[str, tuple[str, str]] = {}  # family -> (type, help)
    sums: dict[str, dict[Key, float]] = {}
    per_worker: list[tuple[str, Metric]] = []
    for worker, families in workers.items():
        for family in families:
            if not family.name.startswith(PREFIX):
                per_worker.append((worker, family))
                continue
            docs.setdefault(family.name, (family.type, family.documentation))
            how = NOT_SUMMED.get(family.name, "sum")
            values = sums.setdefault(family.name, {})
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                values[key] = _combine(how, values.get(key), sample.value)
    for key, value in (retired or {}).items():
        name = family_of(key[0], docs)
        if name is not None:
            values = sums.setdefault(name, {})
            values[key] = values.get(key, 0.0) + value
    merged = []
    for name, (kind, doc) in docs.items():
        family = Metric(name, doc, kind)
        for (sample_name, labels), value in sums.get(name, {}).items():
            family.add_sample(sample_name, dict(labels), value)
        merged.append(family)
    merged.extend(_labelled(per_worker))
    return merged


def counter_samples(families: Iterable[Metric]) -> dict[Key, float]:
    """The samples that must survive a worker's exit: counters and histograms."""
    out: dict[Key, float] = {}
    for family in families:
        if family.name.startswith(PREFIX) and family.type in ("counter", "histogram"):
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                out[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return out


def family_of(sample_name: str, docs: Mapping[str, tuple[str, str]]) -> str | None:
    for suffix in ("", "_total", "_bucket", "_sum", "_count"):
        if suffix and not sample_name.endswith(suffix):
            continue
        base = sample_name[: len(sample_name) - len(suffix)] if suffix else sample_name
        if base in docs:
            return base
    return None


def _combine(how: str, old: float | None, new: float) -> float:
    if old is None:
        return new
    if how == "max":
        return max(old, new)
    if how == "min":
        return min(old, new)
    if how == "first":
        return old
    return old + new


def _labelled(per_worker: list[tuple[str, Metric]]) -> list[Metric]:
    families: dict[str, Metric] = {}
    for worker, family in per_worker:
        out = families.get(family.name)
        if out is None:
            out = families[family.name] = Metric(family.name, family.documentation, family.type)
        for sample in family.samples:
            out.add_sample(sample.name, {**sample.labels, "worker": worker}, sample.value)
    return list(families.values())
