"""Benchmark: a 1M-line training file — time to the first batch and peak RSS of M3DataModule.

    .venv/bin/python benchmarks/data_index_1m.py [--lines 1000000] [--workdir /tmp/m3lit_bench_1m]

Generates the file once (not measured), then runs two fresh processes: a cold start (empty
cache: index + length fit + plan + first batch) and a warm start (cached index). Targets: first batch < 60 s,
peak RSS < 1.5 GB.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
TOKENIZER = os.environ.get("M3LIT_BENCH_TOKENIZER", os.path.join(ROOT, "tests/fixtures/tiny_m3"))


def generate(path: str, n: int) -> None:
    from m3lit.data.synthetic import synthetic_lines, write_jsonl

    t = time.time()
    write_jsonl(path, synthetic_lines(n, language="xx", seed=0, n_neg=3, passage_words=(5, 120)))
    print(f"generated {n} lines, {os.path.getsize(path) / 1e6:.0f} MB in {time.time() - t:.0f} s", flush=True)


def measure(path: str, cache_dir: str) -> dict:
    import resource

    t0 = time.time()
    from transformers import AutoTokenizer

    from m3lit.data import M3DataModule

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    t_import = time.time() - t0
    dm = M3DataModule(path, tokenizer, seed=0, cache_dir=cache_dir, passage_max_len=512, query_max_len=64)
    dm.setup("fit")
    t_setup = time.time() - t0
    batch = next(iter(dm.train_dataloader()))
    t_first = time.time() - t0
    return {
        "import_s": round(t_import, 1),
        "setup_s": round(t_setup, 1),
        "first_batch_s": round(t_first, 1),
        "steps_per_epoch": dm.plan.steps_per_epoch(0),
        "first_batch_shape": list(batch["passages"]["input_ids"].shape),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--workdir", default="/tmp/m3lit_bench_1m")
    ap.add_argument("--measure", nargs=2, metavar=("PATH", "CACHE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure)))
        return
    os.makedirs(args.workdir, exist_ok=True)
    path = os.path.join(args.workdir, f"train_{args.lines}.jsonl")
    if not os.path.exists(path):
        generate(path, args.lines)
    cache = os.path.join(args.workdir, "cache")
    subprocess.run(["rm", "-rf", cache], check=True)
    for label in ("cold (no cache)", "warm (cached index)"):
        out = subprocess.run([sys.executable, __file__, "--measure", path, cache], capture_output=True, text=True)
        if out.returncode:
            sys.exit(out.stderr)
        print(f"{label}: {out.stdout.strip()}", flush=True)


if __name__ == "__main__":
    main()
