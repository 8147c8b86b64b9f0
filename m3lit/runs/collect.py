"""Collect the runs of a sweep: from a local folder (run summaries or offline W&B runs) or from W&B online.

Local: every ``m3lit_run.json`` below the folder (``source="summary"``), or every ``run-<id>.wandb`` file of a
W&B run folder below it (``source="wandb"``); ``auto`` takes the summaries and adds W&B runs that no summary
names, and skips (with a warning) a W&B file it cannot read — a run still being written, whose file may not
even hold its header yet — where ``wandb`` stops with the file's error. Online: ``[entity/]project/group`` (the
runs of a W&B group) or ``[entity/]project/sweeps/<id>``.
"""
from __future__ import annotations

import logging
import os
import tempfile
from typing import Any, Iterable

from .record import RUN_FILES, SUMMARY_FILE, RunRecord, numeric_metrics, read_summary
from .wandb_file import read_wandb_run

log = logging.getLogger(__name__)

SOURCES = ("auto", "summary", "wandb")
COMPARE_JOB_TYPE = "compare"   # the W&B run m3lit-compare writes: never a run to compare


def find_files(root: str, predicate) -> list[str]:
    """Files below ``root`` (sorted, symlinked ``latest-run`` folders skipped) whose name matches ``predicate``."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not os.path.islink(os.path.join(folder, d)))
        found.extend(os.path.join(folder, f) for f in sorted(files) if predicate(f))
    return found


def local_runs(root: str, source: str = "auto") -> list[RunRecord]:
    """Runs found below the folder ``root`` (see module docstring); sweep job order where known."""
    if source not in SOURCES:
        raise ValueError(f"source={source!r}: expected one of {SOURCES}")
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root}: not a folder")
    runs: list[RunRecord] = []
    if source in ("auto", "summary"):
        runs = [read_summary(p) for p in find_files(root, lambda f: f == SUMMARY_FILE)]
    if source in ("auto", "wandb"):
        known = {r.run_id for r in runs}
        wandb_files = find_files(root, lambda f: f.startswith("run-") and f.endswith(".wandb"))
        for path in wandb_files:
            try:
                record = read_wandb_run(path)
            except ValueError as error:
                if source == "wandb":
                    raise
                log.warning("skipped %s (a run still being written?)", error)
                continue
            if record.run_id not in known:
                runs.append(record)
    return sort_runs(r for r in runs if r.job_type != COMPARE_JOB_TYPE)


def sort_runs(runs: Iterable[RunRecord]) -> list[RunRecord]:
    """By Hydra job number when every run has one, else as found."""
    runs = list(runs)
    if runs and all(r.job_num is not None for r in runs):
        return sorted(runs, key=lambda r: r.job_num)
    return runs


def parse_wandb_target(target: str) -> tuple[str, str | None, str]:
    """``[entity/]project/group`` or ``[entity/]project/sweeps/<id>`` → (project path, sweep id, group)."""
    parts = [p for p in target.strip("/").split("/") if p]
    if len(parts) >= 3 and parts[-2] == "sweeps":
        return "/".join(parts[:-2]), parts[-1], ""
    if len(parts) not in (2, 3):
        raise ValueError(f"{target!r}: not a folder, and not a W&B [entity/]project/group or "
                         "[entity/]project/sweeps/<id>")
    return "/".join(parts[:-1]), None, parts[-1]


def download_run_files(run: Any, folder: str) -> str | None:
    """The run's per-query values and histories (``RUN_FILES``, saved by the tracking callback) into ``folder``;
    returns the folder when any came, else None."""
    got = False
    for name in RUN_FILES:
        try:
            run.file(name).download(root=folder, replace=True)
            got = os.path.isfile(os.path.join(folder, name)) or got
        except Exception:  # an older run, or a run without that file
            continue
    return folder if got else None


def wandb_runs(target: str, api: Any = None, files_dir: str | None = None) -> list[RunRecord]:
    """The runs of a W&B group or sweep (online; needs an API key); each run's saved ``RUN_FILES`` are downloaded
    into ``files_dir/<run id>`` (default: a temporary folder) for the paired tests and curves."""
    project, sweep, group = parse_wandb_target(target)
    if api is None:
        import wandb

        api = wandb.Api()
    if sweep is not None:
        found = api.sweep(f"{project}/{sweep}").runs
    else:
        found = api.runs(project, filters={"group": group})
    runs = []
    for run in found:
        if getattr(run, "job_type", None) == COMPARE_JOB_TYPE:
            continue
        config = {k: v for k, v in dict(run.config).items() if not k.startswith("_")}
        summary = getattr(run.summary, "_json_dict", None) or dict(run.summary)
        if files_dir is None:
            files_dir = tempfile.mkdtemp(prefix="m3lit-compare-")
        folder = download_run_files(run, os.path.join(files_dir, str(run.id)))
        runs.append(RunRecord(run_id=run.id, name=run.name, source=f"{project}/{run.id}", config=config,
                              metrics=numeric_metrics(summary), group=getattr(run, "group", None) or group or None,
                              status=str(getattr(run, "state", "unknown")), folder=folder))
    if not runs:
        raise ValueError(f"{target}: no W&B runs found")
    return sort_runs(runs)


def collect_runs(target: str, source: str = "auto", api: Any = None) -> list[RunRecord]:
    """Local folder → ``local_runs``; anything else → ``wandb_runs``. Raises when nothing is found."""
    if os.path.exists(target):
        runs = local_runs(target, source)
        if not runs:
            raise FileNotFoundError(f"{target}: no runs found (no {SUMMARY_FILE} and no offline W&B run below it)")
        return runs
    if source not in ("auto", "wandb"):
        raise ValueError(f"{target}: not a local folder; source={source!r} needs one")
    return wandb_runs(target, api=api)
