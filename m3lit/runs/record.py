"""One training run as the comparison report sees it, and the per-run summary file ``m3lit_run.json``.

``m3lit-train`` (its tracking callback) writes the summary into every run's output directory:
    {"format": 1, "status": "finished", "name": ..., "group": ..., "tags": [...], "run_id": ...,
     "global_step": int, "fit_seconds": float, "objective": {"name": ..., "value": ...},
     "config": {<the resolved Hydra config>, "hydra": {"choices": {...}, "overrides": [...], "job_num": ...}},
     "metrics": {"eval/<dataset>/<mode>/<metric>": float, "teacher/w_<head>": float, ...},
     "wandb": {"id": ..., "project": ..., "entity": ..., "mode": ..., "dir": ...} | null}
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

SUMMARY_FILE = "m3lit_run.json"
SUMMARY_FORMAT = 1
PER_QUERY_FILE = "eval_per_query.json"       # written by m3lit.eval.callback.RetrievalEvalCallback
EVAL_HISTORY_FILE = "eval_history.jsonl"     # likewise
TRAIN_HISTORY_FILE = "train_history.jsonl"   # written by m3lit.runs.tracking.TrackingCallback
RUN_FILES = (PER_QUERY_FILE, EVAL_HISTORY_FILE, TRAIN_HISTORY_FILE)   # saved with W&B runs too


@dataclass
class RunRecord:
    """A finished (or failed) run: its resolved config, Hydra choices/overrides and final metric values."""

    run_id: str
    name: str
    source: str                                   # the summary file, .wandb file or W&B run path it came from
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    group: str | None = None
    status: str = "unknown"
    folder: str | None = None                     # the run's output folder (per-query values, histories), if known
    job_type: str | None = None                   # W&B job type ("compare": a comparison, not a training run)
    _files: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)  # read_json's, read once

    @property
    def hydra(self) -> dict[str, Any]:
        value = self.config.get("hydra")
        return value if isinstance(value, dict) else {}

    @property
    def overrides(self) -> list[str]:
        return [str(o) for o in self.hydra.get("overrides") or []]

    @property
    def choices(self) -> dict[str, Any]:
        return dict(self.hydra.get("choices") or {})

    @property
    def job_num(self) -> int | None:
        num = self.hydra.get("job_num")
        return int(num) if isinstance(num, (int, float)) else None

    def read_json(self, name: str) -> Any:
        """``<folder>/<name>`` parsed (JSON, or JSON lines for ``*.jsonl``); None when absent or unreadable. Each
        file is read once per record (a comparison asks for the per-query values once per table)."""
        if name not in self._files:
            self._files[name] = self._read(name)
        return self._files[name]

    def _read(self, name: str) -> Any:
        if not self.folder:
            return None
        path = os.path.join(self.folder, name)
        if not os.path.isfile(path):
            return None
        try:
            with open(path, encoding="utf-8") as f:
                if name.endswith(".jsonl"):
                    return [json.loads(line) for line in f if line.strip()]
                return json.load(f)
        except (OSError, ValueError):
            return None

    def per_query(self, prefix: str) -> dict[str, dict[str, dict[str, dict[str, float]]]] | None:
        """{dataset: {mode: {metric: {query id: value}}}} of the run's last ``prefix`` evaluation, when it kept
        them (the evaluation callback's ``eval_per_query.json``)."""
        data = self.read_json(PER_QUERY_FILE)
        values = data.get("values", {}).get(prefix) if isinstance(data, dict) else None
        return values if isinstance(values, dict) and values else None

    def history(self, kind: str = "eval") -> list[tuple[int, dict[str, float]]]:
        """(step, metrics) of every evaluation (``kind="eval"``: ``eval_history.jsonl``, all prefixes) or
        training log step (``"train"``: ``train_history.jsonl``), a repeated step (after a resume) kept once, last."""
        lines = self.read_json(EVAL_HISTORY_FILE if kind == "eval" else TRAIN_HISTORY_FILE) or []
        steps: dict[int, dict[str, float]] = {}
        for line in lines:
            if isinstance(line, dict) and isinstance(line.get("metrics"), dict):
                steps.setdefault(int(line.get("step", 0)), {}).update(numeric_metrics(line["metrics"]))
        return sorted(steps.items())

    def config_value(self, dotted: str) -> Any:
        """``a.b.c`` of the config; ``choices.<group>`` reads a Hydra group choice. ``None`` when absent."""
        if dotted.startswith("choices."):
            return self.choices.get(dotted[len("choices."):])
        node: Any = self.config
        for part in dotted.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return None
            node = node[part]
        return node


def numeric_metrics(values: Mapping[str, Any]) -> dict[str, float]:
    """The finite int/float entries of ``values`` as floats (tables, images and strings left out)."""
    out = {}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(float(value)):
            out[str(key)] = float(value)
    return out


def write_summary(path: str, summary: Mapping[str, Any]) -> str:
    """Write ``summary`` as JSON (atomically: a temporary file renamed into place)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"format": SUMMARY_FORMAT, **summary}, f, indent=2, sort_keys=True, default=str)
        f.write("\n")
    os.replace(tmp, path)
    return path


def read_summary(path: str) -> RunRecord:
    """A ``m3lit_run.json`` file as a RunRecord; clear errors for files that are not run summaries."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: line {err.lineno}: not valid JSON ({err.msg})") from None
    if not isinstance(data, dict) or data.get("format") != SUMMARY_FORMAT:
        raise ValueError(f"{path}: not an m3lit run summary (field 'format' must be {SUMMARY_FORMAT})")
    for key, kind in (("config", dict), ("metrics", dict)):
        if not isinstance(data.get(key), kind):
            raise ValueError(f"{path}: field {key!r} must be a JSON object")
    run_dir = os.path.dirname(os.path.abspath(path))
    return RunRecord(run_id=str(data.get("run_id") or run_dir), name=str(data.get("name") or os.path.basename(run_dir)),
                     source=path, config=data["config"], metrics=numeric_metrics(data["metrics"]),
                     group=data.get("group"), status=str(data.get("status", "unknown")), folder=run_dir)
