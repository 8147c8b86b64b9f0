"""Benchmark: padding of computed tokens and batches per epoch for three batching schemes on real data.

    .venv/bin/python benchmarks/data_padding.py [--corpus debdesc manlong] [--tokenizer DIR] [--group-size 8]

Schemes (one epoch each, W = A = 1, group size 8 by default, query/passage max length 512/8192, every batch collated
for real by M3DataModule; figures from ``batch["meta"]``):
  random      all files as one dataset, one bucket, 16 queries per batch (languages mixed)
  lang+paper  one dataset/language per batch, the paper's buckets (0/500/1000/2000/…/8192) and batch table
  lang+budget one dataset/language per batch, fine buckets and token budget of conf/data/budget.yaml, no sorting
  budget+sort conf/data/budget.yaml as is: lang+budget + lines of similar length batched together
Columns: padding = pad / computed tokens (queries + passages); passage padding; group floor = the passage padding
if each query's group were padded only to its own longest passage (what a dense [B*G, Lp] layout with groups kept
together cannot avoid); excess = the share of computed passage tokens wasted beyond that floor, i.e. what the
batching scheme controls (= passage padding when group_size = 1); batches per epoch and mean queries per batch.

Speed: the tokenizer is wrapped so that each distinct text is tokenized once per max length and later calls return
ids of the same length (padding figures are unchanged: they depend only on lengths).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import yaml  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from m3lit.data import M3DataModule  # noqa: E402

DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")


class LengthCachingTokenizer:
    """Delegates to ``tokenizer``; ``__call__`` remembers each text's (truncated) token count and returns dummy ids
    of that length (first = cls, last = eos) on repeated calls."""

    def __init__(self, tokenizer):
        self._tok, self._lengths = tokenizer, {}

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def __len__(self):
        return len(self._tok)

    def __call__(self, texts, truncation=False, max_length=None, **kw):
        if isinstance(texts, str):
            return self._tok(texts, truncation=truncation, max_length=max_length, **kw)
        key = (truncation, max_length, kw.get("add_special_tokens", True))
        todo = [t for t in dict.fromkeys(texts) if (key, t) not in self._lengths]
        if todo:
            ids = self._tok(todo, truncation=truncation, max_length=max_length, **kw)["input_ids"]
            self._lengths.update({(key, t): len(x) for t, x in zip(todo, ids)})
        cls, eos, filler = self._tok.cls_token_id, self._tok.eos_token_id, self._tok.unk_token_id
        return {"input_ids": [[cls] + [filler] * (n - 2) + [eos] for t in texts for n in [self._lengths[(key, t)]]]}


def schemes(folder: str) -> dict[str, dict]:
    with open(os.path.join(ROOT, "conf", "data", "budget.yaml")) as f:
        budget = yaml.safe_load(f)
    return {
        "random": dict(train=[{"path": folder, "name": "all", "language": "mixed"}], bucket_boundaries=[0, 8192],
                       batch_size=16),
        "lang+paper": dict(train=folder),
        "lang+budget": dict(train=folder, bucket_boundaries=budget["bucket_boundaries"], batch_size=None,
                            token_budget=budget["token_budget"]),
        "budget+sort": dict(train=folder, bucket_boundaries=budget["bucket_boundaries"], batch_size=None,
                            token_budget=budget["token_budget"], length_sort_pool=budget["length_sort_pool"]),
    }


def measure(dm: M3DataModule) -> dict:
    real = computed = p_real = p_computed = floor_pad = floor_computed = queries = 0
    n = 0
    for batch in dm.train_dataloader():
        m = batch["meta"]
        n += 1
        queries += m["batch_size"]
        real += m["real_tokens"]
        computed += m["padded_tokens"]
        mask = batch["passages"]["attention_mask"]
        lengths = mask.sum(1).reshape(m["batch_size"], m["group_size"])
        p_real += int(lengths.sum())
        p_computed += mask.numel()
        floor_pad += int((lengths.max(1, keepdim=True).values - lengths).sum())
        floor_computed += int(lengths.max(1).values.sum()) * m["group_size"]
    return {"batches": n, "queries/batch": queries / n, "padding": 1 - real / computed,
            "passage padding": 1 - p_real / p_computed, "group floor": floor_pad / floor_computed,
            "excess": 1 - floor_computed / p_computed}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", nargs="+", default=["debdesc", "manlong"])
    ap.add_argument("--tokenizer", default=os.path.join(ROOT, "tests", "fixtures", "tiny_m3"))
    ap.add_argument("--length-estimate", default="auto", choices=["auto", "sample", "exact"])
    ap.add_argument("--group-size", type=int, default=8)
    args = ap.parse_args()
    tokenizer = LengthCachingTokenizer(AutoTokenizer.from_pretrained(args.tokenizer))
    cache = tempfile.mkdtemp(prefix="m3lit-bench-")
    print(f"tokenizer: {args.tokenizer} (vocab {len(tokenizer)}); length_estimate={args.length_estimate}; "
          f"group_size={args.group_size}")
    header = f"{'corpus':8} {'scheme':12} {'batches':>8} {'q/batch':>8} {'padding':>8} {'psg pad':>8} {'floor':>8} {'excess':>8} {'time':>6}"
    print(header)
    for corpus in args.corpus:
        folder = os.path.join(DATA, corpus, "train")
        for name, kw in schemes(folder).items():
            t = time.time()
            dm = M3DataModule(tokenizer=tokenizer, seed=0, cache_dir=cache, length_estimate=args.length_estimate,
                              group_size=args.group_size, **kw)
            dm.setup("fit")
            r = measure(dm)
            print(f"{corpus:8} {name:12} {r['batches']:8d} {r['queries/batch']:8.1f} {r['padding']:8.1%} "
                  f"{r['passage padding']:8.1%} {r['group floor']:8.1%} {r['excess']:8.1%} {time.time() - t:5.0f}s", flush=True)


if __name__ == "__main__":
    main()
