"""Sweeps (sweeps/): every Hydra sweep, scheme and W&B sweep file composes and trains a fast_dev_run step; a real
2-job multirun leaves two offline W&B runs that m3lit-compare reads back; Optuna maximizes the returned metric;
sweep jobs go to SLURM through the submitit launcher."""
from __future__ import annotations

import glob
import itertools
import json
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import run_console
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

from m3lit.cli.resolvers import CONFIG_DIR, SWEEPS_DIR, register_resolvers
from m3lit.runs import local_runs, read_summary, read_wandb_run
from m3lit.runs.wandb_file import iter_record_bytes

register_resolvers()
SWEEPS = Path(SWEEPS_DIR)
SCHEMES = sorted(p.stem for p in (SWEEPS / "scheme").glob("*.yaml"))
SCHEME_SWEEPS = ("teacher_weighting", "self_kd", "self_kd_finetune")
HYDRA_SWEEPS = sorted(p.stem for p in (SWEEPS / "sweep").glob("*.yaml"))
WANDB_SWEEPS = sorted(p.name for p in (SWEEPS / "wandb_sweep").glob("*.yaml"))
# A fast_dev_run step with a small evaluation (one language, a few queries) and no export.
QUICK = ["trainer.fast_dev_run=true", "callbacks.retrieval_eval.datasets=[en]",
         "callbacks.retrieval_eval.max_queries=4",
         "callbacks.retrieval_eval.print_table=false", "callbacks.retrieval_eval.save_best=false", "export_dir=null"]


def compose_job(overrides: list[str], output_dir: Path):
    """The config of one sweep job as m3lit-train composes it (Hydra context set, output dir = ``output_dir``)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def run_job(overrides: list[str], output_dir: Path) -> dict:
    """Train one fast_dev_run step in-process; returns the run summary m3lit_run.json."""
    from m3lit.cli.train import run

    cfg = compose_job(overrides + QUICK, output_dir)
    value = run(cfg)
    assert value is not None and 0.0 <= value <= 1.0  # the objective a sweeper maximizes
    summary = json.loads((output_dir / "m3lit_run.json").read_text())
    assert summary["status"] == "finished" and summary["objective"]["value"] == pytest.approx(value)
    return summary


def basic_sweep_jobs(params: dict) -> list[list[str]]:
    """BasicSweeper semantics: comma-separated values → the cartesian product of overrides."""
    keys = list(params)
    values = [str(params[k]).split(",") for k in keys]
    return [[f"{k}={v}" for k, v in zip(keys, combo)] for combo in itertools.product(*values)]


def wandb_agent_commands(sweep_file: Path) -> list[list[str]]:
    """The command lines a W&B agent runs for this sweep file (grid: every combination; other methods: the
    range midpoints), built with W&B's own macro expansion."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    spec = yaml.safe_load(sweep_file.read_text())
    grid = {}
    for name, param in spec["parameters"].items():
        if "values" in param:
            grid[name] = param["values"]
        else:
            grid[name] = [round((param["min"] * param["max"]) ** 0.5 if "log" in param["distribution"]
                                else (param["min"] + param["max"]) / 2, 4)]
    commands = []
    for combo in itertools.product(*grid.values()):
        macros = create_sweep_command_args({"args": {k: {"value": v} for k, v in zip(grid, combo)}})
        macros.update(env=["/usr/bin/env"], program=[spec["program"]])
        line = []
        for chunk in spec["command"]:
            line += macros[chunk[2:-1]] if chunk.startswith("${") else [chunk]
        commands.append(line)
    return commands


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_scheme_composes_and_trains_a_step(scheme, tmp_path):
    deeper = ["model.encoder_config.num_hidden_layers=4"] if scheme == "layerwise_mid" else []  # it teaches layer 3
    summary = run_job(["+sweep=teacher_weighting", f"+scheme={scheme}", *deeper], tmp_path)
    config = summary["config"]
    assert config["hydra"]["choices"]["scheme"] == scheme
    assert summary["name"] == f"tiny-{scheme}" and summary["group"] == "teacher_weighting"
    expected_teacher = {"weighted": "WeightedTeacher", "uniform": "UniformTeacher", "learned": "LearnedTeacher",
                        "dense_only": "WeightedTeacher", "no_self_distill": "WeightedTeacher",
                        "external_self": "MixedTeacher", "external": "ExternalTeacher",
                        "weighted_scored": "WeightedTeacher", "ema": "EmaTeacher",
                        "views_token_drop": "ViewsTeacher", "views_mask": "ViewsTeacher",
                        "views_translation": "ViewsTeacher", "views_dropout": "ViewsTeacher",
                        "mix_ensemble_ema": "MixTeacher", "snapshot": "SnapshotTeacher",
                        "layerwise": "LayerwiseTeacher", "layerwise_mid": "LayerwiseTeacher"}[scheme]
    assert config["teacher"]["_target_"].endswith(expected_teacher)
    assert config["loss"]["self_distill"] is (scheme != "no_self_distill")
    scored = scheme in ("external", "weighted_scored")
    assert config["data"]["train"].endswith("distill_en.jsonl") is scored
    assert "train/loss/distill" in summary["metrics"] or scheme == "no_self_distill"
    assert summary["metrics"]["train/grad_norm"] > 0


