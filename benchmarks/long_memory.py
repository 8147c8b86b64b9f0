"""Long inputs on CPU: manlong (manual pages, passages up to 8192 tokens) through ``m3lit-train``, peak memory
and tokens/s as the batch grows, for GradCache against the plain step.

    .venv/bin/python benchmarks/long_memory.py [--batches 1 2 4 8 16] [--modes grad_cache plain] [--threads 1]
        [--model tiny|small] [--tokenizer DIR] [--workdir /tmp/m3lit-long-memory]

Each (mode, batch) is one ``m3lit-train`` process (the installed console script, defaults otherwise: packing,
precision auto): ``model=tiny`` (random XLM-R 64 × 2; ``--model small``: 384 × 6, minutes per step on CPU),
dropout 0.1, 8194 positions, manlong ``train/en`` + ``train/de``, B queries × group 2 (1 positive + 1 hard
negative), queries 64 / passages 8192 tokens, one length bucket, self-distillation on, 3 steps (the first is not
timed). GradCache encodes in sub-batches of
``train_step.encoding.token_budget`` (16,384) tokens, so its activations do not grow with B; the plain step
keeps every passage's activations until the backward pass. Printed per run: peak RSS of the process, real
tokens per step and real tokens/s (``perf/step_s``, data included).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vs_flagembedding import ROOT, read_m3lit_steps, run_measured, thread_env  # noqa: E402

MANLONG_TRAIN = ROOT.parent / "shared" / "data" / "manlong" / "train"


def command(mode: str, batch: int, steps: int, model: str, tokenizer: str | None, run_dir: Path) -> list[str]:
    script = shutil.which("m3lit-train", path=os.path.dirname(sys.executable)) or "m3lit-train"
    files = ",".join(str(MANLONG_TRAIN / f"{lang}.jsonl.gz") for lang in ("en", "de"))
    cmd = [script, f"model={model}", "model.encoder_config.hidden_dropout_prob=0.1",
           "model.encoder_config.attention_probs_dropout_prob=0.1", "data=default", f"data.train=[{files}]",
           f"data.batch_size={batch}", "data.group_size=2", "data.query_max_len=64", "data.passage_max_len=8192",
           "data.bucket_boundaries=[0,8192]", f"train_step={mode if mode != 'plain' else 'default'}",
           f"trainer.max_steps={steps}", "trainer.log_every_n_steps=1", "callbacks=none", "logger=csv",
           "checkpoint=none", "export_dir=null", f"hydra.run.dir={run_dir}"]
    if tokenizer:
        cmd.append(f"model.tokenizer_path={tokenizer}")
    return cmd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--model", choices=["tiny", "small"], default="tiny")
    parser.add_argument("--modes", nargs="+", default=["grad_cache", "plain"], choices=["grad_cache", "plain"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the embedded one)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/m3lit-long-memory"))
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2 (the first step is not timed)")
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(f"{'mode':<11} {'B':>3} {'peak RSS':>9} {'tokens/step':>12} {'tokens/s':>9} {'s/step':>7}", flush=True)
    for mode in args.modes:
        for batch in args.batches:
            out = args.workdir / f"{mode}-B{batch}"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            measured = run_measured(command(mode, batch, args.steps, args.model, args.tokenizer, out / "run"),
                                    thread_env(args.threads), out, out / "log.txt")
            steps = read_m3lit_steps(out / "run", warmup=1)
            seconds, tokens = sum(steps["step_s"]), sum(steps["real_tokens"])
            print(f"{mode:<11} {batch:>3} {measured['peak_rss'] / 1e9:7.2f} GB {tokens / len(steps['step_s']):12.0f} "
                  f"{tokens / seconds:9.0f} {seconds / len(steps['step_s']):7.1f}", flush=True)


if __name__ == "__main__":
    main()
