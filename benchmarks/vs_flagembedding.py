"""m3lit's default trainer against FlagEmbedding's own, in one run, on the same model, data and batch.

    .venv/bin/python benchmarks/vs_flagembedding.py [--workdir /tmp/m3lit-vs-flagembedding] [--threads 1]
        [--steps 13] [--warmup 3] [--fe-venv ~/.cache/m3lit/flagembedding-1.4.2] [--only m3lit|flagembedding]

1. Data: debdesc train ``de``, ``ja`` and ``xling_fr-en`` (``../shared/data/debdesc/train``), decompressed once into
   the work folder; both trainers read the same three files.
2. Model: a tokenizer learned on those files (16k ids, ``sweeps/tools/train_tokenizer.py``) and a random XLM-R
   (hidden 384 × 6 layers, 6 heads, FFN 1536) with fresh ColBERT and sparse projections, saved once in the BGE-M3
   layout (``config.json``, ``model.safetensors``, ``colbert_linear.pt``, ``sparse_linear.pt``, tokenizer); both
   trainers start from these weights.
3. FlagEmbedding: a virtualenv with ``flagembedding==1.4.2`` (created once, reused; this torch version, transformers
   4.x as FlagEmbedding was released with) runs its official entry point
   (``FlagEmbedding.finetune.embedder.encoder_only.m3``, through ``flagembedding_driver.py``, which only adds a step
   timer and a token counter): unified fine-tuning with self-distillation from step 0, same-dataset batches, m3_kd_loss,
   CLS pooling, temperature 0.02, lr 1e-5, fp32, 8 queries × group 8, queries 64 / passages 256 tokens.
4. m3lit: ``m3lit-train`` (the installed console script) with its defaults and the same model, data, batch, lengths
   and learning rate (``model=pretrained``; the length buckets 0/64/128/192/256; everything else as shipped:
   packing, precision ``auto`` and the console script's allocator, tcmalloc where the system has it —
   ``M3LIT_ALLOCATOR=system`` in the environment keeps glibc's).
5. A short matmul probe (fp32 and bf16) with the same thread count, before and after the runs, gives the machine's
   rates (the higher of the two); each trainer's model FLOP/s is compared with the rate of the precision it trained
   in (FlagEmbedding fp32; m3lit what ``trainer.precision=auto`` chose: bf16 on a CPU with native bf16).

Printed, one line per trainer: s/step (data + forward + backward + update, mean of the steps after the warm-up),
real tokens/s, the padding share of the computed tokens, the peak RSS of the training process, and the model
FLOP/s: training FLOPs per real token (6 × non-embedding parameters + 12 × layers × hidden × the token's sequence
length, for the attention products) × real tokens/s, as a share of the probe's rate. Then the ratios, against the
targets (tokens/s ≥ 5×, peak RSS ≤ ¼, model FLOP/s ≥ 70 % of the matmul rate). Results also go to
``<workdir>/result.json``. Each trainer runs as its own process, one after the other.
"""
from __future__ import annotations

import argparse
import glob
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEBDESC_TRAIN = ROOT.parent / "shared" / "data" / "debdesc" / "train"
FILES = ("de", "ja", "xling_fr-en")
MODEL = {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 6, "intermediate_size": 1536}
BATCH = {"queries": 8, "group": 8, "query_len": 64, "passage_len": 256, "lr": 1e-5}
FLAGEMBEDDING = "flagembedding==1.4.2"
TARGETS = {"tokens_per_s": 5.0, "peak_rss": 0.25, "mfu": 0.70}


