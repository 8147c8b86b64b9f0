"""Cross-device candidates with gradient: 2 ranks (gloo) equal 1 process holding the whole global batch."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "scripts" / "scale_cross_device.py"
TOL = 1e-5


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("cross_device") / "results.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


def test_ranks_pad_to_their_own_length(results):
    assert results["lengths"] == [20, 11]


@pytest.mark.parametrize("case", ["all", "mixed", "lightning", "ema", "views", "snapshot", "layerwise", "mix"])
def test_loss_and_every_gradient_equal_one_process(results, case):
    r = results[case]
    assert r["loss"] == pytest.approx(r["ref_loss"], abs=TOL)
    assert r["max_grad_diff"] < TOL, r


def test_every_parameter_is_compared(results):
    assert results["all"]["n_params"] == results["mixed"]["n_params"] > 40  # encoder, heads, teacher weights
    # the EMA copy has no gradients; the learned teacher's weights and temperature (2 tensors) are not there
    assert results["ema"]["n_params"] == results["all"]["n_params"] - 2
    assert results["layerwise"]["n_params"] == results["ema"]["n_params"] + 4  # layer 1's sparse + colbert heads
    assert results["mix"]["n_params"] == results["ema"]["n_params"]  # fixed source weights, the EMA copy frozen


def test_gather_without_gradient_gets_the_gradients_wrong(results):
    r = results["detached"]
    assert r["loss"] == pytest.approx(r["ref_loss"], abs=TOL)  # same forward ...
    assert r["max_grad_diff"] > 1e-2  # ... but not the gradient of the global-batch loss


def test_nonfinite_skip_is_agreed_by_all_ranks(results):
    # rank 1 alone had a NaN loss; both ranks skipped the step and left their weights untouched
    assert results["ddp_skip"] == [{"skipped": 1, "unchanged": True}] * 2


def test_learned_teacher_with_one_head_trains_under_ddp(results):
    assert results["learned_one_head"] == [{"steps": 1, "teacher_frozen": True, "encoder_trained": True}] * 2
