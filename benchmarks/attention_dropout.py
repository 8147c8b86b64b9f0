"""Packed attention with dropout on CPU: SDPA's math path against the written-out attention of ``fast_dropout``.

    .venv/bin/python benchmarks/attention_dropout.py [--texts 56] [--threads 1] [--repeats 5]

One packed row of ``--texts`` texts of 20–256 tokens (6 heads × 64, as the small model and the FlagEmbedding
comparison), attention dropout 0.1, through ``varlen_sdpa_forward`` as a training step calls it: the forward, and
a backward pass that recomputes each attention call (``_attention``). Printed per dtype (float32, and bf16 under
bf16 autocast) and path: milliseconds per forward + backward (median of ``--repeats`` after one warm-up) and the
bytes the autograd graph saves (the same on both paths: q, k, v and the packed inputs).
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time
import types

import torch

from m3lit.scale.fast_dropout import FastDropout
from m3lit.scale.varlen_attention import varlen_sdpa_forward

HEADS, HEAD_DIM, DROPOUT = 6, 64, 0.1


def packed_row(texts: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(20, 257, (texts,), generator=g).tolist()
    total = sum(lengths)
    q, k, v = (torch.randn(1, HEADS, total, HEAD_DIM, generator=g).to(dtype).requires_grad_() for _ in range(3))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return q, k, v, cu


def step(module, q, k, v, cu, autocast: bool) -> int:
    """One forward + backward; returns the bytes saved for the backward pass."""
    saved = []
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with amp, torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel() * t.element_size()) or t,
                                                       lambda t: t):
        out = varlen_sdpa_forward(module, q, k, v, None, dropout=DROPOUT, cu_seq_lens_q=cu)[0]
    out.float().sum().backward()
    return sum(saved)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=56)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    paths = {"SDPA (stock dropout)": torch.nn.Dropout(DROPOUT), "written out (FastDropout)": FastDropout(DROPOUT)}
    for dtype, autocast in ((torch.float32, False), (torch.bfloat16, True)):
        q, k, v, cu = packed_row(args.texts, dtype)
        times = {}
        for name, dropout in paths.items():
            module = types.SimpleNamespace(dropout=dropout)
            step(module, q, k, v, cu, autocast)  # warm-up
            seconds = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                saved = step(module, q, k, v, cu, autocast)
                seconds.append(time.perf_counter() - start)
            times[name] = statistics.median(seconds)
            print(f"{str(dtype).removeprefix('torch.'):>9}  {name:<26} {times[name] * 1000:7.0f} ms per forward + "
                  f"backward  saved {saved / 1e6:6.1f} MB  ({int(cu[-1])} tokens, {args.texts} texts)")
        stock, fast = times.values()
        print(f"{'':>9}  written out / SDPA: {stock / fast:.2f}× faster")


if __name__ == "__main__":
    main()
