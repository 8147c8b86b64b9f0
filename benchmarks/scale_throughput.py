"""Training throughput (real tokens/s) on CPU, small model (hidden 384, 6 layers): padded vs bucketed vs packed.

    .venv/bin/python benchmarks/scale_throughput.py [--data ../shared/data/debdesc/train] [--examples 48]

The same examples (queries with 1 positive + 1 hard negative, from FlagEmbedding-format jsonl files of several
languages; passages cut at ``--passage-max-len`` tokens) are trained on once per batching scheme, a full
training step each batch (encode, M3 loss over all three heads, backward, AdamW):
  padded           random batches, padded to the batch's longest text (dynamic padding);
  bucketed         batches of texts of similar length (examples sorted by length, then batched);
  packed           the random batches, unpadded (packed rows, block-diagonal attention on SDPA);
  bucketed+packed  both.
Printed per scheme: real tokens/s, padding fraction of the padded tensors, seconds (sum over batches of each
batch's fastest step over ``--rounds`` interleaved rounds, after one untimed warm-up step).
"""
from __future__ import annotations

import argparse
import glob
import gzip
import json
import os
import random
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SMALL = dict(model_type="xlm-roberta", hidden_size=384, num_hidden_layers=6, num_attention_heads=6,
             intermediate_size=1536, max_position_embeddings=8194, type_vocab_size=1, hidden_dropout_prob=0.1,
             attention_probs_dropout_prob=0.1, layer_norm_eps=1e-5)


def read_examples(folder: str, n: int, seed: int) -> list[tuple[str, str, str]]:
    """(query, positive, negative) triples, round-robin over the folder's files (languages)."""
    per_file = []
    for path in sorted(glob.glob(os.path.join(folder, "*.jsonl*"))):
        opener = gzip.open if path.endswith(".gz") else open
        rows = []
        with opener(path, "rt", encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                try:
                    rec = json.loads(line)
                    rows.append((rec["query"], rec["pos"][0], rec["neg"][0]))
                except (json.JSONDecodeError, KeyError, IndexError) as err:
                    raise ValueError(f"{path}:{line_no}: not a query/pos/neg line ({err})") from None
                if len(rows) >= n:
                    break
        per_file.append(rows)
    if not per_file:
        raise FileNotFoundError(f"{folder}: no *.jsonl / *.jsonl.gz files")
    out = [rows[i] for i in range(n) for rows in per_file if i < len(rows)][:n]
    random.Random(seed).shuffle(out)
    return out


def tokenize(tok, texts: list[str], max_len: int) -> dict[str, torch.Tensor]:
    enc = tok(texts, padding="longest", truncation=True, max_length=max_len, pad_to_multiple_of=8,
              return_tensors="pt", return_token_type_ids=False)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def make_batch(tok, examples, q_len: int, p_len: int) -> dict:
    passages = [t for _, pos, neg in examples for t in (pos, neg)]
    return {"queries": tokenize(tok, [q for q, _, _ in examples], q_len), "passages": tokenize(tok, passages, p_len),
            "teacher_scores": None, "no_in_batch_neg": False, "meta": {}}


class Scheme:
    """One batching scheme: its batches and its own model (same initial weights for every scheme)."""

    def __init__(self, name: str, batches: list[dict], packing: bool, seed: int):
        from m3lit.loss import M3Loss
        from m3lit.model import build_m3_model
        from m3lit.module import M3LightningModule

        torch.manual_seed(seed)
        model = build_m3_model(TOKENIZER, encoder_config=SMALL)
        self.name, self.batches = name, batches
        self.module = M3LightningModule(model, M3Loss(), TOKENIZER, encoding={"mode": "plain", "packing": packing})
        self.module.train()
        self.optimizer = torch.optim.AdamW(self.module.parameters(), lr=1e-5)
        self.best = [float("inf")] * len(batches)

    def step(self, batch: dict) -> float:
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        self.module.forward_loss(batch).loss.backward()
        self.optimizer.step()
        return time.perf_counter() - start

    def result(self) -> dict:
        real = sum(int(b[s]["attention_mask"].sum()) for b in self.batches for s in ("queries", "passages"))
        padded = sum(b[s]["attention_mask"].numel() for b in self.batches for s in ("queries", "passages"))
        seconds = sum(self.best)
        return {"scheme": self.name, "tokens_per_s": real / seconds, "padding": 1 - real / padded,
                "seconds": seconds, "real_tokens": real}


def main() -> None:
    global TOKENIZER
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "debdesc", "train"))
    parser.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the embedded one)")
    parser.add_argument("--examples", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=4, help="queries per batch (passages: 2 per query)")
    parser.add_argument("--query-max-len", type=int, default=64)
    parser.add_argument("--passage-max-len", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=2, help="passes over the batches; each batch's best time counts")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from m3lit.inference.embedder import load_tokenizer

    if args.tokenizer is None:
        from m3lit.cli.resolvers import default_assets_path

        args.tokenizer = default_assets_path("tokenizer_dir")
    TOKENIZER = load_tokenizer(args.tokenizer)
    examples = read_examples(args.data, args.examples, args.seed)
    b = args.batch_size
    random_batches = [make_batch(TOKENIZER, examples[i:i + b], args.query_max_len, args.passage_max_len)
                      for i in range(0, len(examples), b)]

    def length(ex):
        return max(len(TOKENIZER(t, truncation=True, max_length=args.passage_max_len)["input_ids"]) for t in ex[1:])

    by_length = sorted(examples, key=length)
    bucketed = [make_batch(TOKENIZER, by_length[i:i + b], args.query_max_len, args.passage_max_len)
                for i in range(0, len(by_length), b)]
    schemes = [Scheme("padded", random_batches, False, args.seed), Scheme("bucketed", bucketed, False, args.seed),
               Scheme("packed", random_batches, True, args.seed),
               Scheme("bucketed+packed", bucketed, True, args.seed)]
    for scheme in schemes:
        scheme.step(random_batches[0])  # warm-up, untimed
    # batch i of every scheme runs back to back (load on the machine hits all schemes alike); best time per batch
    for _ in range(args.rounds):
        for i in range(len(random_batches)):
            for scheme in schemes:
                scheme.best[i] = min(scheme.best[i], scheme.step(scheme.batches[i]))
    results = [s.result() for s in schemes]
    print(f"small model (hidden 384, 6 layers), {len(examples)} examples from {os.path.normpath(args.data)}, "
          f"{b} queries + {2 * b} passages a batch, passages <= {args.passage_max_len} tokens, "
          f"{args.threads} threads, best of {args.rounds} rounds per batch")
    base = results[0]["tokens_per_s"]
    for r in results:
        print(f"{r['scheme']:16s} {r['tokens_per_s']:8.0f} real tokens/s  ({r['tokens_per_s'] / base:4.2f}x)  "
              f"padding {100 * r['padding']:5.1f}%  {r['seconds']:6.1f} s for {r['real_tokens']} tokens")


TOKENIZER = None

if __name__ == "__main__":
    main()