# ---------------------------------------------------------------------------------------------------- inputs
def prepare_data(workdir: Path) -> list[Path]:
    """The three debdesc files as plain jsonl in ``workdir/data`` (FlagEmbedding reads them through ``datasets``)."""
    folder = workdir / "data"
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name in FILES:
        target = folder / f"{name}.jsonl"
        if not target.exists():
            with gzip.open(DEBDESC_TRAIN / f"{name}.jsonl.gz", "rb") as src, open(f"{target}.part", "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(f"{target}.part", target)
        out.append(target)
    return out


def prepare_model(workdir: Path, files: list[Path], seed: int = 0) -> Path:
    """Tokenizer learned on ``files`` and a random XLM-R with M3 heads, in the BGE-M3 layout (built once)."""
    folder = workdir / "model"
    if (folder / "sparse_linear.pt").exists():
        return folder
    import torch
    from transformers import AutoTokenizer, XLMRobertaConfig, XLMRobertaModel

    sys.path.insert(0, str(ROOT / "sweeps" / "tools"))
    from train_tokenizer import train as train_tokenizer

    tmp = workdir / "model.part"
    shutil.rmtree(tmp, ignore_errors=True)
    train_tokenizer(files, str(tmp), vocab_size=16000, max_lines=4000)
    tokenizer = AutoTokenizer.from_pretrained(str(tmp))
    config = XLMRobertaConfig(vocab_size=len(tokenizer), max_position_embeddings=BATCH["passage_len"] + 2 + 256,
                              type_vocab_size=1, pad_token_id=tokenizer.pad_token_id, bos_token_id=0, eos_token_id=2,
                              **MODEL)
    torch.manual_seed(seed)
    encoder = XLMRobertaModel(config, add_pooling_layer=False)
    encoder.save_pretrained(str(tmp))
    hidden = MODEL["hidden_size"]
    torch.save(torch.nn.Linear(hidden, hidden).state_dict(), tmp / "colbert_linear.pt")
    torch.save(torch.nn.Linear(hidden, 1).state_dict(), tmp / "sparse_linear.pt")
    os.replace(tmp, folder)
    return folder


def attention_context(model_dir: Path, files: list[Path], lines: int = 1000) -> float:
    """Σ l² / Σ l over the truncated queries and passages of the first ``lines`` lines of each file: the mean, over
    real tokens, of the length of the sequence a token attends over."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    squares = total = 0
    for path in files:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f):
                if number >= lines:
                    break
                record = json.loads(line)
                texts = [(record["query"], BATCH["query_len"])]
                texts += [(t, BATCH["passage_len"]) for t in record["pos"][:1] + record.get("neg", [])[:7]]
                for text, limit in texts:
                    n = len(tokenizer(text, truncation=True, max_length=limit)["input_ids"])
                    squares, total = squares + n * n, total + n
    return squares / total


def training_flops_per_token(context: float) -> float:
    """6 N (forward 2 N + backward 4 N, N = non-embedding weights incl. the heads) + 12 · layers · d · context."""
    d, layers, ffn = MODEL["hidden_size"], MODEL["num_hidden_layers"], MODEL["intermediate_size"]
    per_layer = 4 * d * d + 2 * d * ffn
    heads = d * d + d
    return 6 * (layers * per_layer + heads) + 12 * layers * d * context


def matmul_rate(threads: int, dtype: str = "fp32") -> float:
    """FLOP/s of this machine's ``dtype`` (fp32 | bf16) matrix products with ``threads`` threads: the best of square
    and model-shaped products."""
    import torch

    torch.set_num_threads(threads)
    kind = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    best = 0.0
    for m, k, n in ((2048, 2048, 2048), (4096, 384, 1536), (4096, 1536, 384)):
        a, b = torch.randn(m, k, dtype=kind), torch.randn(k, n, dtype=kind)
        a @ b
        start, reps = time.perf_counter(), 0
        while time.perf_counter() - start < 1.5:
            a @ b
            reps += 1
        best = max(best, 2 * m * k * n * reps / (time.perf_counter() - start))
    return best


def matmul_rates(threads: int) -> dict[str, float]:
    return {dtype: matmul_rate(threads, dtype) for dtype in ("fp32", "bf16")}


# ---------------------------------------------------------------------------------------------------- running
def process_tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.split("/")[2]))
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            pass
        todo += children.get(p, [])
    return total


def run_measured(cmd: list[str], env: dict, cwd: Path, log: Path) -> dict:
    """Runs ``cmd``; the peak RSS = max(the main process's high-water mark, the sampled process tree's sum)."""
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        peak = [0]
        done = threading.Event()

        def sample():
            while not done.wait(0.2):
                peak[0] = max(peak[0], process_tree_rss(proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        done.set()
        sampler.join()
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-30:]
        raise RuntimeError(f"{cmd[0]} failed (exit {proc.returncode}); the end of {log}:\n" + "\n".join(tail))
    return {"peak_rss": max(usage.ru_maxrss * 1024, peak[0]), "wall_s": time.perf_counter() - start}


def thread_env(threads: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "HYDRA_"))}
    return {**env, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false",
            "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def ensure_flagembedding_venv(venv: Path) -> Path:
    python = venv / "bin" / "python"
    marker = venv / ".m3lit-bench-ready"
    if marker.exists():
        return python
    import torch

    print(f"creating {venv} with {FLAGEMBEDDING} (once)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run(pip + [f"torch=={torch.__version__}"], check=True)  # this very build (e.g. 2.13.0+cpu)
    subprocess.run(pip + [FLAGEMBEDDING, "transformers>=4.44,<5"], check=True)
    marker.write_text(FLAGEMBEDDING + "\n")
    return python


def run_flagembedding(args, model_dir: Path, files: list[Path]) -> dict:
    python = ensure_flagembedding_venv(args.fe_venv)
    out = args.workdir / "flagembedding"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    result = out / "steps.json"
    flag_args = [
        "--model_name_or_path", str(model_dir), "--train_data", *map(str, files),
        "--train_group_size", str(BATCH["group"]), "--query_max_len", str(BATCH["query_len"]),
        "--passage_max_len", str(BATCH["passage_len"]), "--pad_to_multiple_of", "8",
        "--same_dataset_within_batch", "True", "--small_threshold", "0", "--drop_threshold", "0",
        "--knowledge_distillation", "False", "--output_dir", str(out / "run"), "--overwrite_output_dir",
        "--learning_rate", str(BATCH["lr"]), "--num_train_epochs", "1", "--max_steps", str(args.steps),
        "--per_device_train_batch_size", str(BATCH["queries"]), "--dataloader_drop_last", "True",
        "--warmup_ratio", "0.1", "--logging_steps", "1", "--save_strategy", "no", "--temperature", "0.02",
        "--sentence_pooling_method", "cls", "--normalize_embeddings", "True", "--kd_loss_type", "m3_kd_loss",
        "--unified_finetuning", "True", "--use_self_distill", "True", "--self_distill_start_step", "0",
        "--use_cpu", "True", "--report_to", "none", "--seed", str(args.seed), "--dataloader_num_workers", "0",
    ]
    cmd = [str(python), str(ROOT / "benchmarks" / "flagembedding_driver.py"), str(result),
           "--warmup", str(args.warmup), "--threads", str(args.threads), "--", *flag_args]
    measured = run_measured(cmd, thread_env(args.threads), out, out / "log.txt")
    steps = json.loads(result.read_text())
    return {**measured, "step_s": steps["step_s"], "real_tokens": steps["real_tokens"],
            "computed_tokens": steps["computed_tokens"], "matmul": "fp32"}  # FlagEmbedding trains in fp32


def m3lit_command(args, model_dir: Path, files: list[Path], run_dir: Path) -> list[str]:
    script = shutil.which("m3lit-train", path=os.path.dirname(sys.executable)) or "m3lit-train"
    return [
        script, "model=pretrained", f"model.path={model_dir}", "data=default",
        "data.train=[" + ",".join(map(str, files)) + "]", f"data.batch_size={BATCH['queries']}",
        f"data.group_size={BATCH['group']}", f"data.query_max_len={BATCH['query_len']}",
        f"data.passage_max_len={BATCH['passage_len']}", "data.bucket_boundaries=[0,64,128,192,256]",
        f"optim.lr={BATCH['lr']}", f"trainer.max_steps={args.steps}", "trainer.log_every_n_steps=1",
        "callbacks=none", "logger=csv", "checkpoint=none", "export_dir=null", f"seed={args.seed}",
        f"hydra.run.dir={run_dir}", *args.m3lit_override,
    ]


def read_m3lit_steps(run_dir: Path, warmup: int) -> dict:
    """Per-step ``perf/step_s``, ``batch/real_tokens``, ``batch/computed_tokens`` from the CSV logger."""
    import csv

    files = sorted(glob.glob(str(run_dir / "**" / "metrics.csv"), recursive=True))
    if not files:
        raise RuntimeError(f"no metrics.csv under {run_dir}")
    by_step: dict[int, dict] = {}
    with open(files[-1]) as f:
        for row in csv.DictReader(f):
            values = by_step.setdefault(int(row["step"]), {})
            values.update({k: float(v) for k, v in row.items() if v not in ("", None) and k != "step"})
    steps = [by_step[s] for s in sorted(by_step) if "perf/step_s" in by_step[s]]
    steps = steps[warmup:]
    return {"step_s": [s["perf/step_s"] for s in steps], "real_tokens": [s["batch/real_tokens"] for s in steps],
            "computed_tokens": [s["batch/computed_tokens"] for s in steps]}


def run_m3lit(args, model_dir: Path, files: list[Path]) -> dict:
    out = args.workdir / "m3lit"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    run_dir = out / "run"
    measured = run_measured(m3lit_command(args, model_dir, files, run_dir), thread_env(args.threads), out,
                            out / "log.txt")
    text = (out / "log.txt").read_text(errors="replace")
    chosen = re.search(r"trainer\.precision=auto: (\S+)", text)
    if chosen:
        print(f"m3lit: trainer.precision=auto chose {chosen.group(1)}")
    allocator = re.search(r"memory allocator: (.+)", text)
    if allocator:
        print(f"m3lit: memory allocator {allocator.group(1)}")
    precision = chosen.group(1) if chosen else next((o.split("=", 1)[1] for o in args.m3lit_override
                                                     if o.startswith("trainer.precision=")), "32-true")
    return {**measured, **read_m3lit_steps(run_dir, args.warmup), "matmul": "bf16" if "bf16" in precision else "fp32"}


# ---------------------------------------------------------------------------------------------------- report
def summarise(name: str, run: dict, flops_per_token: float, rate: float) -> dict:
    seconds = sum(run["step_s"])
    real, computed = sum(run["real_tokens"]), sum(run["computed_tokens"])
    tokens_per_s = real / seconds
    return {"trainer": name, "s_per_step": seconds / len(run["step_s"]), "tokens_per_s": tokens_per_s,
            "padding": 1.0 - real / computed, "peak_rss_gb": run["peak_rss"] / 1e9,
            "model_flops": flops_per_token * tokens_per_s, "mfu": flops_per_token * tokens_per_s / rate,
            "steps_timed": len(run["step_s"]), "matmul": run["matmul"]}


def print_line(s: dict) -> None:
    padding = f"{s['padding']:.1%}"
    print(f"{s['trainer']:<22} {s['s_per_step']:7.2f} s/step  {s['tokens_per_s']:8.0f} real tok/s  "
          f"padding {padding:>7}  peak RSS {s['peak_rss_gb']:5.2f} GB  model {s['model_flops'] / 1e9:6.1f} GFLOP/s "
          f"= {s['mfu']:.0%} of {s['matmul']} matmul")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/m3lit-vs-flagembedding"))
    parser.add_argument("--fe-venv", type=Path, default=Path.home() / ".cache" / "m3lit" / "flagembedding-1.4.2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=13)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--only", choices=("m3lit", "flagembedding"), default=None)
    parser.add_argument("--m3lit-override", nargs="*", default=[],
                        help="extra m3lit-train overrides, e.g. trainer.precision=32-true on a CPU with native bf16 "
                             "(where precision=auto trains in bf16 while FlagEmbedding trains in fp32)")
    args = parser.parse_args()
    if args.steps <= args.warmup:
        parser.error("--steps must exceed --warmup")
    args.workdir.mkdir(parents=True, exist_ok=True)
    files = prepare_data(args.workdir)
    model_dir = prepare_model(args.workdir, files)
    context = attention_context(model_dir, files)
    flops = training_flops_per_token(context)
    rates = matmul_rates(args.threads)
    print(f"model: random XLM-R {MODEL['hidden_size']}×{MODEL['num_hidden_layers']} in {model_dir}; "
          f"{flops / 1e6:.1f} MFLOP per real training token (attention context {context:.0f}); matmul "
          f"fp32 {rates['fp32'] / 1e9:.1f}, bf16 {rates['bf16'] / 1e9:.1f} GFLOP/s on {args.threads} thread(s)",
          flush=True)
    runs = {}
    for name, run in (("flagembedding 1.4.2", run_flagembedding), ("m3lit defaults", run_m3lit)):
        if not args.only or name.startswith(args.only):
            runs[name] = run(args, model_dir, files)
    after = matmul_rates(args.threads)  # probed again: a busy machine lowers a probe, never raises it
    rates = {dtype: max(rates[dtype], after[dtype]) for dtype in rates}
    print(f"matmul after the runs fp32 {after['fp32'] / 1e9:.1f}, bf16 {after['bf16'] / 1e9:.1f} GFLOP/s; the rates "
          f"used: fp32 {rates['fp32'] / 1e9:.1f}, bf16 {rates['bf16'] / 1e9:.1f} "
          "(each trainer against its precision's)")
    summaries = [summarise(name, run, flops, rates[run["matmul"]]) for name, run in runs.items()]
    for summary in summaries:
        print_line(summary)
    if len(summaries) == 2:
        fe, m3 = summaries
        ratios = {"tokens_per_s": m3["tokens_per_s"] / fe["tokens_per_s"],
                  "peak_rss": m3["peak_rss_gb"] / fe["peak_rss_gb"]}
        print(f"m3lit / flagembedding: real tok/s {ratios['tokens_per_s']:.2f}× (target ≥ {TARGETS['tokens_per_s']}×: "
              f"{'met' if ratios['tokens_per_s'] >= TARGETS['tokens_per_s'] else 'not met'}), peak RSS "
              f"{ratios['peak_rss']:.2f}× (target ≤ {TARGETS['peak_rss']}: "
              f"{'met' if ratios['peak_rss'] <= TARGETS['peak_rss'] else 'not met'}), m3lit model FLOP/s "
              f"{m3['mfu']:.0%} of matmul (target ≥ {TARGETS['mfu']:.0%}: "
              f"{'met' if m3['mfu'] >= TARGETS['mfu'] else 'not met'})")
    (args.workdir / "result.json").write_text(json.dumps({"summaries": summaries, "matmul_flops": rates,
                                                          "flops_per_token": flops, "threads": args.threads}, indent=1))


if __name__ == "__main__":
    main()
