"""benchmarks/scale_gpu.py --smoke-cpu: the GPU check's every code path on CPU with a tiny model — the RNG-replay
checks pass, every mode verifies a batch, and the targets count verified batches only (never the prediction)."""
import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "scale_gpu.py"


def test_gpu_check_dry_run_on_cpu(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke-cpu", "--length", "128", "--budget-s", "120",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode in (0, 2), proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    assert results["checks"]["rng_grad_cache"]["passed"] and results["checks"]["rng_split_batch"]["passed"]
    runs = {r["mode"]: r for r in results["runs"]}
    assert set(runs) == {"plain", "split_batch", "grad_cache"}
    for run in runs.values():
        assert run["finite"] and run["verified_batch"] >= 1 and run["tokens_per_s"] > 0
        assert run["predicted_max"] > run["verified_batch"]  # the tiny model's fit predicts far more ...
    scale = 80.0 / runs["grad_cache"]["device_gb"]
    # ... but only what ran counts towards the targets
    assert results["targets"]["grad_cache_per_80GB"] == runs["grad_cache"]["verified_batch"] * scale
    assert results["targets"]["split_batch_per_80GB"] == runs["split_batch"]["verified_batch"] * scale
    assert "RESULT:" in proc.stdout
