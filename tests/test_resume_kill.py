"""Nothing lost: a run killed with SIGKILL resumes from ``checkpoints/last.ckpt`` and then equals the uninterrupted
run step by step (dropout on); SIGTERM writes a checkpoint and stops; two runs started together keep their own
output folders."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import console_script, exported_dir, run_console

DROPOUT = ["model.encoder_config.hidden_dropout_prob=0.1", "model.encoder_config.attention_probs_dropout_prob=0.1"]
COMMON = ["trainer.max_steps=24", "checkpoint.every_n_steps=8", "logger=csv", "trainer.log_every_n_steps=1",
          "export_dir=null", *DROPOUT]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}


def losses(run_dir: Path) -> dict[int, float]:
    """step → train/loss from the CSV logger (every step)."""
    out: dict[int, float] = {}
    for path in sorted(run_dir.glob("csv/version_*/metrics.csv")):
        with open(path) as f:
            for row in csv.DictReader(f):
                if row.get("train/loss"):
                    out[int(row["step"])] = float(row["train/loss"])
    return out


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    start = time.time()
    while not path.exists():
        assert proc.poll() is None, f"the run ended before writing {path}: {proc.communicate()[1][-3000:]}"
        assert time.time() - start < timeout, f"no {path} after {timeout} s"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[int, float]:
    work = tmp_path_factory.mktemp("uninterrupted")
    run_console("m3lit-train", *COMMON, f"hydra.run.dir={work}/run", cwd=work)
    found = losses(work / "run")
    assert sorted(found) == list(range(24))
    return found


def test_kill_9_then_resume_from_last_ckpt_equals_the_uninterrupted_run(uninterrupted, tmp_path):
    killed = tmp_path / "killed"
    proc = subprocess.Popen([console_script("m3lit-train"), *COMMON, f"hydra.run.dir={killed}"], cwd=tmp_path,
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    last = killed / "checkpoints" / "last.ckpt"
    wait_for(last, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert os.readlink(last) == "step-0000008.ckpt"
    assert not list((killed / "checkpoints").glob("*.tmp"))
    resumed = tmp_path / "resumed"
    run_console("m3lit-train", *COMMON, f"resume_from={last}", f"hydra.run.dir={resumed}", cwd=tmp_path)
    after = losses(resumed)
    assert sorted(after) == list(range(8, 24))  # continues at step 8 (0-based: the 9th optimizer step)
    diffs = [abs(after[s] - uninterrupted[s]) for s in after]
    assert max(diffs) == 0.0, {s: (after[s], uninterrupted[s]) for s in after}
    # the dropout really draws random numbers: without restored RNG states the losses would differ
    assert len(set(uninterrupted.values())) == len(uninterrupted)


def test_sigusr1_writes_a_checkpoint_and_sigterm_writes_one_and_stops(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([console_script("m3lit-train"), *COMMON, "trainer.max_steps=100000",
                             "checkpoint.every_n_steps=0", f"hydra.run.dir={run}"], cwd=tmp_path, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last = run / "checkpoints" / "last.ckpt"
    wait_for(run / "checkpoints", proc)  # the checkpoint callback is set up: its signal handlers are in place
    proc.send_signal(signal.SIGUSR1)
    wait_for(last, proc)
    first = os.readlink(last)
    time.sleep(1)
    assert proc.poll() is None  # SIGUSR1: training goes on
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-3000:]
    assert "SIGTERM: checkpoint at step" in out, out[-2000:] + err[-2000:]
    assert os.readlink(last) != first and last.exists()
    assert "Traceback" not in err, err[-3000:]


def test_two_runs_started_together_keep_separate_outputs(tmp_path):
    args = ["trainer.max_steps=2", "callbacks=none", "logger=none"]
    procs = [subprocess.Popen([console_script("m3lit-train"), *args], cwd=tmp_path, env=ENV, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    exports = [exported_dir(subprocess.CompletedProcess([], 0, stdout=o[0])) for o in outs]
    assert exports[0] != exports[1]
    runs = [Path(e).parent for e in exports]
    assert all((r / "checkpoints" / "last.ckpt").exists() and (r / ".hydra" / "config.yaml").exists() for r in runs)


def test_ddp_resume_restores_every_ranks_rng_and_continues_exactly(tmp_path):
    """Two DDP processes with dropout and cross-device negatives (rank 0's loss depends on rank 1's dropout): a run
    resumed from the step-4 checkpoint repeats steps 4-7 of the uninterrupted run exactly."""
    args = ["strategy=ddp", "trainer.devices=2", "trainer.max_steps=8", "checkpoint.every_n_steps=4", "logger=csv",
            "trainer.log_every_n_steps=1", "export_dir=null", "callbacks=none", *DROPOUT]
    run_console("m3lit-train", *args, f"hydra.run.dir={tmp_path}/full", cwd=tmp_path)
    full = losses(tmp_path / "full")
    checkpoint = tmp_path / "full" / "checkpoints" / "step-0000004.ckpt"
    assert len(torch.load(checkpoint, weights_only=True)["m3lit"]["rng"]) == 2  # one state per rank
    run_console("m3lit-train", *args, f"resume_from={checkpoint}", f"hydra.run.dir={tmp_path}/resumed", cwd=tmp_path)
    after = losses(tmp_path / "resumed")
    assert sorted(after) == [4, 5, 6, 7]
    assert {s: after[s] for s in after} == {s: full[s] for s in after}
