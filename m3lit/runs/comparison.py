"""Comparison of a sweep's runs: labels, the scheme × head × metric table, and the per-head bar plot.

Metric names follow the retrieval evaluation callback: ``<prefix>/<dataset>/<mode>/<metric>`` where ``dataset``
may be ``average`` and ``mode`` is a head (dense, sparse, colbert) or a hybrid (dense+sparse, all).
"""
from __future__ import annotations

import csv
import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

from .record import RunRecord

HEAD_ORDER = ("dense", "sparse", "colbert", "dense+sparse", "all")
METRIC_ORDER = ("ndcg", "recall", "mrr", "map", "precision")


def _metric_key(metric: str) -> tuple[int, str, float]:
    """ndcg@10 before recall@100 before mrr@10; then by name and cutoff."""
    name, _, cutoff = metric.partition("@")
    rank = METRIC_ORDER.index(name) if name in METRIC_ORDER else len(METRIC_ORDER)
    try:
        k = float(cutoff)
    except ValueError:
        k = math.inf
    return rank, name, k


def _override_items(overrides: Sequence[str]) -> dict[str, str]:
    """``+scheme=uniform`` → {"scheme": "uniform"} (prefixes +, ++, ~ dropped)."""
    items = {}
    for override in overrides:
        key, sep, value = override.partition("=")
        if sep:
            items[key.lstrip("+~")] = value
    return items


def _varying_keys(runs: Sequence[RunRecord], average_over: Sequence[str]) -> tuple[list[dict[str, str]], list[str]]:
    ignored = set(average_over)
    items = [{k: v for k, v in _override_items(r.overrides).items() if k not in ignored} for r in runs]
    keys = sorted({k for it in items for k in it})
    return items, [k for k in keys if len({it.get(k) for it in items}) > 1]


def label_name(runs: Sequence[RunRecord], by: str | None = None, average_over: Sequence[str] = ("seed",)) -> str:
    """What the labels of ``run_labels`` are: ``by``, the one varying override key, else ``run``."""
    if by:
        return by.removeprefix("choices.")
    varying = _varying_keys(runs, average_over)[1]
    return varying[0] if len(varying) == 1 else "run"


def run_labels(runs: Sequence[RunRecord], by: str | None = None, average_over: Sequence[str] = ("seed",)) -> list[str]:
    """A short label per run; runs sharing a label are replicates that ``compare`` averages.

    ``by``: a config key (``teacher.weights.sparse``, ``choices.scheme``) whose value labels each run. Default:
    the command-line overrides whose values differ between the runs, ``average_over`` keys (the seed) left out —
    just the value when one key differs, else ``key=value,...``; the run name when none differ.
    """
    if by:
        return [str(r.config_value(by)) for r in runs]
    items, varying = _varying_keys(runs, average_over)
    if not varying:
        return [r.name for r in runs]
    if len(varying) == 1:
        return [it.get(varying[0], "-") for it in items]
    return [",".join(f"{k}={it[k]}" for k in varying if k in it) or r.name for it, r in zip(items, runs)]


@dataclass
class Comparison:
    """values[label][metric][mode] = mean over the label's runs (``runs[label]`` of them), ``stds`` likewise,
    for one dataset (``average`` by default)."""

    labels: list[str]
    modes: list[str]
    metrics: list[str]
    dataset: str
    values: dict[str, dict[str, dict[str, float]]]
    stds: dict[str, dict[str, dict[str, float]]]
    runs: dict[str, int]
    steps: dict[str, int | None]
    n_datasets: int
    label_name: str = "scheme"

    def value(self, label: str, metric: str, mode: str) -> float:
        return self.values.get(label, {}).get(metric, {}).get(mode, math.nan)

    def std(self, label: str, metric: str, mode: str) -> float:
        return self.stds.get(label, {}).get(metric, {}).get(mode, math.nan)

    @property
    def replicated(self) -> bool:
        return any(n > 1 for n in self.runs.values())


