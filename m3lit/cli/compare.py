"""``m3lit-compare``: compare the runs of a sweep — a scheme × head × metric table and a per-head bar plot.

    m3lit-compare multirun/teacher_weighting/2026-01-01_12-00-00      # a sweep folder (or any folder of runs)
    m3lit-compare multirun/... --source wandb                         # read the offline W&B runs instead
    m3lit-compare my-entity/m3lit/teacher_weighting                   # a W&B group (online, needs an API key)
    m3lit-compare my-entity/m3lit/sweeps/abc123xy                     # a W&B sweep
    m3lit-compare DIR --dataset en --metrics ndcg@10 --by teacher.weights.sparse
    m3lit-compare DIR_SEED42 DIR_SEEDS_1_2                            # runs of several sweeps together

Reads each run's final evaluation — the held-out ``test/<dataset>/<mode>/<metric>`` when the runs have one, with
the dev ``eval/…`` values (used for selection) after it — and prints one table per metric: rows are runs labelled
by the overrides that differ between them (or ``--by`` a config key), runs differing only in the seed averaged
(mean±std and the 95 % t-interval); columns are heads and hybrids; each label is tested against ``--baseline``
(default: the first) with a paired randomisation test over queries (per dataset; the average stratified by
dataset), Holm-corrected over the labels, and marked ▲ better / ▼ worse / ≈ not distinguishable. Runs whose
training data, step budget or evaluation queries differ go to separate tables. Writes ``compare.md`` (every
dataset), ``compare.csv`` (long format), ``compare.png`` (``--plot-metric`` per head by label), ``curves.png``
(dev metric against the step, mean ± std over seeds) and ``teacher_weights.png`` (learned teacher values over
time) into ``--output`` (default: the sweep folder, or the current folder for W&B targets); and logs the
comparison as a W&B run (job type ``compare``) in the runs' project and group — offline into the output folder
(``wandb sync`` uploads it with the runs) or online, where a W&B Report with the tables and plots is also saved.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence

from ..runs import RunRecord, collect_runs, label_name, run_labels
from ..runs.comparison import (
    CSV_COLUMNS,
    HEALTH_METRICS,
    Comparison,
    compare,
    csv_rows,
    format_comparison,
    plot,
    plot_curves,
    plot_teacher_weights,
    split_by_setup,
    write_csv,
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="m3lit-compare", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="+", metavar="target",
                        help="sweep/run folder, or W&B [entity/]project/group | [entity/]project/sweeps/ID; "
                             "several: their runs together (e.g. the same sweep run with other seeds)")
    parser.add_argument("--source", choices=("auto", "summary", "wandb"), default="auto",
                        help="local runs: m3lit_run.json summaries, offline W&B run files, or both (auto)")
    parser.add_argument("--dataset", default="average",
                        help="evaluation dataset of the printed tables (default: the average; compare.md and "
                             "compare.csv hold every dataset)")
    parser.add_argument("--metrics", default=None, help="comma-separated metrics (default: all logged)")
    parser.add_argument("--by", default=None, help="label runs by this config key, e.g. choices.scheme")
    parser.add_argument("--average-over", default="seed",
                        help="comma-separated override keys whose runs are replicates: left out of the labels, "
                             "averaged (mean±std); '' to keep them apart (default: seed)")
    parser.add_argument("--baseline", default=None,
                        help="label the others are tested against; comma-separated: the first one present in each "
                             "table (e.g. weighted,weighted_scored); a table with none of them, and the default, "
                             "use their first label")
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level after Holm's correction")
    parser.add_argument("--samples", type=int, default=10000,
                        help="random sign vectors of the paired randomisation test (exact below 17 queries)")
    parser.add_argument("--report-prefix", default=None,
                        help="metric prefix reported first (default: test when the runs have a held-out test "
                             "evaluation, else eval); the eval (dev) values follow")
    parser.add_argument("--plot-metric", default="ndcg@10", help="metric of the plots (default ndcg@10)")
    parser.add_argument("--prefix", default="eval", help="metric prefix of the (dev) evaluation callback")
    parser.add_argument("--output", default=None, help="folder for compare.{md,csv,png} and curves.png")
    parser.add_argument("--wandb", choices=("auto", "online", "offline", "on", "off"), default="auto",
                        help="the comparison as a W&B run (job type compare) of the runs' project and group: "
                             "auto = as the runs were tracked (offline by default, into the output folder; "
                             "online with WANDB_API_KEY or a W&B target); on = online")
    parser.add_argument("--report", choices=("auto", "off"), default="auto",
                        help="online: also a W&B Report with the tables and plots (wandb-workspaces)")
    return parser.parse_args(argv)


def wandb_target_mode(mode: str, target: str, runs: Sequence[RunRecord]) -> str | None:
    """online / offline / None (no W&B run) for ``--wandb mode``."""
    if mode == "off":
        return None
    if mode in ("on", "online", "offline"):
        return "offline" if mode == "offline" else "online"
    if not os.path.exists(target):
        return "online"
    tracked = any("wandb" in str((r.config.get("logger") or {}).get("_target_", "")).lower()
                  or r.source.endswith(".wandb") for r in runs)
    if not tracked:
        return None
    from .resolvers import wandb_mode

    mode = wandb_mode()
    return mode if mode in ("online", "offline") else None


def project_of(runs: Sequence[RunRecord], target: str) -> tuple[str, str | None]:
    logger_cfg = runs[0].config.get("logger") or {}
    project = logger_cfg.get("project") or "m3lit"
    entity = logger_cfg.get("entity") or None
    if not os.path.exists(target):
        from ..runs.collect import parse_wandb_target

        path = parse_wandb_target(target)[0].split("/")
        project, entity = path[-1], (path[0] if len(path) == 2 else entity)
    return project, entity


def log_to_wandb(runs: Sequence[RunRecord], comparisons: Sequence[Comparison], images: dict[str, str],
                 markdown: str, target: str, mode: str, folder: str) -> str:
    """The comparison as a W&B run (job type ``compare``) in the runs' project and group: ``compare/table``
    (every row of compare.csv), the plots, compare.md, and per-label summary values
    ``compare/<prefix>/<dataset>/<mode>/<metric>/<label>/{mean,std,p_adjusted,delta}``. Returns its URL (online)
    or folder (offline)."""
    import wandb

    from ..runs.collect import COMPARE_JOB_TYPE

    project, entity = project_of(runs, target)
    group = runs[0].group
    run = wandb.init(project=project, entity=entity, group=group, job_type=COMPARE_JOB_TYPE,
                     name=f"compare-{group or 'runs'}", mode=mode, dir=folder, reinit="finish_previous",
                     config={"targets": [target], "runs": [r.run_id for r in runs]})
    try:
        rows = [row for c in comparisons for row in csv_rows(c)]
        payload: dict[str, Any] = {"compare/table": wandb.Table(columns=CSV_COLUMNS, data=rows)}
        payload.update({f"compare/{name}": wandb.Image(path) for name, path in images.items()})
        run.log(payload)
        for c in comparisons:
            for label in c.labels:
                for metric in c.metrics:
                    for head in c.modes:
                        key = f"compare/{c.prefix}/{c.dataset}/{head}/{metric}/{label}"
                        run.summary[f"{key}/mean"] = c.value(label, metric, head)
                        run.summary[f"{key}/std"] = c.std(label, metric, head)
                        test = c.test(label, metric, head)
                        if test is not None:
                            run.summary[f"{key}/p_adjusted"] = test.p_adjusted
                            run.summary[f"{key}/delta"] = test.delta
        path = os.path.join(folder, "compare.md")
        with open(path, "w", encoding="utf-8") as f:
            f.write(markdown)
        run.save(path, base_path=folder, policy="now")
        return run.url or os.path.dirname(run.dir)
    finally:
        run.finish()


def make_report(project: str, entity: str | None, group: str | None, markdown: str, title: str) -> Any:
    """A W&B Report (``wandb-workspaces``): the comparison's markdown, then panels over the sweep's runs and the
    comparison run — the table, the plots and the eval curves. Saved online; returns the report."""
    import wandb_workspaces.reports.v2 as wr

    runs_of_group = [wr.Runset(entity=entity or "", project=project, name=group or "runs",
                               filters=f"Group = '{group}'" if group else "")]
    blocks = [
        wr.H1(text=title),
        wr.MarkdownBlock(text=markdown),
        wr.PanelGrid(runsets=runs_of_group, panels=[
            wr.WeavePanelSummaryTable(table_name="compare/table"),
            wr.MediaBrowser(title="comparison plots", media_keys=["compare/bars", "compare/curves",
                                                                  "compare/teacher"]),
            wr.LinePlot(title="dev all nDCG@10", x="Step", y=["eval/average/all/ndcg@10"]),
        ]),
    ]
    report = wr.Report(project=project, entity=entity or "", title=title,
                       description=f"m3lit-compare of W&B group {group}", blocks=blocks)
    report.save()
    return report


def build_comparisons(runs: Sequence[RunRecord], labels: Sequence[str], args: argparse.Namespace,
                      metrics: Sequence[str] | None, name: str) -> list[tuple[str, list[Comparison]]]:
    """Per training setup: [(setup description, comparisons)] — the reported prefix on the average and every
    dataset, then the dev prefix on the average (when the report is the held-out test)."""
    report = args.report_prefix or ("test" if any(k.startswith("test/") for r in runs for k in r.metrics)
                                    else args.prefix)
    prefixes = [report] + ([args.prefix] if report != args.prefix else [])
    out = []
    for setup, group_runs, group_labels in split_by_setup(runs, labels):
        wanted = [b for b in (args.baseline or "").split(",") if b]
        baseline = next((b for b in wanted if b in group_labels), None)
        comparisons = []
        for prefix in prefixes:
            datasets = sorted({k.split("/")[1] for r in group_runs for k in r.metrics
                               if k.startswith(f"{prefix}/") and k.count("/") == 3} - {"average"})
            names = ["average"] + (datasets if prefix == report else [])
            if args.dataset != "average" and args.dataset not in names:
                names.append(args.dataset)
            for dataset in names:
                comparisons.append(compare(group_runs, group_labels, dataset=dataset, metrics=metrics,
                                           prefix=prefix, label_name=name, baseline=baseline, alpha=args.alpha,
                                           samples=args.samples, setup=setup))
        health = [m for m in HEALTH_METRICS if any(k == f"{report}/average/sparse/{m}" for r in group_runs
                                                   for k in r.metrics)]
        if health and metrics is None:  # the sparse head's health: all-zero vectors, non-zeros per text
            comparisons.append(compare(group_runs, group_labels, metrics=health, prefix=report, label_name=name,
                                       baseline=baseline, alpha=args.alpha, samples=args.samples, setup=setup))
        out.append((setup, comparisons))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        runs = [run for target in args.targets for run in collect_runs(target, args.source)]
        average_over = [k for k in args.average_over.split(",") if k]
        labels = run_labels(runs, args.by, average_over)
        wanted = [b for b in (args.baseline or "").split(",") if b]
        if wanted and not any(b in labels for b in wanted):
            raise ValueError(f"--baseline {args.baseline}: not among the run labels {list(dict.fromkeys(labels))}")
        metrics = [m.strip() for m in args.metrics.split(",")] if args.metrics else None
        name = label_name(runs, args.by, average_over)
        groups = build_comparisons(runs, labels, args, metrics, name)
    except (FileNotFoundError, ValueError) as err:
        print(f"m3lit-compare: {err}", file=sys.stderr)
        return 2
    target = args.targets[0]
    output = args.output or (target if os.path.isdir(target) else ".")
    os.makedirs(output, exist_ok=True)
    print(f"{len(runs)} runs from {', '.join(args.targets)}")
    for run, label in zip(runs, labels):
        print(f"  {label}: {run.name} ({run.status}) {run.source}")
    if len(groups) > 1:
        print(f"\nthe runs differ in their training data, step budget or evaluation queries: {len(groups)} separate "
              "tables (compared only within one)")
    title = runs[0].group or os.path.basename(os.path.abspath(output))
    md_parts = [f"# Comparison: {title}", "", f"{len(runs)} runs; rows: {name}, averaged over "
                f"{', '.join(average_over) or 'nothing'}; columns: heads and hybrids.", ""]
    images: dict[str, str] = {}
    for i, (setup, comparisons) in enumerate(groups):
        if setup:
            print(f"\n=== runs with {setup}")
            md_parts += [f"## Runs with {setup}", ""]
        shown = [c for c in comparisons if c.dataset == args.dataset or
                 (c.dataset == "average" and c.prefix != comparisons[0].prefix)]
        for c in shown:
            print()
            print(format_comparison(c))
        bars = None
        head = comparisons[0]
        if args.plot_metric in head.metrics:
            suffix = "" if i == 0 else f"-{i + 1}"
            bars = plot(head, os.path.join(output, f"compare{suffix}.png"), metric=args.plot_metric,
                        title=f"{args.plot_metric} per head — {title}{f' ({setup})' if setup else ''}")
            images.setdefault("bars", bars)
            md_parts += [f"![{args.plot_metric} per head](compare{suffix}.png)", ""]
        md_parts += [format_comparison(c, markdown=True) + "\n" for c in comparisons]
    curves = plot_curves(runs, labels, os.path.join(output, "curves.png"), metric=args.plot_metric,
                         prefix=args.prefix)
    teacher = plot_teacher_weights(runs, labels, os.path.join(output, "teacher_weights.png"))
    for key, path, caption in (("curves", curves, f"{args.plot_metric} during training (dev)"),
                               ("teacher", teacher, "teacher weights during training")):
        if path:
            images[key] = path
            md_parts += [f"![{caption}]({os.path.basename(path)})", ""]
    markdown = "\n".join(md_parts)
    md = os.path.join(output, "compare.md")
    with open(md, "w", encoding="utf-8") as f:
        f.write(markdown)
    csv_path = write_csv([c for _, cs in groups for c in cs], os.path.join(output, "compare.csv"))
    print(f"\nwrote {md}, {csv_path}" + "".join(f", {p}" for p in images.values()))
    mode = wandb_target_mode(args.wandb, target, runs)
    if mode:
        where = log_to_wandb(runs, [c for _, cs in groups for c in cs], images, markdown, target, mode, output)
        print(f"comparison logged to W&B ({mode}): {where}")
        if mode == "online" and args.report == "auto":
            project, entity = project_of(runs, target)
            report = make_report(project, entity, runs[0].group, markdown, f"m3lit comparison: {title}")
            print(f"W&B report: {getattr(report, 'url', '')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
