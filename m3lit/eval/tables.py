"""Averages over datasets and plain-text tables of evaluation results.

Results: ``{dataset: {mode: {metric: value}, "stats": {...}}, "average": {mode: {metric: value}}}``.
"""
from __future__ import annotations

import math
from typing import Mapping

STATS_KEY = "stats"
PER_QUERY_KEY = "per_query"   # {mode: {metric: {query id: value}}} with RetrievalSettings(per_query=True)
INFO_KEYS = (STATS_KEY, PER_QUERY_KEY)   # entries of a dataset's results that are not retrieval modes
AVERAGE_KEY = "average"


def modes_of(results: Mapping[str, Mapping]) -> list[str]:
    """Retrieval modes present in the results, in first-seen order."""
    modes: list[str] = []
    for name, per in results.items():
        if name == AVERAGE_KEY:
            continue
        for mode in per:
            if mode not in INFO_KEYS and mode not in modes:
                modes.append(mode)
    return modes


def average_results(results: Mapping[str, Mapping]) -> dict[str, dict[str, float]]:
    """Unweighted mean over datasets of every (mode, metric) they report."""
    sums: dict[str, dict[str, list[float]]] = {}
    for name, per in results.items():
        if name == AVERAGE_KEY:
            continue
        for mode, metrics in per.items():
            if mode in INFO_KEYS:
                continue
            for metric, value in metrics.items():
                sums.setdefault(mode, {}).setdefault(metric, []).append(float(value))
    return {mode: {m: math.fsum(v) / len(v) for m, v in metrics.items()} for mode, metrics in sums.items()}


def metrics_of(results: Mapping[str, Mapping]) -> list[str]:
    metrics: list[str] = []
    for name, per in results.items():
        for mode, values in per.items():
            if mode in INFO_KEYS:
                continue
            for m in values:
                if m not in metrics:
                    metrics.append(m)
    return metrics


def format_metric_table(results: Mapping[str, Mapping], metric: str, baseline: Mapping[str, float] | None = None,
                 baseline_name: str = "bm25") -> str:
    """One table for ``metric``: a row per dataset (and the average), a column per mode (+ a baseline)."""
    modes = modes_of(results)
    names = [n for n in results if n != AVERAGE_KEY] + ([AVERAGE_KEY] if AVERAGE_KEY in results else [])
    header = [metric] + modes + ([baseline_name] if baseline is not None else [])
    rows = []
    for name in names:
        row = [name]
        for mode in modes:
            value = results[name].get(mode, {}).get(metric)
            row.append("-" if value is None else f"{value:.4f}")
        if baseline is not None:
            value = baseline.get(name)
            row.append("-" if value is None else f"{value:.4f}")
        rows.append(row)
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [line(header), "  ".join("-" * w for w in widths)]
    for name, row in zip(names, rows):
        if name == AVERAGE_KEY:
            out.append("  ".join("-" * w for w in widths))
        out.append(line(row))
    return "\n".join(out)


def format_results(results: Mapping[str, Mapping], baselines: Mapping[str, Mapping[str, float]] | None = None,
                   ) -> str:
    """All metric tables, then one line per dataset whose texts were truncated.

    ``baselines``: {metric: {dataset: value}} shown as an extra column (e.g. BM25).
    """
    parts = [format_metric_table(results, m, (baselines or {}).get(m) if baselines else None)
             for m in metrics_of(results)]
    notes = []
    for name, per in results.items():
        stats = per.get(STATS_KEY, {}) if isinstance(per, Mapping) else {}
        for kind in ("passages", "queries"):
            count = stats.get(f"truncated_{kind}")
            if count:
                total = stats.get("corpus" if kind == "passages" else "queries", "?")
                notes.append(f"{name}: {count}/{total} {kind} truncated to max_length")
    if notes:
        parts.append("\n".join(notes))
    return "\n\n".join(parts)


def load_baseline(path: str, datasets: list[str], group: str | None = None) -> dict[str, dict[str, float]]:
    """Reference figures from JSON ``{dataset: {metric: v}}`` or ``{group: {dataset: {metric: v}}}`` as
    ``{metric: {dataset: v}}`` for ``datasets`` (plus their average when every dataset has the metric)."""
    import json

    with open(path) as f:
        raw = json.load(f)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object")

    def is_table(obj: object) -> bool:  # {dataset: {metric: number}}
        return isinstance(obj, dict) and all(isinstance(v, dict) and all(isinstance(x, (int, float))
                                                                         for x in v.values()) for v in obj.values())

    if group is not None:
        if group not in raw:
            raise ValueError(f"{path}: no group {group!r}; groups: {sorted(raw)}")
        table = raw[group]
    elif is_table(raw):
        table = raw
    else:
        groups = {g: t for g, t in raw.items() if is_table(t)}
        if not groups:
            raise ValueError(f"{path}: expected {{dataset: {{metric: value}}}} or {{group: {{dataset: ...}}}}")
        table = max(groups.values(), key=lambda t: sum(name in t for name in datasets))
    out: dict[str, dict[str, float]] = {}
    for name in datasets:
        for metric, value in table.get(name, {}).items():
            out.setdefault(metric, {})[name] = float(value)
    for metric, values in out.items():
        if all(name in values for name in datasets):
            values[AVERAGE_KEY] = math.fsum(values[n] for n in datasets) / len(datasets)
    return out
