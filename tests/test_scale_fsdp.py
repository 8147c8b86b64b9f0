"""strategy=fsdp (FSDP2) on 2 CPU processes: sharded training equals one process, a sharded checkpoint resumes
exactly, and the BGE-M3 export holds the consolidated weights."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "scripts" / "scale_fsdp.py"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("fsdp")
    proc = subprocess.run([sys.executable, str(SCRIPT), str(workdir)], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and "terminated with signal SIGSEGV" in proc.stderr:
        # a rank of the 2-process gloo run has crashed once under the full suite's load (not reproduced alone);
        # one rerun, reported, so that a crash twice or any other failure still fails
        print("scale_fsdp.py: a rank crashed (SIGSEGV); rerunning once\n" + proc.stderr[-2000:], file=sys.stderr)
        proc = subprocess.run([sys.executable, str(SCRIPT), str(workdir)], capture_output=True, text=True,
                              timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((workdir / "results.json").read_text())


def test_every_parameter_is_sharded_over_both_ranks(results):
    assert results["n_sharded"] == results["n_params"]
    per_rank = results["local_numel_per_rank"]
    assert sum(per_rank) == results["total_params"] and max(per_rank) < 0.55 * results["total_params"]


def test_first_step_gradients_equal_one_process_after_clipping(results):
    assert results["n_grads"] > 40  # model + learned teacher weights
    assert results["first_step_grad_diff_vs_one_process"] < 1e-5


def test_checkpoint_is_sharded_and_resumes_exactly(results):
    assert {"__0_0.distcp", "__1_0.distcp", ".metadata", "meta.pt"} <= set(results["ckpt_files"])
    assert results["global_step_after_resume"] == 4
    assert results["trained"] > 1e-3
    assert results["resume_vs_uninterrupted"] < 1e-6
    assert results["teacher_resume_vs_uninterrupted"] < 1e-6


def test_export_holds_the_consolidated_weights(results):
    assert results["export_keys_match"]
    assert results["export_vs_consolidated"] == 0.0


def test_bf16_mixed_computes_in_bf16_and_keeps_fp32_master_weights(results):
    assert results["bf16_hidden_dtype"] == "torch.bfloat16"
    assert results["bf16_param_dtype"] == "torch.float32"
    assert results["bf16_finite_grads"]


def test_nonfinite_skip_under_fsdp(results):
    assert results["skip_per_rank"] == [1, 1]  # NaN on rank 1 only; both ranks skip
    assert results["skip_step_change"] == 0.0
    assert results["after_skip_step_change"] > 1e-4


def test_ema_teacher_copy_is_sharded_scores_through_fsdp_and_follows_its_formula(results):
    assert results["ema_sharded"] == results["ema_params"] == results["n_params"]
    assert results["ema_first_step_grad_diff_vs_one_process"] < 1e-5
    assert results["ema_vs_formula"] < 1e-6


def test_snapshot_and_layerwise_teachers_under_fsdp_equal_one_process(results):
    diffs = results["other_teachers_first_step_grad_diff"]
    assert diffs["snapshot"][0] < 1e-5 and diffs["layerwise"][0] < 1e-5
    assert diffs["layerwise"][1] == diffs["snapshot"][1] + 4  # + layer 1's own sparse and colbert heads
