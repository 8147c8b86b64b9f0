"""Quality benchmark: train the small config (hidden 384, 6 layers, from scratch) on debdesc/train for a fixed
CPU budget, then print the ``m3lit-eval`` table on debdesc/dev next to BM25 (``bm25_dev.json``).

    .venv/bin/python benchmarks/quality.py [--minutes 30] [--steps 600] [--work-dir DIR] [-- hydra overrides]

Steps: (1) a 32k Unigram tokenizer learned from the training texts; (2) ``m3lit-train model=small`` stopped by
``trainer.max_time`` (the LR schedule spans ``--steps``); (3) ``m3lit-eval`` on every dev set; (4) averages of
the monolingual and cross-lingual (``xling_*``) sets for every mode next to BM25's.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DATA = os.path.join(ROOT, "..", "shared", "data")
BIN = os.path.dirname(sys.executable)  # the installed console scripts
sys.path.insert(0, HERE)

from eval_speed import train_unigram_tokenizer  # noqa: E402


def training_texts(train_dir: str):
    """Distinct queries and passages of every jsonl(.gz) file in ``train_dir``."""
    seen = set()
    for name in sorted(os.listdir(train_dir)):
        if not name.endswith((".jsonl", ".jsonl.gz")):
            continue
        path = os.path.join(train_dir, name)
        with (gzip.open(path, "rt", encoding="utf-8") if name.endswith(".gz") else open(path)) as f:
            for line in f:
                record = json.loads(line)
                for text in (record["query"], *record.get("pos", []), *record.get("neg", [])):
                    if text not in seen:
                        seen.add(text)
                        yield text


def run(cmd: list[str], env: dict[str, str]) -> None:
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)


def group_averages(results: dict, bm25: dict, metric: str) -> list[tuple[str, dict[str, float], float | None]]:
    """(group, {mode: mean}, bm25 mean) for the monolingual and the cross-lingual datasets."""
    rows = []
    names = [n for n in results if n not in ("average",)]
    for group, members in (("monolingual", [n for n in names if not n.startswith("xling_")]),
                           ("cross-lingual", [n for n in names if n.startswith("xling_")])):
        if not members:
            continue
        modes = [m for m in results[members[0]] if m != "stats"]
        means = {m: sum(results[n][m][metric] for n in members) / len(members) for m in modes}
        base = [bm25[n][metric] for n in members if n in bm25 and metric in bm25[n]]
        rows.append((group, means, sum(base) / len(base) if len(base) == len(members) else None))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0, help="training wall-clock budget")
    parser.add_argument("--steps", type=int, default=600, help="optimizer steps the LR schedule spans")
    parser.add_argument("--batch-size", type=int, default=16, help="queries per step")
    parser.add_argument("--group-size", type=int, default=4, help="1 positive + hard negatives per query")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dev-datasets", nargs="*", default=None, help="subset of debdesc/dev (default: all)")
    parser.add_argument("--max-queries", type=int, default=None, help="first N queries per dev set")
    parser.add_argument("--tokenizer", default=None, help="use this tokenizer folder instead of learning one")
    parser.add_argument("--work-dir", default=os.path.join(ROOT, "outputs", "quality"))
    parser.add_argument("overrides", nargs="*", help="extra m3lit-train overrides (after --)")
    args = parser.parse_args()

    train_dir = os.path.abspath(os.path.join(DATA, "debdesc", "train"))
    dev_dir = os.path.abspath(os.path.join(DATA, "debdesc", "dev"))
    bm25_path = os.path.abspath(os.path.join(DATA, "bm25_dev.json"))
    work = os.path.abspath(args.work_dir)
    os.makedirs(work, exist_ok=True)
    env = {**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"),
           "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": ROOT}

    tokenizer_dir = os.path.abspath(args.tokenizer) if args.tokenizer else os.path.join(work, "tokenizer")
    if not os.path.isfile(os.path.join(tokenizer_dir, "tokenizer.json")):
        start = time.perf_counter()
        train_unigram_tokenizer(training_texts(train_dir), tokenizer_dir)
        print(f"tokenizer learned in {time.perf_counter() - start:.0f}s: {tokenizer_dir}", flush=True)

    model_dir = os.path.join(work, "model")
    budget = int(args.minutes * 60)
    max_time = f"{budget // 86400:02d}:{budget // 3600 % 24:02d}:{budget // 60 % 60:02d}:{budget % 60:02d}"
    start = time.perf_counter()
    run([os.path.join(BIN, "m3lit-train"), "model=small", f"model.tokenizer_path={tokenizer_dir}",
         f"data.train={train_dir}", f"data.batch_size={args.batch_size}", f"data.group_size={args.group_size}",
         "data.query_max_len=64", "data.passage_max_len=512", f"data.cache_dir={os.path.join(work, 'cache')}",
         f"optim.lr={args.lr}", f"trainer.max_steps={args.steps}",
         f"+trainer.max_time='{max_time}'",
         "logger=csv", "callbacks.retrieval_eval.at_start=false", "callbacks.retrieval_eval.at_end=false",
         "callbacks.retrieval_eval.every_n_steps=0",  # the CPU budget goes to training; evaluation follows
         f"export_dir={model_dir}",
         f"hydra.run.dir={os.path.join(work, 'train')}", *args.overrides], env)
    train_seconds = time.perf_counter() - start

    output = os.path.join(work, "quality.json")
    evaluate = [os.path.join(BIN, "m3lit-eval"), f"model_path={model_dir}", f"beir={dev_dir}",
                f"output={output}", f"baseline={bm25_path}", "baseline_group=debdesc", "max_length=512",
                "query_max_length=128", f"threads={args.threads}", "device=cpu"]
    if args.dev_datasets:
        evaluate.append("datasets=[" + ",".join(args.dev_datasets) + "]")
    if args.max_queries:
        evaluate.append(f"max_queries={args.max_queries}")
    start = time.perf_counter()
    run(evaluate, env)
    eval_seconds = time.perf_counter() - start

    with open(output) as f:
        results = json.load(f)
    with open(bm25_path) as f:
        bm25 = json.load(f)["debdesc"]
    print(f"\ntraining {train_seconds / 60:.1f} min (budget {args.minutes:g}), evaluation {eval_seconds / 60:.1f} min")
    for metric in ("ndcg@10", "recall@100"):
        rows = group_averages(results, bm25, metric)
        modes = list(rows[0][1]) if rows else []
        print(f"\n{metric:<14}" + "".join(f"{m:>14}" for m in modes) + f"{'bm25':>14}")
        for group, means, base in rows:
            print(f"{group:<14}" + "".join(f"{means[m]:>14.4f}" for m in modes)
                  + (f"{base:>14.4f}" if base is not None else f"{'-':>14}"))


if __name__ == "__main__":
    main()
