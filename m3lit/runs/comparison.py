"""Comparison of a sweep's runs: labels, the scheme × head × metric table, and the per-head bar plot.

Metric names follow the retrieval evaluation callback: ``<prefix>/<dataset>/<mode>/<metric>`` where ``dataset``
may be ``average`` and ``mode`` is a head (dense, sparse, colbert) or a hybrid (dense+sparse, all).
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Sequence

from .record import RunRecord
from .significance import MARKS, holm, paired_differences, paired_randomization_test, t_interval, verdict

HEAD_ORDER = ("dense", "sparse", "colbert", "dense+sparse", "all")
HEALTH_METRICS = ("zero_frac", "nnz")   # the sparse head's health on each corpus (evaluation callback)
_RANKING = re.compile(r"^(ndcg|recall|mrr|map|precision)@\d+$")
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
class PairedTest:
    """A scheme against the baseline on one (dataset, mode, metric): the mean difference over queries (the
    ``average`` dataset: of the dataset means), its paired randomisation p-value, Holm-adjusted over the schemes."""

    delta: float
    p: float
    p_adjusted: float
    verdict: str
    queries: int


@dataclass
class Comparison:
    """values[label][metric][mode] = mean over the label's runs (``runs[label]`` of them), ``stds`` likewise,
    ``intervals`` the 95 % t-interval over them, ``tests`` each label against ``baseline`` (paired over queries),
    for one dataset (``average`` by default) of one metric prefix (``eval``: dev; ``test``: held out)."""

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
    prefix: str = "eval"
    intervals: dict[str, dict[str, dict[str, tuple[float, float]]]] = field(default_factory=dict)
    baseline: str | None = None
    tests: dict[str, dict[str, dict[str, PairedTest]]] = field(default_factory=dict)
    alpha: float = 0.05
    setup: str = ""                 # what sets these runs apart from other tables' runs (data, steps); "" if alone
    note: str = ""                  # why no paired test was made, when none was

    def value(self, label: str, metric: str, mode: str) -> float:
        return self.values.get(label, {}).get(metric, {}).get(mode, math.nan)

    def std(self, label: str, metric: str, mode: str) -> float:
        return self.stds.get(label, {}).get(metric, {}).get(mode, math.nan)

    def interval(self, label: str, metric: str, mode: str) -> tuple[float, float]:
        return self.intervals.get(label, {}).get(metric, {}).get(mode, (math.nan, math.nan))

    def test(self, label: str, metric: str, mode: str) -> PairedTest | None:
        return self.tests.get(label, {}).get(metric, {}).get(mode)

    @property
    def replicated(self) -> bool:
        return any(n > 1 for n in self.runs.values())


def compare(runs: Sequence[RunRecord], labels: Sequence[str], dataset: str = "average",
            metrics: Sequence[str] | None = None, prefix: str = "eval", label_name: str = "scheme",
            baseline: str | None = None, alpha: float = 0.05, samples: int = 10000, setup: str = "") -> Comparison:
    """Collect ``<prefix>/<dataset>/<mode>/<metric>`` of every run (metrics: all found when None); runs with the
    same label are averaged (sample standard deviation and 95 % t-interval alongside; std 0 for a single run).

    ``baseline``: the label the others are tested against (default: the first); the paired randomisation test
    over queries uses each run's per-query values (``RunRecord.per_query``), averaged over a label's runs, and is
    skipped (``note`` says why) when a run has none."""
    found_modes: OrderedDict[str, None] = OrderedDict()
    found_metrics: OrderedDict[str, None] = OrderedDict()
    datasets: set[str] = set()
    samples_by: dict[str, dict[str, dict[str, list[float]]]] = {}
    counts: dict[str, int] = {}
    steps: dict[str, int | None] = {}
    for run, label in zip(runs, labels):
        counts[label] = counts.get(label, 0) + 1
        steps[label] = _step(run) if steps.get(label) is None else steps[label]
        per = samples_by.setdefault(label, {})
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
    if metrics is None:  # the ranking metrics (ndcg@10, …); health values such as sparse/nnz only when asked
        metrics = sorted((m for m in found_metrics if _RANKING.match(m)), key=_metric_key) or \
            sorted(found_metrics, key=_metric_key)
    else:
        missing = [m for m in metrics if m not in found_metrics]
        if missing:
            raise ValueError(f"metric(s) {missing} not logged; found {list(found_metrics)}")
    present = {mode for per in samples_by.values() for m in metrics for mode in per.get(m, {})}
    modes = [m for m in HEAD_ORDER if m in present] + [m for m in found_modes if m in present and m not in HEAD_ORDER]
    means = {lb: {m: {mode: sum(v) / len(v) for mode, v in per.items()} for m, per in d.items()}
             for lb, d in samples_by.items()}
    stds = {lb: {m: {mode: _std(v) for mode, v in per.items()} for m, per in d.items()}
            for lb, d in samples_by.items()}
    intervals = {lb: {m: {mode: t_interval(v) for mode, v in per.items()} for m, per in d.items()}
                 for lb, d in samples_by.items()}
    ordered = list(dict.fromkeys(labels))
    if baseline is not None and baseline not in ordered:
        raise ValueError(f"baseline={baseline!r}: not among the run labels {ordered}")
    baseline = baseline or ordered[0]
    comparison = Comparison(ordered, modes, list(metrics), dataset, means, stds, counts, steps,
                            len(datasets - {"average"}), label_name, prefix, intervals, baseline, alpha=alpha,
                            setup=setup)
    if len(ordered) > 1:
        comparison.tests, comparison.note = paired_tests(runs, labels, comparison, samples)
    return comparison


def _label_queries(runs: Sequence[RunRecord], labels: Sequence[str], prefix: str,
                   ) -> tuple[dict[str, dict[str, dict[str, dict[str, dict[str, float]]]]], str]:
    """{label: {dataset: {mode: {metric: {query: value averaged over the label's runs}}}}}, or ({}, why not)."""
    sums: dict[str, Any] = {}
    counts: dict[str, int] = {}
    for run, label in zip(runs, labels):
        values = run.per_query(prefix)
        if values is None:
            return {}, f"no paired test: run {run.name} kept no per-query values"
        counts[label] = counts.get(label, 0) + 1
        target = sums.setdefault(label, {})
        for name, per_mode in values.items():
            for mode, per_metric in per_mode.items():
                for metric, per_q in per_metric.items():
                    cell = target.setdefault(name, {}).setdefault(mode, {}).setdefault(metric, {})
                    for qid, v in per_q.items():
                        cell[qid] = cell.get(qid, 0.0) + float(v)
    for label, target in sums.items():
        for per_mode in target.values():
            for per_metric in per_mode.values():
                for cell in per_metric.values():
                    for qid in cell:
                        cell[qid] /= counts[label]
    return sums, ""


def paired_tests(runs: Sequence[RunRecord], labels: Sequence[str], comparison: Comparison, samples: int = 10000,
                 ) -> tuple[dict[str, dict[str, dict[str, PairedTest]]], str]:
    """Every label against ``comparison.baseline`` on each (metric, mode) of ``comparison.dataset``: the paired
    randomisation test over queries (``average``: stratified by dataset), Holm-adjusted over the labels."""
    per_label, note = _label_queries(runs, labels, comparison.prefix)
    if not per_label:
        return {}, note
    base = per_label[comparison.baseline]
    names = sorted(base) if comparison.dataset == "average" else [comparison.dataset]
    others = [lb for lb in comparison.labels if lb != comparison.baseline]
    out: dict[str, dict[str, dict[str, PairedTest]]] = {lb: {} for lb in others}
    for metric in comparison.metrics:
        for mode in comparison.modes:
            raw = []
            for label in others:
                try:
                    strata = [paired_differences(per_label[label][name][mode][metric], base[name][mode][metric],
                                                 f"{comparison.prefix}/{name}/{mode}/{metric}: {label} vs "
                                                 f"{comparison.baseline}") for name in names]
                except KeyError:
                    raw.append(None)
                    continue
                delta, p = paired_randomization_test(strata, samples=samples)
                raw.append((delta, p, sum(len(d) for d in strata)))
            adjusted = holm([math.nan if r is None else r[1] for r in raw])
            for label, r, p_adj in zip(others, raw, adjusted):
                if r is not None:
                    out[label].setdefault(metric, {})[mode] = PairedTest(r[0], r[1], p_adj,
                                                                         verdict(r[0], p_adj, comparison.alpha), r[2])
    return out, ""


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


# ---------------------------------------------------------------------------------------------- setups
SETUP_KEYS = ("data", "trainer.max_steps", "callbacks.retrieval_eval.beir", "callbacks.retrieval_eval.split",
              "callbacks.retrieval_eval.datasets", "callbacks.retrieval_eval.max_queries",
              "callbacks.retrieval_eval.test_fraction", "callbacks.retrieval_eval.test_split",
              "callbacks.retrieval_eval.test_beir", "callbacks.retrieval_eval.split_seed")


def _flat(value: Any, prefix: str) -> dict[str, str]:
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for key, sub in value.items():
            out.update(_flat(sub, f"{prefix}.{key}"))
        return out
    return {prefix: json.dumps(value, sort_keys=True, default=str)}


def run_setup(run: RunRecord) -> dict[str, str]:
    """What must be equal for two runs' numbers to be comparable: the training data and its options, the step
    budget (configured and reached) and the evaluation queries; {dotted key: JSON value}."""
    out: dict[str, str] = {}
    for key in SETUP_KEYS:
        out.update(_flat(run.config_value(key), key))
    out["steps reached"] = json.dumps(_step(run))
    return out


def split_by_setup(runs: Sequence[RunRecord], labels: Sequence[str],
                   ) -> list[tuple[str, list[RunRecord], list[str]]]:
    """The runs grouped by :func:`run_setup` (first-seen order): [(description, runs, labels)]; the description
    names what differs between the groups (``""`` when all runs share one setup)."""
    setups = [run_setup(r) for r in runs]
    groups: OrderedDict[str, list[int]] = OrderedDict()
    for i, setup in enumerate(setups):
        groups.setdefault(json.dumps(setup, sort_keys=True), []).append(i)
    if len(groups) == 1:
        return [("", list(runs), list(labels))]
    keys = sorted({k for s in setups for k in s})
    varying = [k for k in keys if len({s.get(k) for s in setups}) > 1]
    common = {k: _common_prefix([setups[m[0]].get(k, "null") for m in groups.values()]) for k in varying}
    out = []
    for members in groups.values():
        setup = setups[members[0]]
        text = ", ".join(f"{k}={_short(setup.get(k, 'null'), common[k])}" for k in varying)
        out.append((text, [runs[i] for i in members], [labels[i] for i in members]))
    return out


def _common_prefix(values: list[str]) -> str:
    """The folder above the path the (JSON string) values share, when they are paths: left out of the
    descriptions (``…/train`` and ``…/train/distill_en.jsonl`` stay)."""
    paths = [v.strip('"') for v in values]
    if not all(p.startswith("/") for p in paths):
        return ""
    prefix = os.path.dirname(os.path.commonpath(paths))
    return prefix if prefix != "/" else ""


def _short(value: str, common: str = "", width: int = 60) -> str:
    value = value.strip('"')
    if common and value.startswith(common + "/"):
        value = "…" + value[len(common):]
    return value if len(value) <= width else "…" + value[-(width - 1):]


# ---------------------------------------------------------------------------------------------- tables
def _fmt(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.4f}"


def _cell(comparison: "Comparison", label: str, metric: str, mode: str) -> str:
    value = comparison.value(label, metric, mode)
    if math.isnan(value):
        return "-"
    text = _fmt(value)
    if comparison.replicated:
        text += f"±{comparison.std(label, metric, mode):.4f}"
        low, high = comparison.interval(label, metric, mode)
        if not math.isnan(low):
            text += f" [{low:.3f},{high:.3f}]"
    test = comparison.test(label, metric, mode)
    if test is not None:
        text += f" {MARKS[test.verdict]}{_p(test.p_adjusted)}"
    return text


def _p(p: float) -> str:
    return f"{p:.0e}" if p < 1e-3 else f"{p:.3f}"


def where_text(comparison: Comparison) -> str:
    split = {"eval": "dev", "test": "held-out test"}.get(comparison.prefix, comparison.prefix)
    where = (f"average over {comparison.n_datasets} datasets" if comparison.dataset == "average"
             else f"dataset {comparison.dataset}")
    return f"{split} {comparison.prefix}/…, {where}"


def format_comparison(comparison: Comparison, markdown: bool = False) -> str:
    """One block per metric: rows = run labels, columns = heads and hybrids. Cells: mean (±std [95 % interval]
    over replicates) and, against the baseline row, ▲ better / ▼ worse / ≈ not distinguishable with the
    Holm-adjusted p-value of the paired randomisation test over queries."""
    blocks = []
    extra = ["runs"] if comparison.replicated else []
    tested = any(comparison.tests.values())
    for metric in comparison.metrics:
        header = [comparison.label_name] + comparison.modes + extra
        rows = [[label + (" (baseline)" if tested and label == comparison.baseline else "")]
                + [_cell(comparison, label, metric, mode) for mode in comparison.modes]
                + ([str(comparison.runs[label])] if extra else []) for label in comparison.labels]
        parts = [f"{where_text(comparison)}, final evaluation"]
        if extra:
            parts.append("mean±std [95 % t-interval] over runs")
        if tested:
            parts.append(f"vs {comparison.baseline}: ▲ better / ▼ worse / ≈ not distinguishable at "
                         f"α={comparison.alpha:g}, Holm-adjusted p of a paired randomisation test over queries")
        elif comparison.note:
            parts.append(comparison.note)
        title = f"{metric} ({'; '.join(parts)})"
        if comparison.setup:
            title += f"\nruns with {comparison.setup}"
        if markdown:
            lines = [f"**{title.splitlines()[0]}**"] + [f"*{t}*" for t in title.splitlines()[1:]] + [
                "", "| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
            lines += ["| " + " | ".join(r) + " |" for r in rows]
        else:
            widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
            lines = title.splitlines() + [_line(r, widths) for r in [header, ["-" * w for w in widths]] + rows]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _line(cells: Sequence[str], widths: Sequence[int]) -> str:
    return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))


CSV_COLUMNS = ["setup", "prefix", "dataset", "label", "runs", "mode", "metric", "mean", "std", "ci_low", "ci_high",
               "baseline", "delta", "p", "p_adjusted", "verdict", "queries", "step"]


def csv_rows(comparison: Comparison) -> list[list[Any]]:
    """The comparison in long format (columns ``CSV_COLUMNS``; a missing or NaN value is None)."""
    def num(v: float | None) -> float | None:
        return None if v is None or math.isnan(v) else round(v, 6)

    rows = []
    for label in comparison.labels:
        for metric in comparison.metrics:
            for mode in comparison.modes:
                low, high = comparison.interval(label, metric, mode)
                test = comparison.test(label, metric, mode)
                rows.append([comparison.setup, comparison.prefix, comparison.dataset, label, comparison.runs[label],
                             mode, metric, num(comparison.value(label, metric, mode)),
                             num(comparison.std(label, metric, mode)), num(low), num(high),
                             comparison.baseline if any(comparison.tests.values()) else None,
                             num(test.delta) if test else None, num(test.p) if test else None,
                             num(test.p_adjusted) if test else None, test.verdict if test else None,
                             test.queries if test else None, comparison.steps[label]])
    return rows


def write_csv(comparisons: Comparison | Sequence[Comparison], path: str) -> str:
    """Long format (``CSV_COLUMNS``), one row per (comparison, label, mode, metric)."""
    if isinstance(comparisons, Comparison):
        comparisons = [comparisons]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for comparison in comparisons:
            writer.writerows([["" if v is None else v for v in row] for row in csv_rows(comparison)])
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


def _series(runs: Sequence[RunRecord], labels: Sequence[str], kind: str, keys: Sequence[str],
            ) -> dict[str, dict[str, list[dict[int, float]]]]:
    """{label: {key: [per run {step: value}]}} from the runs' histories (runs without one left out)."""
    out: dict[str, dict[str, list[dict[int, float]]]] = {}
    for run, label in zip(runs, labels):
        history = run.history(kind)
        for key in keys:
            points = {step: values[key] for step, values in history if key in values}
            if points:
                out.setdefault(label, {}).setdefault(key, []).append(points)
    return out


def _band(per_run: list[dict[int, float]]) -> tuple[list[int], list[float], list[float], list[float]]:
    """Steps every run has, the mean over runs there, and mean ∓ std (0 for one run)."""
    steps = sorted(set.intersection(*(set(p) for p in per_run)))
    means, lows, highs = [], [], []
    for step in steps:
        values = [p[step] for p in per_run]
        mean, std = sum(values) / len(values), _std(values)
        means.append(mean)
        lows.append(mean - std)
        highs.append(mean + std)
    return steps, means, lows, highs


def _figure(panels: Sequence[str], title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols + 1.5, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(title)
    return plt, fig, list(axes.flat)[:len(panels)]


def _save(plt: Any, fig: Any, axes: Any, path: str) -> str:
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, fontsize="small", loc="center right")
    fig.tight_layout(rect=(0, 0, 0.82, 0.95))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_curves(runs: Sequence[RunRecord], labels: Sequence[str], path: str, metric: str = "ndcg@10",
                prefix: str = "eval", dataset: str = "average") -> str | None:
    """``<prefix>/<dataset>/<mode>/<metric>`` against the step, one panel per head/hybrid, one line per label
    (mean over its runs, band ±std); from the runs' ``eval_history.jsonl``. None when no run has a history."""
    keys = [f"{prefix}/{dataset}/{mode}/{metric}" for mode in HEAD_ORDER]
    series = _series(runs, labels, "eval", keys)
    modes = [m for m, k in zip(HEAD_ORDER, keys) if any(k in per for per in series.values())]
    if not modes:
        return None
    plt, fig, axes = _figure(modes, f"{metric} during training ({prefix}/{dataset}; mean ± std over runs)")
    for ax, mode in zip(axes, modes):
        key = f"{prefix}/{dataset}/{mode}/{metric}"
        for label in dict.fromkeys(labels):
            if key not in series.get(label, {}):
                continue
            steps, means, lows, highs = _band(series[label][key])
            line, = ax.plot(steps, means, marker="o", markersize=3, label=label)
            ax.fill_between(steps, lows, highs, color=line.get_color(), alpha=0.2)
        ax.set_title(mode)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    return _save(plt, fig, axes, path)


def plot_teacher_weights(runs: Sequence[RunRecord], labels: Sequence[str], path: str) -> str | None:
    """The ``teacher/*`` values that change during training (learned weights, temperature) against the step,
    one panel per value, one line per label (mean ± std over runs); from ``train_history.jsonl``."""
    keys = sorted({k for run in runs for _, values in run.history("train") for k in values
                   if k.startswith("teacher/")})
    series = _series(runs, labels, "train", keys)
    moving = [k for k in keys if any(max(p.values()) - min(p.values()) > 1e-9
                                     for per in series.values() for p in per.get(k, []))]
    if not moving:
        return None
    plt, fig, axes = _figure(moving, "teacher values during training (mean ± std over runs)")
    for ax, key in zip(axes, moving):
        for label in dict.fromkeys(labels):
            per = series.get(label, {}).get(key)
            if not per or all(max(p.values()) - min(p.values()) <= 1e-9 for p in per):
                continue
            steps, means, lows, highs = _band(per)
            line, = ax.plot(steps, means, label=label)
            ax.fill_between(steps, lows, highs, color=line.get_color(), alpha=0.2)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    return _save(plt, fig, axes, path)