def compare(runs: Sequence[RunRecord], labels: Sequence[str], dataset: str = "average",
            metrics: Sequence[str] | None = None, prefix: str = "eval", label_name: str = "scheme") -> Comparison:
    """Collect ``<prefix>/<dataset>/<mode>/<metric>`` of every run (metrics: all found when None); runs with the
    same label are averaged (sample standard deviation alongside; 0 for a single run)."""
    found_modes: OrderedDict[str, None] = OrderedDict()
    found_metrics: OrderedDict[str, None] = OrderedDict()
    datasets: set[str] = set()
    samples: dict[str, dict[str, dict[str, list[float]]]] = {}
    counts: dict[str, int] = {}
    steps: dict[str, int | None] = {}
    for run, label in zip(runs, labels):
        counts[label] = counts.get(label, 0) + 1
        steps[label] = _step(run) if steps.get(label) is None else steps[label]
        per = samples.setdefault(label, {})
        for key, value in run.metrics.items():
            parts = key.split("/")
            if len(parts) != 4 or parts[0] != prefix:
                continue
            datasets.add(parts[1])
            if parts[1] != dataset:
                continue
            found_modes[parts[2]] = None
            found_metrics[parts[3]] = None
            per.setdefault(parts[3], {}).setdefault(parts[2], []).append(value)
    if not found_modes:
        known = sorted(datasets) or ["none"]
        raise ValueError(f"no {prefix}/{dataset}/<mode>/<metric> values in the runs (datasets found: "
                         f"{', '.join(known)})")
    modes = [m for m in HEAD_ORDER if m in found_modes] + [m for m in found_modes if m not in HEAD_ORDER]
    if metrics is None:
        metrics = sorted(found_metrics, key=_metric_key)
    else:
        missing = [m for m in metrics if m not in found_metrics]
        if missing:
            raise ValueError(f"metric(s) {missing} not logged; found {list(found_metrics)}")
    means = {lb: {m: {mode: sum(v) / len(v) for mode, v in per.items()} for m, per in d.items()}
             for lb, d in samples.items()}
    stds = {lb: {m: {mode: _std(v) for mode, v in per.items()} for m, per in d.items()} for lb, d in samples.items()}
    return Comparison(list(dict.fromkeys(labels)), modes, list(metrics), dataset, means, stds, counts, steps,
                      len(datasets - {"average"}), label_name)


def _std(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _step(run: RunRecord) -> int | None:
    for key in ("trainer/global_step", "global_step"):
        if key in run.metrics:
            return int(run.metrics[key])
    return None


def _fmt(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.4f}"


def _cell(comparison: "Comparison", label: str, metric: str, mode: str) -> str:
    value = comparison.value(label, metric, mode)
    if comparison.replicated and not math.isnan(value):
        return f"{value:.4f}±{comparison.std(label, metric, mode):.4f}"
    return _fmt(value)


def format_comparison(comparison: Comparison, markdown: bool = False) -> str:
    """One block per metric: rows = run labels, columns = heads and hybrids (mean±std over replicates)."""
    blocks = []
    where = (f"average over {comparison.n_datasets} datasets" if comparison.dataset == "average"
             else f"dataset {comparison.dataset}")
    extra = ["runs"] if comparison.replicated else []
    for metric in comparison.metrics:
        header = [comparison.label_name] + comparison.modes + extra
        rows = [[label] + [_cell(comparison, label, metric, mode) for mode in comparison.modes]
                + ([str(comparison.runs[label])] if extra else []) for label in comparison.labels]
        title = f"{metric} ({where}, final evaluation{', mean±std over runs' if extra else ''})"
        if markdown:
            lines = [f"**{title}**", "", "| " + " | ".join(header) + " |",
                     "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
            lines += ["| " + " | ".join(r) + " |" for r in rows]
        else:
            widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
            lines = [_line(r, widths) for r in [header, ["-" * w for w in widths]] + rows]
            lines.insert(0, title)
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _line(cells: Sequence[str], widths: Sequence[int]) -> str:
    return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))


def write_csv(comparison: Comparison, path: str) -> str:
    """Long format: label, runs, dataset, mode, metric, mean, std, step."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "runs", "dataset", "mode", "metric", "mean", "std", "step"])
        for label in comparison.labels:
            for metric in comparison.metrics:
                for mode in comparison.modes:
                    mean, std = comparison.value(label, metric, mode), comparison.std(label, metric, mode)
                    writer.writerow([label, comparison.runs[label], comparison.dataset, mode, metric,
                                     "" if math.isnan(mean) else f"{mean:.6f}", "" if math.isnan(std) else f"{std:.6f}",
                                     "" if comparison.steps[label] is None else comparison.steps[label]])
    return path


def plot(comparison: Comparison, path: str, metric: str = "ndcg@10", title: str | None = None) -> str:
    """Grouped bars: one group per run label, one bar per head/hybrid (error bars: std over replicates);
    ``metric`` on the y axis. Writes a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if metric not in comparison.metrics:
        raise ValueError(f"plot metric {metric!r} not among {comparison.metrics}")
    labels, modes = comparison.labels, comparison.modes
    width = 0.8 / len(modes)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.28 * len(labels) * len(modes) + 2), 4.2))
    for j, mode in enumerate(modes):
        xs = [i + (j - (len(modes) - 1) / 2) * width for i in range(len(labels))]
        ys = [comparison.value(label, metric, mode) for label in labels]
        errs = [comparison.std(label, metric, mode) for label in labels] if comparison.replicated else None
        ax.bar(xs, [0.0 if math.isnan(y) else y for y in ys], width, label=mode,
               yerr=None if errs is None else [0.0 if math.isnan(e) else e for e in errs], capsize=2)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=30, ha="right")
    ax.set_xlabel(comparison.label_name)
    where = "average" if comparison.dataset == "average" else comparison.dataset
    ax.set_ylabel(f"{metric} ({where})")
    ax.set_ylim(0, 1)
    ax.set_title(title or f"{metric} per head by {comparison.label_name}")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
