"""Train → mine → retrain on real data: fine-tuning all-MiniLM-L6-v2 on debdesc/train/en with its BM25 negatives,
mining new ones with the fine-tuned model's own heads (``m3lit-mine``), fine-tuning MiniLM again on them, and
evaluating both exports on debdesc/dev/en (every judged query, nDCG@10 per head and hybrid, next to BM25).

    .venv/bin/python benchmarks/mining_quality.py [--work-dir DIR] [--steps 125] [--threads 2]
        [--baseline-export DIR]   # skip step 1: an export already fine-tuned on the BM25 negatives
        [--mined FILE]            # skip step 2: negatives already mined
        [-- mining overrides, e.g. mode=dense range=[0,30]]

Both fine-tunings use the same command (benchmarks/finetune_quality.py: one epoch, group 4, 16 queries per step,
queries 64 / passages 256 tokens); mining: ``mode=dense+sparse range=[0,30] sample=top`` with the default false-
negative filter (``relative_margin=0.05``, near-duplicates) over the training file's own passages.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from finetune_quality import DATA, MODES, default_model_path, train_command

BIN = os.path.dirname(sys.executable)
MINING = ["mode=dense+sparse", "range=[0,30]", "sample=top", "query_max_length=64", "passage_max_length=256"]


def run(cmd: list[str], env: dict, cwd: str) -> str:
    print("$ " + " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, check=True, env=env, cwd=cwd, capture_output=True, text=True)
    return proc.stdout


def exported(stdout: str) -> str:
    return [line.split(": ", 1)[1] for line in stdout.splitlines() if line.startswith("exported: ")][-1]


def evaluate(export: str, dev: str, out: str, env: dict, cwd: str) -> dict:
    run([os.path.join(BIN, "m3lit-eval"), f"model_path={export}", f"beir={dev}", f"output={out}", "split=test",
         "query_max_length=64", "max_length=256", "colbert_exhaustive_max_docs=20000", "print_table=false"], env, cwd)
    with open(out) as f:
        return json.load(f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", default=os.path.join(DATA, "debdesc", "train", "en.jsonl.gz"))
    parser.add_argument("--dev", default=os.path.join(DATA, "debdesc", "dev", "en"))
    parser.add_argument("--bm25", default=os.path.join(DATA, "bm25_dev.json"))
    parser.add_argument("--steps", type=int, default=125)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work-dir", default=None)
    parser.add_argument("--baseline-export", default=None)
    parser.add_argument("--mined", default=None)
    parser.add_argument("mining", nargs="*", help="extra m3lit-mine overrides")
    args = parser.parse_args()
    work = args.work_dir or tempfile.mkdtemp(prefix="m3lit-mining-")
    os.makedirs(work, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "WANDB_MODE": "disabled"}
    model_path, started = default_model_path(), time.time()
    baseline = args.baseline_export or exported(run(train_command(
        model_path, args.train, args.dev, args.steps, os.path.join(work, "bm25")), env, work))
    mined = args.mined or os.path.join(work, "mined.jsonl.gz")
    if not args.mined:
        print(run([os.path.join(BIN, "m3lit-mine"), f"model_path={baseline}", f"data={args.train}",
                   f"output={mined}", *MINING, *args.mining], env, work).strip().splitlines()[-2])
    retrained = exported(run(train_command(model_path, mined, args.dev, args.steps, os.path.join(work, "mined"),
                                           ["callbacks.retrieval_eval.at_start=false"]), env, work))
    name = os.path.basename(os.path.normpath(args.dev))
    results = {label: evaluate(path, args.dev, os.path.join(work, f"eval_{label.split()[0].lower()}.json"), env,
                               work)[name]
               for label, path in (("BM25 negatives", baseline), ("mined negatives", retrained))}
    bm25 = json.load(open(args.bm25)).get("debdesc", {}).get(name, {}).get("ndcg@10") \
        if os.path.isfile(args.bm25) else None
    print(f"\nnDCG@10 on debdesc/dev/{name}, every judged query (MiniLM fine-tuned {args.steps} steps on each; "
          f"{(time.time() - started) / 60:.1f} min wall)")
    print("training negatives  " + "  ".join(f"{m:>12}" for m in MODES))
    for label, res in results.items():
        print(f"{label:<18}  " + "  ".join(f"{res[m]['ndcg@10']:>12.4f}" for m in MODES))
    if bm25 is not None:
        print(f"BM25 retrieval      {bm25:>12.4f}")


if __name__ == "__main__":
    main()