@pytest.mark.parametrize("name", HYDRA_SWEEPS)
def test_every_hydra_sweep_composes_and_its_first_job_trains(name, tmp_path):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        hydra_cfg = compose("train", overrides=[f"+sweep={name}"], return_hydra_config=True).hydra
    params = OmegaConf.to_container(hydra_cfg.sweeper.params)
    if hydra_cfg.sweeper._target_.endswith("OptunaSweeper"):
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from hydra_plugins.hydra_optuna_sweeper._impl import create_optuna_distribution_from_override

        parser = OverridesParser.create()
        job = []
        for key, value in params.items():
            dist = create_optuna_distribution_from_override(parser.parse_override(f"{key}={value}"))
            low, high = dist.low, dist.high
            log_scale = getattr(dist, "log", False) or type(dist).__name__.startswith("LogUniform")
            job.append(f"{key}={round((low * high) ** 0.5 if log_scale else (low + high) / 2, 4)}")
        assert {"teacher.weights.dense", "teacher.weights.sparse", "teacher.weights.colbert",
                "loss.head_weights.sparse", "loss.temperature"} == set(params)
    else:
        jobs = basic_sweep_jobs(params)
        assert len(jobs) >= 2
        job = jobs[0]
        if name in SCHEME_SWEEPS:  # scheme runs: test_every_scheme_composes_and_trains_a_step
            assert {j[0] for j in jobs} <= {f"+scheme={s}" for s in SCHEMES}
            return
    summary = run_job([f"+sweep={name}"] + job, tmp_path)
    assert summary["group"] == name
    for override in job:
        key, value = override.split("=")
        node = summary["config"]
        if key.startswith("+"):
            assert summary["config"]["hydra"]["choices"][key[1:]] == value
            continue
        for part in key.split("."):
            node = node[part]
        assert node == pytest.approx(float(value))


def test_every_scheme_is_in_a_sweep():
    covered = set()
    for name in SCHEME_SWEEPS:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            params = compose("train", overrides=[f"+sweep={name}"], return_hydra_config=True).hydra.sweeper.params
        covered.update(j[0] for j in basic_sweep_jobs(OmegaConf.to_container(params)))
    assert covered == {f"+scheme={s}" for s in SCHEMES}


