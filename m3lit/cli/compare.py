"""``m3lit-compare``: compare the runs of a sweep — a scheme × head × metric table and a per-head bar plot.

    m3lit-compare multirun/teacher_weighting/2026-01-01_12-00-00      # a sweep folder (or any folder of runs)
    m3lit-compare multirun/... --source wandb                         # read the offline W&B runs instead
    m3lit-compare my-entity/m3lit/teacher_weighting                   # a W&B group (online, needs an API key)
    m3lit-compare my-entity/m3lit/sweeps/abc123xy                     # a W&B sweep
    m3lit-compare DIR --dataset en --metrics ndcg@10 --by teacher.weights.sparse
    m3lit-compare DIR_SEED42 DIR_SEEDS_1_2                            # runs of several sweeps together

Reads each run's final evaluation (``eval/<dataset>/<mode>/<metric>``), prints one table per metric (rows: runs
labelled by the overrides that differ between them, or ``--by`` a config key; runs differing only in the seed are
averaged, mean±std; columns: heads and hybrids), writes
``compare.md``, ``compare.csv`` and ``compare.png`` (``--plot-metric`` per head by scheme) into ``--output``
(default: the sweep folder, or the current folder for W&B targets), and logs the table and the plot to W&B as a
``compare`` run of the sweep's project and group when W&B is online (``--wandb auto``) or ``--wandb on``.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from ..runs import RunRecord, collect_runs, compare, format_comparison, label_name, plot, run_labels, write_csv


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="m3lit-compare", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="+", metavar="target",
                        help="sweep/run folder, or W&B [entity/]project/group | [entity/]project/sweeps/ID; "
                             "several: their runs together (e.g. the same sweep run with other seeds)")
    parser.add_argument("--source", choices=("auto", "summary", "wandb"), default="auto",
                        help="local runs: m3lit_run.json summaries, offline W&B run files, or both (auto)")
    parser.add_argument("--dataset", default="average", help="evaluation dataset (default: the average)")
    parser.add_argument("--metrics", default=None, help="comma-separated metrics (default: all logged)")
    parser.add_argument("--by", default=None, help="label runs by this config key, e.g. choices.scheme")
    parser.add_argument("--average-over", default="seed",
                        help="comma-separated override keys whose runs are replicates: left out of the labels, "
                             "averaged (mean±std); '' to keep them apart (default: seed)")
    parser.add_argument("--plot-metric", default="ndcg@10", help="metric of the plot (default ndcg@10)")
    parser.add_argument("--prefix", default="eval", help="metric prefix of the evaluation callback")
    parser.add_argument("--output", default=None, help="folder for compare.{md,csv,png}")
    parser.add_argument("--wandb", choices=("auto", "on", "off"), default="auto",
                        help="log the table and plot to W&B (auto: when W&B is online)")
    return parser.parse_args(argv)


def should_log_online(mode: str, target: str) -> bool:
    if mode != "auto":
        return mode == "on"
    from .resolvers import wandb_mode

    return not os.path.exists(target) or wandb_mode() == "online"


def log_to_wandb(runs: Sequence[RunRecord], table_rows: list[list], columns: list[str], png: str,
                 target: str) -> str:
    """A ``compare`` W&B run in the runs' project/group holding the table and the plot; returns its URL."""
    import wandb

    logger_cfg = runs[0].config.get("logger") or {}
    project = logger_cfg.get("project") or "m3lit"
    entity = logger_cfg.get("entity") or None
    if not os.path.exists(target):
        from ..runs.collect import parse_wandb_target

        path = parse_wandb_target(target)[0].split("/")
        project, entity = path[-1], (path[0] if len(path) == 2 else entity)
    group = runs[0].group
    run = wandb.init(project=project, entity=entity, group=group, job_type="compare",
                     name=f"compare-{group or 'runs'}", mode="online", reinit="finish_previous")
    try:
        run.log({"compare/table": wandb.Table(columns=columns, data=table_rows), "compare/plot": wandb.Image(png)})
        return run.url or ""
    finally:
        run.finish()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        runs = [run for target in args.targets for run in collect_runs(target, args.source)]
        average_over = [k for k in args.average_over.split(",") if k]
        labels = run_labels(runs, args.by, average_over)
        metrics = [m.strip() for m in args.metrics.split(",")] if args.metrics else None
        comparison = compare(runs, labels, dataset=args.dataset, metrics=metrics, prefix=args.prefix,
                             label_name=label_name(runs, args.by, average_over))
    except (FileNotFoundError, ValueError) as err:
        print(f"m3lit-compare: {err}", file=sys.stderr)
        return 2
    target = args.targets[0]
    output = args.output or (target if os.path.isdir(target) else ".")
    os.makedirs(output, exist_ok=True)
    print(f"{len(runs)} runs from {', '.join(args.targets)}")
    for run, label in zip(runs, labels):
        print(f"  {label}: {run.name} ({run.status}) {run.source}")
    print()
    print(format_comparison(comparison))
    md = os.path.join(output, "compare.md")
    with open(md, "w", encoding="utf-8") as f:
        f.write(format_comparison(comparison, markdown=True) + "\n")
    csv_path = write_csv(comparison, os.path.join(output, "compare.csv"))
    png = None
    if args.plot_metric in comparison.metrics:
        name = runs[0].group or os.path.basename(os.path.abspath(output))
        png = plot(comparison, os.path.join(output, "compare.png"), metric=args.plot_metric,
                   title=f"{args.plot_metric} per head — {name}")
    print(f"\nwrote {md}, {csv_path}" + (f", {png}" if png else ""))
    if png and should_log_online(args.wandb, target):
        columns = [comparison.label_name, "runs", "metric"] + comparison.modes
        rows = [[label, comparison.runs[label], metric] + [comparison.value(label, metric, mode)
                                                           for mode in comparison.modes]
                for label in comparison.labels for metric in comparison.metrics]
        print(f"logged to W&B: {log_to_wandb(runs, rows, columns, png, target)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
