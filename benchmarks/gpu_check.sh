#!/usr/bin/env bash
# GPU check for the scale features, one CUDA device, under 8 minutes on an H100/H200:
#   1. correctness on the device: CUDA RNG replay of grad_cache / split_batch (dropout on), flash-attn
#      padded and packed (varlen) outputs vs SDPA (when flash-attn is installed);
#   2. largest batch of 8192-token passages per device for plain / split_batch / grad_cache with an
#      XLM-R-large-sized encoder (24 layers, hidden 1024) in bf16, SDPA and flash-attn; tokens/s and MFU.
# Usage: benchmarks/gpu_check.sh [extra args for benchmarks/scale_gpu.py]
# Output: the log on stdout and $OUT/gpu_check.{log,json} (OUT defaults to ./gpu_check_out).
# Exit: 0 all passed, 1 a check failed / crashed / timed out, 2 checks passed but a memory target was missed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
OUT="${OUT:-./gpu_check_out}"
mkdir -p "$OUT"
export OUT TOKENIZERS_PARALLELISM=false PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "FAIL: torch in $PY sees no CUDA device (CPU-only torch build?)" | tee "$OUT/gpu_check.log"
  exit 1
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu_check.log"
"$PY" -c "import importlib.util as u; print('flash-attn installed:', u.find_spec('flash_attn') is not None)" | tee -a "$OUT/gpu_check.log"

# 450 s hard limit; the driver stops starting new measurements after 400 s
timeout --signal=TERM --kill-after=20 450 "$PY" benchmarks/scale_gpu.py --budget-s 400 --out "$OUT" "$@" 2>&1 | tee -a "$OUT/gpu_check.log"
status=${PIPESTATUS[0]}
if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
  echo "FAIL: timed out after 450 s" | tee -a "$OUT/gpu_check.log"
  exit 1
fi
exit "$status"
