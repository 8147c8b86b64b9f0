"""Retrieval evaluation during training (Lightning callback).

Every ``every_n_steps`` optimizer steps, at the end of training, and optionally before the first step, the
callback asks the module for an encoder sharing its weights (``pl_module.embedder()``, an ``M3Embedder``),
evaluates the configured BEIR datasets with :func:`~m3lit.eval.evaluator.evaluate_beir`, logs
``<prefix>/<dataset>/<mode>/<metric>`` (and ``<prefix>/average/...``) to every logger, prints a summary table,
and saves a checkpoint whenever the monitored metric (default: average ``all`` nDCG@10) improves.

Distributed: with ``distributed="replicate"`` (default; required for FSDP, whose forward passes need every
rank) all ranks evaluate everything; with ``"shard"`` (DDP) datasets are split across ranks and the results
gathered. The save decision is rank 0's, broadcast to all ranks.

Held-out test: with ``test_fraction`` (a deterministic share of each dataset's queries, see
:func:`~m3lit.eval.beir.split_queries`) or ``test_split`` / ``test_beir`` (other qrels or datasets), the test
queries never take part in monitoring or checkpoint selection: they are evaluated once, on the final model, when
training ends, and logged as ``<test_prefix>/<dataset>/<mode>/<metric>`` next to the last ``<prefix>/…`` values.

Files (global rank 0, in ``trainer.default_root_dir``): ``eval_history.jsonl`` — one line per evaluation,
``{"step", "prefix", "metrics": {name: value}}``; ``eval_per_query.json`` — every query's values of the latest
evaluation of each prefix, ``{"format": 1, "steps": {prefix: step}, "values": {prefix: {dataset: {mode: {metric:
{query id: value}}}}}}`` (what ``m3lit-compare``'s paired tests read).
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import replace
from typing import Any, Mapping, Sequence

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only

from ..files import write_file_atomically
from ..model.defaults import HEADS
from ..runs.checkpointing import save_checkpoint_atomically
from ..runs.record import EVAL_HISTORY_FILE, PER_QUERY_FILE
from .beir import BeirDataset, split_queries
from .evaluator import RetrievalSettings, as_datasets, evaluate_beir
from .hybrid import hybrids_from_names
from .tables import AVERAGE_KEY, INFO_KEYS, PER_QUERY_KEY, STATS_KEY, average_results, format_results

log = logging.getLogger(__name__)

PER_QUERY_FORMAT = 1


SPARSE_HEALTH = {"sparse_zero_frac": "sparse/zero_frac", "sparse_nnz": "sparse/nnz"}


def flatten_results(results: Mapping[str, Mapping], prefix: str) -> dict[str, float]:
    """{prefix/dataset/mode/metric: value} (stats left out), plus the sparse head's health on each corpus and
    their average: ``prefix/<dataset>/sparse/zero_frac`` (texts with an all-zero sparse vector) and ``…/nnz``
    (mean non-zero tokens per text)."""
    out = {}
    health: dict[str, list[float]] = {}
    for name, per in results.items():
        for mode, metrics in per.items():
            if mode in INFO_KEYS:
                continue
            for metric, value in metrics.items():
                out[f"{prefix}/{name}/{mode}/{metric}"] = float(value)
        stats = per.get(STATS_KEY) or {} if name != AVERAGE_KEY else {}
        for key, suffix in SPARSE_HEALTH.items():
            if key in stats:
                out[f"{prefix}/{name}/{suffix}"] = float(stats[key])
                health.setdefault(suffix, []).append(float(stats[key]))
    for suffix, values in health.items():
        out[f"{prefix}/{AVERAGE_KEY}/{suffix}"] = sum(values) / len(values)
    return out


TEST_TAG = "\x00test:"   # marks the test datasets within a combined dev + test pass


def _with_average(results: Mapping[str, Any]) -> dict[str, Any]:
    out = {name: per for name, per in results.items() if name != AVERAGE_KEY}
    out[AVERAGE_KEY] = average_results(out)
    return out


class RetrievalEvalCallback(Callback):
    """Evaluate BEIR datasets during training and keep the best checkpoint.

    Args:
        beir: dataset folder, folder of dataset folders, {name: folder}, or a list of folders.
        split: qrels file (``qrels/<split>.tsv``).
        datasets: names to keep under a folder of datasets.
        every_n_steps: evaluate after every N optimizer steps (0 = never during training).
        at_start: evaluate before the first step (step 0), for a before/after comparison.
        at_end: evaluate when training ends (unless the last step was just evaluated).
        max_queries: first N judged queries per dataset (cheaper evaluation).
        monitor: ``average/<mode>/<metric>`` or ``<dataset>/<mode>/<metric>``; ``mode``: ``max`` or ``min``.
        save_best: save ``best.ckpt`` (Lightning checkpoint) in ``dirpath`` when ``monitor`` improves;
            ``save_best_model`` also writes the BGE-M3 directory ``best_model/`` (not under FSDP sharding).
        dirpath: where checkpoints go (default: ``<trainer.default_root_dir>/checkpoints``).
        hybrids: hybrid names (``"dense+sparse"``, ``"all"``) using ``hybrid_weights``, or {name: {head: w}}.
        distributed: ``replicate`` or ``shard`` (see module docstring).
        prefix: logged metric names start with it.
        test_fraction: hold out this share of each dataset's queries (chosen by ``split_seed``) as the test slice.
        test_split / test_beir: the test queries from other qrels (``qrels/<test_split>.tsv``) and/or other
            datasets (default: ``beir``) instead; ``test_prefix`` names their metrics.
        per_query: write every query's values (``eval_per_query.json``) and the history (``eval_history.jsonl``).
        retrieval options (heads, metrics, batch_size, max_tokens, max_length, query_max_length, candidate_depth,
        colbert_exhaustive_max_docs, colbert_rerank_depth, dense_backend, mcls, device) are passed on.
    """

    def __init__(self, beir: Any, split: str = "test", datasets: Sequence[str] | None = None,
                 every_n_steps: int = 1000, at_start: bool = False, at_end: bool = True,
                 max_queries: int | None = None, monitor: str = "average/all/ndcg@10", mode: str = "max",
                 save_best: bool = True, save_best_model: bool = False, dirpath: str | None = None,
                 hybrids: Sequence[str] | Mapping[str, Mapping[str, float]] | None = ("dense+sparse", "all"),
                 hybrid_weights: Mapping[str, float] | None = None, distributed: str = "replicate",
                 prefix: str = "eval", print_table: bool = True, test_fraction: float = 0.0,
                 test_split: str | None = None, test_beir: Any = None, test_prefix: str = "test",
                 split_seed: int = 0, per_query: bool = True, **retrieval: Any):
        super().__init__()
        if mode not in ("max", "min"):
            raise ValueError(f"mode={mode!r}: expected 'max' or 'min'")
        if distributed not in ("replicate", "shard"):
            raise ValueError(f"distributed={distributed!r}: expected 'replicate' or 'shard'")
        if every_n_steps < 0:
            raise ValueError(f"every_n_steps={every_n_steps}: must be ≥ 0")
        if not 0.0 <= test_fraction < 1.0:
            raise ValueError(f"test_fraction={test_fraction}: expected 0 (no held-out slice) or a share below 1")
        if test_fraction and (test_split or test_beir is not None):
            raise ValueError("test_fraction and test_split/test_beir both set: hold out a slice of the queries, "
                             "or name the test qrels/datasets, not both")
        if test_prefix == prefix:
            raise ValueError(f"test_prefix={test_prefix!r} must differ from prefix={prefix!r}")
        heads = tuple(retrieval.pop("heads", HEADS))
        if hybrids is not None and not isinstance(hybrids, Mapping):
            hybrids = hybrids_from_names(list(hybrids), hybrid_weights, heads=heads)
        self.settings = RetrievalSettings(heads=heads, hybrids=hybrids, per_query=per_query, **retrieval)
        self.beir, self.split, self.datasets, self.max_queries = beir, split, datasets, max_queries
        self.every_n_steps, self.at_start, self.at_end = every_n_steps, at_start, at_end
        self.monitor, self.mode = monitor, mode
        self.save_best, self.save_best_model, self.dirpath = save_best, save_best_model, dirpath
        self.distributed, self.prefix, self.print_table = distributed, prefix, print_table
        self.test_fraction, self.test_split, self.test_beir = float(test_fraction), test_split, test_beir
        self.test_prefix, self.split_seed, self.per_query = test_prefix, int(split_seed), per_query
        self.test_results: dict[str, Any] | None = None
        self._test_loaded: list[BeirDataset] | None = None
        self._per_query: dict[str, Any] = {"format": PER_QUERY_FORMAT, "steps": {}, "values": {}}
        self.best_score: float | None = None
        self.best_step: int | None = None
        self.best_path: str | None = None
        self.history: list[tuple[int, dict[str, Any]]] = []
        self._loaded: list[BeirDataset] | None = None
        self._last_step: int | None = None

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.at_start:
            self.evaluate(trainer, pl_module)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0 and step != self._last_step:
            self.evaluate(trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        final_dev = self.at_end and trainer.global_step != self._last_step
        if final_dev and self.has_test:  # one pass: the corpora shared by dev and test are encoded once
            dev, test = self.datasets_to_evaluate(), self.test_datasets()
            tagged = [replace(d, name=f"{TEST_TAG}{d.name}") for d in test]
            by_name = {d.name: d for d in tagged}  # each test set right after its dev set: short cache lifetimes
            both = self._run(trainer, pl_module, [x for d in dev for x in (d, by_name.pop(f"{TEST_TAG}{d.name}", None))
                                                  if x is not None] + list(by_name.values()))
            self.evaluate(trainer, pl_module, {d.name: both[d.name] for d in dev})
            self.evaluate_test(trainer, pl_module, {d.name: both[f"{TEST_TAG}{d.name}"] for d in test})
        elif final_dev:
            self.evaluate(trainer, pl_module)
        elif self.has_test:
            self.evaluate_test(trainer, pl_module)
        if self.history:
            self._print(self.summary())

    def state_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score, "best_step": self.best_step, "best_path": self.best_path}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_score = state_dict.get("best_score")
        self.best_step = state_dict.get("best_step")
        self.best_path = state_dict.get("best_path")

    # ------------------------------------------------------------------ evaluation
    @property
    def has_test(self) -> bool:
        return bool(self.test_fraction or self.test_split or self.test_beir is not None)

    def datasets_to_evaluate(self) -> list[BeirDataset]:
        """The monitored (dev) datasets: every judged query, less the held-out slice with ``test_fraction``."""
        if self._loaded is None:
            loaded = as_datasets(self.beir, self.split, self.datasets, self.max_queries)
            if self.test_fraction:
                pairs = [split_queries(d, self.test_fraction, self.split_seed) for d in loaded]
                loaded, self._test_loaded = [p[0] for p in pairs], [p[1] for p in pairs]
            self._loaded = loaded
        return self._loaded

    def test_datasets(self) -> list[BeirDataset]:
        """The held-out test datasets (never monitored); [] when none is configured."""
        if not self.has_test:
            return []
        if self.test_fraction:
            self.datasets_to_evaluate()
        elif self._test_loaded is None:
            beir = self.beir if self.test_beir is None else self.test_beir
            self._test_loaded = as_datasets(beir, self.test_split or self.split,
                                            self.datasets if self.test_beir is None else None, self.max_queries)
        return list(self._test_loaded or [])

    def evaluate(self, trainer: Trainer, pl_module: LightningModule,
                 results: dict[str, Any] | None = None) -> dict[str, Any]:
        """Evaluate the monitored datasets now (all ranks; ``results``: already computed per dataset), log, and
        save the best checkpoint; returns the results."""
        step = trainer.global_step
        self._last_step = step
        results = self._run(trainer, pl_module, self.datasets_to_evaluate()) if results is None \
            else _with_average(results)
        self.history.append((step, results))
        self._record(trainer, results, step, self.prefix)
        if self.print_table:
            self._print(f"retrieval evaluation at step {step}\n{format_results(results)}")
        self._update_best(trainer, pl_module, results, step)
        return results

    def evaluate_test(self, trainer: Trainer, pl_module: LightningModule,
                      results: dict[str, Any] | None = None) -> dict[str, Any]:
        """Evaluate the held-out test datasets on the current model (all ranks) and log them under ``test_prefix``."""
        step = trainer.global_step
        results = self._run(trainer, pl_module, self.test_datasets()) if results is None else _with_average(results)
        self.test_results = results
        self._record(trainer, results, step, self.test_prefix)
        if self.print_table:
            self._print(f"held-out test evaluation ({self.test_prefix}/…, not used for selection) at step {step}\n"
                        f"{format_results(results)}")
        return results

    def _run(self, trainer: Trainer, pl_module: LightningModule, datasets: list[BeirDataset]) -> dict[str, Any]:
        order = [d.name for d in datasets]
        world, rank = trainer.world_size, trainer.global_rank
        if self.distributed == "shard" and world > 1:
            datasets = datasets[rank::world]
        was_training = pl_module.training
        pl_module.eval()
        try:
            encoder = pl_module.embedder()
            settings = self.settings.restricted_to(getattr(encoder, "trained_heads", self.settings.heads))
            results = evaluate_beir(encoder, datasets, settings=settings) if datasets else {}
        finally:
            pl_module.train(was_training)
        if self.distributed == "shard" and world > 1:
            results = self._gather(results, world)
        return _with_average({name: results[name] for name in order if name in results})

    def _record(self, trainer: Trainer, results: Mapping[str, Any], step: int, prefix: str) -> None:
        """Log the results under ``prefix`` and write the history line and per-query values (rank 0)."""
        self._log(trainer, results, step, prefix)
        if not (self.per_query and trainer.is_global_zero):
            return
        folder = trainer.default_root_dir
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, EVAL_HISTORY_FILE), "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, "prefix": prefix, "metrics": flatten_results(results, prefix)}) + "\n")
        values = {name: per[PER_QUERY_KEY] for name, per in results.items() if PER_QUERY_KEY in per}
        if values:
            self._per_query["steps"][prefix] = step
            self._per_query["values"][prefix] = values
            write_file_atomically(os.path.join(folder, PER_QUERY_FILE), lambda f: json.dump(self._per_query, f))

    @staticmethod
    def _gather(results: dict[str, Any], world: int) -> dict[str, Any]:
        import torch.distributed as dist

        parts: list[Any] = [None] * world
        dist.all_gather_object(parts, results)
        merged: dict[str, Any] = {}
        for part in parts:
            merged.update(part)
        return merged

    def _log(self, trainer: Trainer, results: Mapping[str, Any], step: int, prefix: str) -> None:
        metrics = flatten_results(results, prefix)
        for key, value in metrics.items():
            trainer.callback_metrics[key] = torch.tensor(value)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
            if hasattr(logger, "log_table"):  # W&B: the summary as a table
                rows = [[name, mode] + [float(v) for v in per[mode].values()]
                        for name, per in results.items() for mode in per if mode not in INFO_KEYS]
                first = next(iter(results[AVERAGE_KEY].values()), {})
                try:
                    logger.log_table(key=f"{prefix}/table", columns=["dataset", "mode"] + list(first),
                                     data=rows, step=step)
                except Exception as err:  # a table is a nicety; never fail training on it
                    log.warning("could not log the evaluation table: %s", err)

    def monitored(self, results: Mapping[str, Any]) -> float:
        name, mode, metric = self._monitor_parts()
        try:
            return float(results[name][mode][metric])
        except KeyError:
            raise KeyError(f"monitor={self.monitor!r}: not in the results (datasets {list(results)})") from None

    def _monitor_parts(self) -> tuple[str, str, str]:
        name, _, rest = self.monitor.rpartition("/")
        name, _, mode = name.rpartition("/")
        if not name or not mode or not rest:
            raise ValueError(f"monitor={self.monitor!r}: expected '<dataset or average>/<mode>/<metric>'")
        return name, mode, rest

    def _update_best(self, trainer: Trainer, pl_module: LightningModule, results: Mapping[str, Any],
                     step: int) -> None:
        score = self.monitored(results)
        better = (self.best_score is None or (not math.isnan(score) and
                  (score > self.best_score if self.mode == "max" else score < self.best_score)))
        better = bool(trainer.strategy.broadcast(better, src=0))
        if not better:
            return
        self.best_score, self.best_step = score, step
        trainer.callback_metrics[f"{self.prefix}/best"] = torch.tensor(score)
        if not self.save_best:
            return
        dirpath = self.dirpath or os.path.join(trainer.default_root_dir, "checkpoints")
        self.best_path = os.path.join(dirpath, "best.ckpt")
        save_checkpoint_atomically(trainer, self.best_path)
        if self.save_best_model and trainer.is_global_zero:
            pl_module.embedder().save_pretrained(os.path.join(dirpath, "best_model"))
        self._print(f"new best {self.monitor}={score:.4f} at step {step}: saved {self.best_path}")

    # ------------------------------------------------------------------ reporting
    def summary(self) -> str:
        """Average of every mode for the monitored metric at each evaluation (first, best and last steps)."""
        _, _, metric = self._monitor_parts()
        picks = {0: self.history[0], len(self.history) - 1: self.history[-1]}
        for i, (step, _) in enumerate(self.history):
            if step == self.best_step:
                picks[i] = self.history[i]
        rows = [self.history[i] for i in sorted(picks)]
        modes = list(rows[-1][1].get(AVERAGE_KEY, {}))
        header = ["step"] + modes
        lines = [header] + [[str(step)] + [f"{res[AVERAGE_KEY].get(m, {}).get(metric, float('nan')):.4f}"
                                           for m in modes] for step, res in rows]
        widths = [max(len(r[i]) for r in lines) for i in range(len(header))]
        text = "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in lines)
        best = f"best {self.monitor}={self.best_score:.4f} at step {self.best_step}" if self.best_score is not None \
            else "no best yet"
        return f"retrieval evaluation summary (average {metric}):\n{text}\n{best}"

    @staticmethod
    @rank_zero_only
    def _print(text: str) -> None:
        print(text, flush=True)
