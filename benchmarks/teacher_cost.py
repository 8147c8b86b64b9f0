"""What each self-distillation teacher costs: training step time and memory, small model on CPU.

    .venv/bin/python benchmarks/teacher_cost.py [--steps 6] [--threads 2]

One LightningModule per teacher (hidden 384, 6 layers, dropout 0.1, all heads; the same random batch of 8 queries
× group 4, queries 32 / passages 90 tokens), a full training step each (forward, the teacher's extra scoring,
M3 loss, backward, AdamW). Printed per teacher: median step seconds over ``--steps`` timed steps after one
warm-up, the ratio to ``weighted`` (the M3 ensemble, no extra pass), and the teacher's extra weights (the EMA
copy, the snapshot, a layer's own heads) in MiB. Peak memory differences on CPU are small next to the
allocator's noise; a copy's weights are the memory a teacher adds that does not depend on the batch. The
snapshot's steps after the warm-up find every line in its cache (a line not seen since the last snapshot costs
what ``ema`` does). Step times on a shared 2-core machine vary by ±20 % between runs: compare within one run.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "scripts"))

TEACHERS = {
    "weighted": dict(),
    "ema": dict(ema=True),
    "views token_drop (symmetric)": dict(views={"view": "token_drop", "rate": 0.1}),
    "views mask (one way)": dict(views={"view": "mask", "rate": 0.15, "direction": "one_way"}),
    "views dropout (symmetric)": dict(views={"view": "dropout"}),
    "snapshot (lines seen before)": dict(snapshot=True),
    "layerwise (layer 3, own heads)": dict(layerwise={"layers": [3], "shared_heads": False}),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from scale_common import random_batch, tiny_module

    batch = random_batch(queries=8, group=4, q_len=32, p_len=90, seed=0)
    batch["meta"] = {"dataset": "random", "rows": list(range(8))}  # lines a snapshot can cache
    base = None
    print(f"{'teacher':30s} {'s/step':>8s} {'× weighted':>11s} {'extra MiB':>10s}")
    for name, options in TEACHERS.items():
        module = tiny_module(dropout=0.1, hidden=384, layers=6, learned_teacher=False, **options)
        module.train()
        optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-5)
        times = []
        for i in range(args.steps + 1):
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            module.forward_loss(batch).loss.backward()
            optimizer.step()
            if module.ema is not None:
                module.ema.update(module.model, i + 1)
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times[1:])
        base = base or seconds
        copies = [c for c in (module.ema, module.snapshot) if c is not None]
        extra = sum(c.memory_bytes() for c in copies) / 2 ** 20
        extra += sum(p.numel() * p.element_size() for p in module.layer_heads.parameters()) / 2 ** 20
        print(f"{name:30s} {seconds:8.3f} {seconds / base:11.2f} {extra:10.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
