"""GPU check (one CUDA device): correctness on the device, then the largest batch of 8192-token passages per
device for plain / split_batch / grad_cache with an XLM-R-large-sized encoder (24 layers, hidden 1024, vocab
250002, random weights) in bf16 autocast, with SDPA and with flash-attn when installed; tokens/s and MFU.

    python benchmarks/scale_gpu.py [--budget-s 420] [--out DIR]      (run through benchmarks/gpu_check.sh)

Checks (exit 1 when one fails):
  rng        grad_cache and split_batch on CUDA with dropout: loss and gradients equal plain training over the
             same sub-batches (the CUDA RNG state is replayed on re-encoding), tiny model, float32;
  flash      (flash-attn installed) packed/varlen and padded flash_attention_2 outputs equal SDPA's (bf16);
  finite     every measured training step has a finite loss.
Targets (exit 2 when missed; the M3 paper's Table 10): split_batch fits >= 130 passages of 8192 tokens on an
80 GB device, grad_cache >= 260 (twice that). Batches on a device of another size are scaled to 80 GB. Only a
batch that ran (``verified_batch``) counts: the linear fit's prediction is printed, never passed.
Method: a training step (queries of 64 tokens, passages of 8192 tokens, one passage per query, all heads,
self-distillation, AdamW) is run at two small batch sizes; peak memory (torch.cuda.max_memory_allocated) is
fitted as a + b·B and the largest batch predicted for 94% of the device; one step at min(prediction, cap)
verifies it (backing off 15% on OOM) and gives tokens/s and MFU (model FLOPs: 6·params·tokens + 12·layers·L²·d
per sequence, recomputation not counted; peak bf16 dense FLOP/s from the device name or $PEAK_TFLOPS).
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import math
import os
import sys
import time
import traceback

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "scripts"))

LARGE = dict(model_type="xlm-roberta", hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
             intermediate_size=4096, max_position_embeddings=8194, vocab_size=250002, type_vocab_size=1,
             hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, layer_norm_eps=1e-5)
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "GH200": 989.0, "A100": 312.0, "A800": 312.0,
               "L40S": 362.0, "B200": 2250.0}
QUERY_LEN = 64
MODES = {  # encoding options; layer checkpointing on for the two memory modes
    "plain": dict(encoding={"mode": "plain"}, layer_ckpt=False, probe=(1, 2), cap=64),
    "split_batch": dict(encoding={"mode": "split_batch", "sub_batch_size": 4}, layer_ckpt=True, probe=(8, 16),
                        cap=160, goal=130),
    "grad_cache": dict(encoding={"mode": "grad_cache", "sub_batch_size": 2}, layer_ckpt=True, probe=(8, 16),
                       cap=320, goal=260),
}  # cap: the largest verification batch, raised on a GPU to the goal scaled to the device (+5 %)
RESULTS: dict = {"checks": {}, "runs": [], "targets": {}}


class Device:
    """CUDA (the real check) or, with --smoke-cpu, the CPU with a tiny model: exercises every code path
    (memory figures are then the process RSS, meaningless as capacities)."""

    def __init__(self, smoke: bool):
        self.smoke = smoke
        self.type = "cpu" if smoke else "cuda"

    def sync(self) -> None:
        if not self.smoke:
            torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if not self.smoke:
            torch.cuda.reset_peak_memory_stats()

    def peak_gb(self) -> float:
        if self.smoke:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30
        return torch.cuda.max_memory_allocated() / 2**30

    def total_gb(self) -> float:
        return 4.0 if self.smoke else torch.cuda.mem_get_info()[1] / 2**30

    def name(self) -> str:
        return "cpu (smoke run)" if self.smoke else torch.cuda.get_device_name()


DEV = Device(smoke=False)


def log(msg: str) -> None:
    print(msg, flush=True)


def free() -> None:
    gc.collect()
    if not DEV.smoke:
        torch.cuda.empty_cache()
    DEV.reset_peak()


# ------------------------------------------------------------------ correctness checks
def check_rng_replay() -> bool:
    from scale_common import grads, max_grad_diff, random_batch, tiny_module

    from m3lit.scale.split_batch import cat_reps, row_slices

    def on_cuda(batch):
        return {k: ({kk: vv.to(DEV.type) for kk, vv in v.items()} if isinstance(v, dict) and k != "meta" else v)
                for k, v in batch.items()}

    batch = on_cuda(random_batch(queries=4, group=2, q_len=16, p_len=32, seed=1))

    def run(module):
        module.to(DEV.type).zero_grad(set_to_none=True)
        torch.manual_seed(5)
        out = module.forward_loss(batch)
        out.loss.backward()
        return float(out.loss), grads(module)

    ref_module = tiny_module(dropout=0.2, hidden=32)

    def chunked(features):
        ids, mask = features["input_ids"], features["attention_mask"]
        return cat_reps([ref_module.model(ids[s], mask[s]) for s in row_slices(ids.shape[0], 3)])

    ref_module.encode = chunked
    ref_loss, ref = run(ref_module)
    ok = True
    for mode in ("grad_cache", "split_batch"):
        loss, got = run(tiny_module(dropout=0.2, hidden=32, encoding={"mode": mode, "sub_batch_size": 3}))
        worst, name = max_grad_diff(ref, got)
        passed = abs(loss - ref_loss) < 1e-4 and worst < 1e-4
        ok &= passed
        RESULTS["checks"][f"rng_{mode}"] = {"loss_diff": abs(loss - ref_loss), "max_grad_diff": worst,
                                           "passed": passed}
        log(f"check rng replay ({mode}): loss diff {abs(loss - ref_loss):.2e}, max grad diff {worst:.2e} "
            f"({name}) -> {'PASS' if passed else 'FAIL'}")
    return ok


def check_flash() -> bool:
    from scale_common import ragged, tiny_module

    from m3lit.scale.packing import encode_rows

    features = ragged(8, 200, torch.Generator().manual_seed(2))
    ids, mask = features["input_ids"].cuda(), features["attention_mask"].cuda()
    outs = {}
    for attn in ("sdpa", "flash_attention_2"):
        module = tiny_module(attn=attn, hidden=64).to("cuda", torch.bfloat16).eval()  # same seed: same weights
        with torch.no_grad():
            outs[attn] = module.model(ids, mask)
            if attn == "flash_attention_2":
                outs["varlen"] = encode_rows(module.model, ids, mask, packing=True)
    ok = True
    for name in ("flash_attention_2", "varlen"):
        worst = max(float((getattr(outs[name], f).float() - getattr(outs["sdpa"], f).float()).abs().max())
                    for f in ("dense", "sparse", "colbert"))
        passed = worst < 5e-2
        ok &= passed
        RESULTS["checks"][f"flash_{name}"] = {"max_diff_vs_sdpa": worst, "passed": passed}
        log(f"check {name} vs sdpa (bf16): max diff {worst:.3e} -> {'PASS' if passed else 'FAIL'}")
    return ok


# ------------------------------------------------------------------ memory / throughput sweep
def build(attn: str, mode: str):
    from m3lit.inference.embedder import load_tokenizer
    from m3lit.loss import M3Loss
    from m3lit.model import build_m3_model
    from m3lit.module import M3LightningModule

    tok = load_tokenizer(os.path.join(ROOT, "tests", "fixtures", "tiny_m3"))
    spec = MODES[mode]
    torch.manual_seed(0)
    config = dict(LARGE, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                  vocab_size=1000) if DEV.smoke else LARGE
    with torch.device(DEV.type):  # initialise the 560M random weights on the GPU (seconds, not a minute on CPU)
        model = build_m3_model(tok, encoder_config=config, attn_implementation=attn,
                               gradient_checkpointing=spec["layer_ckpt"])
    module = M3LightningModule(model, M3Loss(), tok, encoding=spec["encoding"]).to(DEV.type).train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-5, fused=not DEV.smoke)
    return module, optimizer


def make_batch(batch: int, length: int, vocab: int) -> dict:
    def texts(n: int, tokens: int) -> dict:
        ids = torch.randint(4, vocab - 1, (n, tokens), device=DEV.type)
        ids[:, 0], ids[:, -1] = 0, 2
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    return {"queries": texts(batch, QUERY_LEN), "passages": texts(batch, length), "teacher_scores": None,
            "no_in_batch_neg": False, "meta": {}}


def step(module, optimizer, batch: dict) -> tuple[float, float, float]:
    """One training step: (loss, seconds, peak GB)."""
    DEV.sync()
    DEV.reset_peak()
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(DEV.type, dtype=torch.bfloat16):
        loss = module.forward_loss(batch).loss
    loss.backward()
    optimizer.step()
    DEV.sync()
    return float(loss), time.perf_counter() - start, DEV.peak_gb()


def model_flops(module, batch: int, length: int) -> float:
    cfg = module.model.encoder.config
    dense_params = sum(p.numel() for n, p in module.model.named_parameters()
                       if p.ndim == 2 and "embeddings" not in n)
    tokens = batch * (length + QUERY_LEN)
    attention = 12 * cfg.num_hidden_layers * cfg.hidden_size * batch * (length ** 2 + QUERY_LEN ** 2)
    return 6 * dense_params * tokens + attention


def peak_flops() -> float | None:
    if os.environ.get("PEAK_TFLOPS"):
        return float(os.environ["PEAK_TFLOPS"]) * 1e12
    name = DEV.name()
    for key, tflops in PEAK_TFLOPS.items():
        if key in name:
            return tflops * 1e12
    return None


def measure(attn: str, mode: str, length: int, deadline: float) -> dict:
    spec = MODES[mode]
    module, optimizer = build(attn, mode)
    vocab = module.model.encoder.config.vocab_size
    total_gb = DEV.total_gb()
    usable = 0.94 * total_gb
    b1, b2 = spec["probe"]
    out: dict = {"attn": attn, "mode": mode, "length": length}
    losses = []
    try:
        losses.append(step(module, optimizer, make_batch(b1, length, vocab))[0])  # warm-up, optimizer states
        (l1, _, p1), (l2, t2, p2) = (step(module, optimizer, make_batch(b, length, vocab)) for b in (b1, b2))
        losses += [l1, l2]
    except torch.OutOfMemoryError:
        out.update(error=f"out of memory at the probe batches {b1}/{b2}")
        return out
    slope = max((p2 - p1) / (b2 - b1), 1e-6)
    predicted = int((usable - (p1 - slope * b1)) // slope)
    out.update(probe=[[b1, round(p1, 2)], [b2, round(p2, 2)]], gb_per_sequence=round(slope, 3),
               predicted_max=predicted, device_gb=round(total_gb, 1))
    cap = spec["cap"] if DEV.smoke else max(spec["cap"], math.ceil(spec.get("goal", 0) * total_gb / 80 * 1.05))
    target = max(b2, min(predicted, cap))
    seconds_per_sequence = t2 / b2
    affordable = int((deadline - time.perf_counter()) / (1.2 * seconds_per_sequence))
    if affordable < target:  # a verification step that would overrun the time budget is made smaller
        out["time_limited"] = True
        target = max(b2, affordable)
    for _ in range(4):
        if time.perf_counter() > deadline:
            out["note"] = "time budget reached before the verification step"
            break
        try:
            free()
            loss, seconds, peak = step(module, optimizer, make_batch(target, length, vocab))
        except torch.OutOfMemoryError:
            out.setdefault("oom_at", []).append(target)
            target = max(b2, int(target * 0.85))
            continue
        losses.append(loss)
        tokens = target * (length + QUERY_LEN)
        flops, peak_dev = model_flops(module, target, length), peak_flops()
        out.update(verified_batch=target, peak_gb=round(peak, 2), seconds=round(seconds, 2),
                   tokens_per_s=round(tokens / seconds), capped=target == cap and predicted > cap,
                   mfu=None if peak_dev is None else round(flops / seconds / peak_dev, 3))
        break
    out["finite"] = all(math.isfinite(x) for x in losses)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=8192)
    parser.add_argument("--budget-s", type=float, default=420.0, help="stop starting new measurements after this")
    parser.add_argument("--modes", nargs="+", default=list(MODES))
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--smoke-cpu", action="store_true", help="tiny model on CPU: a dry run of the code paths")
    args = parser.parse_args()
    global DEV
    DEV = Device(args.smoke_cpu)
    start = time.perf_counter()
    deadline = start + args.budget_s
    if not DEV.smoke and not torch.cuda.is_available():
        log("FAIL: no CUDA device")
        return 1
    if DEV.smoke:
        MODES["plain"]["cap"], MODES["split_batch"]["cap"], MODES["grad_cache"]["cap"] = 4, 24, 32
    total = DEV.total_gb()
    log(f"device: {DEV.name()}, {total:.1f} GiB, torch {torch.__version__}, peak bf16 {peak_flops()} FLOP/s")
    flash = importlib.util.find_spec("flash_attn") is not None and not DEV.smoke
    failed = False
    for name, check in (("rng", check_rng_replay), ("flash", check_flash if flash else None)):
        if check is None:
            log(f"check {name}: skipped (flash-attn not installed)")
            continue
        try:
            failed |= not check()
        except Exception:  # a crash is a failed check; go on with the others
            traceback.print_exc()
            RESULTS["checks"][name] = {"passed": False, "error": traceback.format_exc(limit=3)}
            failed = True
        free()
    attns = ["sdpa"] + (["flash_attention_2"] if flash else [])
    for mode in args.modes:  # mode-major: if time runs out, the last mode loses a variant, not a whole backend
        for attn in attns:
            if time.perf_counter() > deadline:
                log(f"skip {attn}/{mode}: time budget ({args.budget_s:.0f} s) spent")
                RESULTS["runs"].append({"attn": attn, "mode": mode, "skipped": "time budget"})
                continue
            try:
                r = measure(attn, mode, args.length, deadline)
            except Exception:
                traceback.print_exc()
                r = {"attn": attn, "mode": mode, "error": traceback.format_exc(limit=3)}
            RESULTS["runs"].append(r)
            failed |= r.get("finite") is False or "error" in r
            log(json.dumps(r))
            free()
    log(f"\n{'attn':18s} {'mode':12s} {'max batch':>10s} {'verified':>9s} {'GB/seq':>7s} {'tokens/s':>9s} {'MFU':>6s}")
    best: dict = {}
    for r in RESULTS["runs"]:
        if "predicted_max" not in r:
            log(f"{r['attn']:18s} {r['mode']:12s} {r.get('error') or r.get('skipped')}")
            continue
        verified = r.get("verified_batch")
        log(f"{r['attn']:18s} {r['mode']:12s} {r['predicted_max']:10d} {str(verified):>9s} "
            f"{r['gb_per_sequence']:7.3f} {r.get('tokens_per_s', 0):9d} {r.get('mfu') or 0:6.3f}")
        if verified:  # what ran, never the extrapolation (predicted_max is printed beside it)
            best[r["mode"]] = max(best.get(r["mode"], 0), verified)
    scale = 80.0 / total  # targets are per 80 GB device
    split_fit = best.get("split_batch", 0) * scale
    cache_fit = best.get("grad_cache", 0) * scale
    RESULTS["targets"] = {"split_batch_per_80GB": split_fit, "grad_cache_per_80GB": cache_fit,
                          "split_batch_ge_130": split_fit >= 130, "grad_cache_ge_260": cache_fit >= 260}
    log(f"target split_batch >= 130 sequences of {args.length} tokens per 80 GB: {split_fit:.0f} -> "
        f"{'PASS' if split_fit >= 130 else 'MISS'}")
    log(f"target grad_cache >= 260 (twice 130): {cache_fit:.0f} -> {'PASS' if cache_fit >= 260 else 'MISS'}")
    log(f"total {time.perf_counter() - start:.0f} s")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
        json.dump(RESULTS, f, indent=2)
    if failed:
        log("RESULT: FAIL (a correctness check failed or a run crashed)")
        return 1
    if not (RESULTS["targets"]["split_batch_ge_130"] and RESULTS["targets"]["grad_cache_ge_260"]):
        log("RESULT: checks passed, memory target missed")
        return 2
    log("RESULT: PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