@pytest.mark.parametrize("name", WANDB_SWEEPS)
def test_every_wandb_sweep_file_runs_m3lit_train_with_hydra_overrides(name, tmp_path):
    spec = yaml.safe_load((SWEEPS / "wandb_sweep" / name).read_text())
    assert spec["program"] == "m3lit-train" and spec["metric"]["goal"] == "maximize"
    assert spec["metric"]["name"] == "eval/average/all/ndcg@10"  # what the evaluation callback logs
    commands = wandb_agent_commands(SWEEPS / "wandb_sweep" / name)
    for command in commands:
        assert command[:2] == ["/usr/bin/env", "m3lit-train"] and "logger.mode=online" in command
        compose_job(command[2:], tmp_path)  # every agent command composes
    overrides = [c for c in commands[0][2:] if c != "logger.mode=online"] + ["logger=none"]
    summary = run_job(overrides, tmp_path)
    assert summary["group"] == spec["name"]


def _train(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return run_console("m3lit-train", *args, cwd=cwd, timeout=timeout, env={"WANDB_API_KEY": ""})


def test_two_scheme_two_seed_multirun_ends_compared_with_statistics_in_wandb(tmp_path, capsys):
    sweep_dir = tmp_path / "sweep"
    _train(["-m", "+sweep=teacher_weighting", "+scheme=weighted,learned", "seed=1,2", f"hydra.sweep.dir={sweep_dir}",
            "trainer.max_steps=4", "trainer.log_every_n_steps=1", "callbacks.retrieval_eval.every_n_steps=2",
            "callbacks.retrieval_eval.at_start=false",
            "callbacks.retrieval_eval.datasets=[en,de]", "callbacks.retrieval_eval.max_queries=16",
            "callbacks.retrieval_eval.print_table=false", "callbacks.tracking.export_artifact=true"], tmp_path)

    run_dirs = sorted(glob.glob(str(sweep_dir / "*" / "wandb" / "offline-run-*")))
    assert len(run_dirs) == 4
    # the multirun ended with its comparison in the sweep folder and `latest` beside it pointing there:
    # the held-out test table with intervals over the 2 seeds and the paired test against the first scheme
    md = (sweep_dir / "compare.md").read_text()
    assert "**ndcg@10 (held-out test test/…, average over 2 datasets" in md and "95 % t-interval" in md
    assert "| weighted (baseline) |" in md and "Holm-adjusted p of a paired randomisation test" in md
    learned_row = [line for line in md.splitlines() if line.startswith("| learned |")][0]
    assert all(any(mark in cell for mark in "▲▼≈") for cell in learned_row.split("|")[2:7])
    assert "dev eval/…" in md and "![ndcg@10 during training (dev)](curves.png)" in md
    assert (sweep_dir / "compare.png").exists() and (sweep_dir / "curves.png").stat().st_size > 5000
    assert (sweep_dir / "teacher_weights.png").exists()  # learned weights move
    rows = (sweep_dir / "compare.csv").read_text().splitlines()
    learned = [r.split(",") for r in rows if ",test,average,learned,2,all,ndcg@10," in r]
    assert len(learned) == 1 and learned[0][11] == "weighted" and learned[0][15] in ("better", "worse", "same")
    assert float(learned[0][9]) <= float(learned[0][7]) <= float(learned[0][10])  # the interval holds the mean
    assert (tmp_path / "latest").resolve() == sweep_dir.resolve()
    # the comparison itself is an offline W&B run of the sweep's group, read back by the project's reader
    (compare_dir,) = glob.glob(str(sweep_dir / "wandb" / "offline-run-*"))
    comparison_run = read_wandb_run(compare_dir)
    assert (comparison_run.job_type, comparison_run.group) == ("compare", "teacher_weighting")
    key = "compare/test/average/all/ndcg@10/learned"
    assert 0.0 <= comparison_run.metrics[f"{key}/p_adjusted"] <= 1.0
    assert comparison_run.metrics[f"{key}/mean"] == pytest.approx(float(learned[0][7]), abs=1e-6)
    assert os.path.exists(os.path.join(compare_dir, "files", "compare.md"))
    assert glob.glob(os.path.join(compare_dir, "files", "media", "images", "compare", "curves*.png"))
    assert len(local_runs(str(sweep_dir))) == 4  # the comparison run is not one of the runs

    run_dirs = run_dirs[::2]  # seed 1 of each scheme below
    runs = [read_wandb_run(d) for d in run_dirs]
    by_scheme = {r.choices["scheme"]: r for r in runs}
    assert set(by_scheme) == {"weighted", "learned"}
    weighted, learned = by_scheme["weighted"], by_scheme["learned"]
    # distinct configs: the full resolved config was logged
    assert weighted.config["teacher"]["_target_"].endswith("WeightedTeacher")
    assert learned.config["teacher"]["_target_"].endswith("LearnedTeacher")
    assert weighted.config["trainer"]["max_steps"] == 4 and weighted.group == "teacher_weighting"
    assert {r.status for r in runs} == {"finished"} and {r.name for r in runs} == {"tiny-weighted", "tiny-learned"}
    # distinct metrics: teacher weights and the ensemble loss differ; the evaluation and tracking keys are there
    assert weighted.metrics["teacher/w_sparse"] == pytest.approx(0.3)
    assert learned.metrics["teacher/w_sparse"] != pytest.approx(0.3, abs=1e-6)  # learned: it moved
    assert weighted.metrics["train/loss/ensemble"] != learned.metrics["train/loss/ensemble"]
    for r in runs:
        assert r.metrics["trainer/global_step"] == 4
        assert {"test/en/colbert/ndcg@10", "test/average/all/ndcg@10"} <= set(r.metrics)
        assert {"train/grad_norm", "train/lr", "perf/tokens_per_s", "batch/padding_fraction",
                "train/loss/dense", "train/loss/sparse", "train/loss/colbert", "train/loss/distill",
                "eval/en/colbert/ndcg@10", "eval/de/sparse/recall@100", "eval/average/all/ndcg@10"} <= set(r.metrics)
    # the same final values in each run's m3lit_run.json
    for r in runs:
        summary = read_summary(str(Path(r.source).parents[2] / "m3lit_run.json"))
        assert summary.run_id == r.run_id
        assert summary.metrics["eval/average/all/ndcg@10"] == pytest.approx(r.metrics["eval/average/all/ndcg@10"])
    # W&B extras: the per-dataset evaluation table, the resolved config file and the exported-model artifact
    from wandb.proto import wandb_internal_pb2 as pb

    records = [pb.Record.FromString(b) for b in iter_record_bytes(glob.glob(run_dirs[0] + "/*.wandb")[0])]
    artifacts = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    assert any(a.type == "model" and a.name.startswith("model-") for a in artifacts)
    assert any("eval/table" in [*i.nested_key, i.key] for r in records if r.WhichOneof("record_type") == "history"
               for i in r.history.item)
    assert os.path.exists(os.path.join(run_dirs[0], "files", "config_resolved.yaml"))
    for name in ("eval_per_query.json", "eval_history.jsonl", "train_history.jsonl"):  # online compare reads them
        assert os.path.exists(os.path.join(run_dirs[0], "files", name)), name

    # m3lit-compare again, from the offline W&B runs alone: the same comparison as the one the sweep ended with
    out = tmp_path / "report"
    printed = run_console("m3lit-compare", str(sweep_dir), "--source", "wandb", "--output", str(out), "--wandb", "off",
                          cwd=tmp_path).stdout
    table = printed[printed.index("ndcg@10 (held-out test test/…, average over 2 datasets"):].split("\n\n")[0]
    assert table.splitlines()[1].split() == ["scheme", "dense", "sparse", "colbert", "dense+sparse", "all", "runs"]
    again, first = [[r.split(",") for r in (d / "compare.csv").read_text().splitlines()] for d in (out, sweep_dir)]
    assert [r[:7] + r[11:12] + r[15:] for r in again] == [r[:7] + r[11:12] + r[15:] for r in first]
    assert [float(v or "nan") for r in again[1:] for v in r[7:11] + r[12:15]] == pytest.approx(
        [float(v or "nan") for r in first[1:] for v in r[7:11] + r[12:15]], abs=1e-5, nan_ok=True)
    # labels × modes × metrics × (test average, en, de; dev average) + the sparse health (labels × zero_frac, nnz)
    assert len(rows) == 1 + 2 * 5 * 3 * (1 + 2 + 1) + 2 * 2
    assert [r.run_id for r in local_runs(str(sweep_dir), "summary")] == [r.run_id for r in
                                                                          local_runs(str(sweep_dir), "wandb")]


def test_optuna_sweep_maximizes_the_returned_metric_with_sqlite_storage(tmp_path):
    sweep_dir, db = tmp_path / "optuna", tmp_path / "study.db"
    _train(["-m", "+sweep=optuna_teacher", "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={sweep_dir}",
            f"hydra.sweeper.storage=sqlite:///{db}", "logger=none"] + QUICK, tmp_path)
    result = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert set(result["best_params"]) == {"teacher.weights.dense", "teacher.weights.sparse",
                                          "teacher.weights.colbert", "loss.head_weights.sparse", "loss.temperature"}
    returned = [read_summary(str(p)).metrics["eval/average/all/ndcg@10"] for p in sweep_dir.glob("*/m3lit_run.json")]
    assert len(returned) == 2 and result["best_value"] == pytest.approx(max(returned), abs=1e-6)
    with sqlite3.connect(db) as con:
        states = con.execute("SELECT state FROM trials").fetchall()
    assert [s for (s,) in states] == ["COMPLETE", "COMPLETE"]


def test_sweep_jobs_go_to_slurm_through_the_submitit_launcher(tmp_path, monkeypatch):
    """The sweep's jobs through conf/hydra/launcher/slurm.yaml: the launcher's own submitit calls, with the array
    submission intercepted (no cluster here) and the sbatch script it would submit checked."""
    import submitit
    from hydra.utils import instantiate

    bin_dir = tmp_path / "bin"  # submitit's SLURM executor looks for `srun` on PATH
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    submitted = []

    def map_array(executor, fn, *iterables):
        submitted.append((executor, fn, list(zip(*iterables))))
        return [type("Job", (), {"results": lambda self: [None]})() for _ in submitted[-1][2]]

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", map_array)

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["+sweep=teacher_weighting", "hydra/launcher=slurm", "trainer=gpu",
                                          "trainer.devices=1", "hydra.launcher.partition=gpu",
                                          "hydra.launcher.timeout_min=60", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                      return_hydra_config=True)
    launcher = instantiate(cfg.hydra.launcher)
    assert type(launcher).__name__ == "SlurmLauncher"
    launcher.config = cfg
    jobs = basic_sweep_jobs(OmegaConf.to_container(cfg.hydra.sweeper.params))
    launcher.launch(jobs, initial_job_idx=0)

    ((executor, fn, args),) = submitted
    assert fn is launcher and [a[0] for a in args] == jobs and [a[2] for a in args] == list(range(len(jobs)))
    assert len(jobs) == 8  # the teacher_weighting schemes
    script = executor._executor._make_submission_file_text("m3lit-train-job", "uid")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1", "#SBATCH --ntasks-per-node=1",
                 "#SBATCH --nodes=1", "#SBATCH --signal=USR1@180", "#SBATCH --time=60", "#SBATCH --requeue"):
        assert line in script, script


def test_searchpath_points_at_the_packaged_sweeps_folder():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", return_hydra_config=True)
    assert "pkg://m3lit.sweeps" in cfg.hydra.searchpath
    with pytest.raises(Exception, match="scheme"):
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            compose("train", overrides=["+scheme=no_such_scheme"])


def test_latest_link_sits_beside_the_sweep_folders():
    from m3lit.runs.sweep_end import latest_link_path

    assert latest_link_path("multirun/teacher_weighting/2026-01-01_12-00-00-ab12cd34") == "multirun/latest"
    assert latest_link_path("multirun/2026-01-01/12-00-00-ab12cd34") == "multirun/latest"
    assert latest_link_path("/abs/sweeps/one") == "/abs/sweeps/latest"
