"""Peak CPU memory of one training step vs batch size, for plain / split_batch / grad_cache encoding.

    .venv/bin/python benchmarks/scale_memory.py [--batches 16 32 64 128 256 512] [--length 32] [--group 2]

Each (mode, batch) runs in a fresh process (the peak RSS high-water mark never goes down): build a tiny random
M3 model (hidden 64, 2 layers, all three heads, self-distillation), a batch of B queries and B×G passages of
``--length`` tokens, then one forward + backward. Printed: peak RSS during the step minus RSS just before it
(activation + scoring memory), and the absolute peak RSS of the process (interpreter, torch, model, optimizer-free).
Children run with MALLOC_MMAP_THRESHOLD_=65536 so that RSS follows the memory actually in use.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# glibc otherwise serves large blocks from its heap after the first free and keeps them resident, so RSS would
# measure allocator fragmentation; a fixed mmap threshold returns every freed block >= 64 KB to the system at once.
CHILD_ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one(mode: str, batch: int, length: int, group: int, sub: int, heads: str) -> dict:
    sys.path.insert(0, ROOT)
    sys.path.insert(0, os.path.join(ROOT, "tests", "scripts"))
    import torch
    from scale_common import random_batch, tiny_module

    torch.set_num_threads(1)
    encoding = {"mode": mode, "sub_batch_size": sub}
    module = tiny_module(dropout=0.1, hidden=64, layers=2, heads=tuple(heads.split(",")), encoding=encoding)
    data = random_batch(queries=batch, group=group, q_len=length, p_len=length, seed=0)
    for side in ("queries", "passages"):  # fixed length: no padding
        data[side]["attention_mask"].fill_(1)
    base = rss_mb()
    start = time.perf_counter()
    module.forward_loss(data).loss.backward()
    seconds = time.perf_counter() - start
    return {"mode": mode, "batch": batch, "step_peak_mb": peak_mb() - base, "process_peak_mb": peak_mb(),
            "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 32, 64, 128, 256, 512])
    parser.add_argument("--modes", nargs="+", default=["plain", "split_batch", "grad_cache"])
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--group", type=int, default=2)
    parser.add_argument("--sub-batch", type=int, default=16, help="rows per sub-batch (split_batch, grad_cache)")
    parser.add_argument("--heads", default="dense,sparse,colbert")
    parser.add_argument("--one", nargs=2, metavar=("MODE", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args.length, args.group, args.sub_batch, args.heads)))
        return
    rows = []
    for mode in args.modes:
        for batch in args.batches:
            cmd = [sys.executable, __file__, "--one", mode, str(batch), "--length", str(args.length),
                   "--group", str(args.group), "--sub-batch", str(args.sub_batch), "--heads", args.heads]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=CHILD_ENV)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"{mode:12s} B={batch:4d}  step peak {r['step_peak_mb']:8.1f} MB   process peak "
                  f"{r['process_peak_mb']:8.1f} MB   {r['seconds']:6.2f} s", flush=True)
    print(f"\nlength {args.length}, group {args.group} (B queries + B×{args.group} passages), sub-batch "
          f"{args.sub_batch} rows, heads {args.heads}, tiny model (hidden 64, 2 layers)")
    by = {(r["mode"], r["batch"]): r for r in rows}
    for mode in args.modes:
        if (mode, 32) in by and (mode, max(args.batches)) in by:
            a, b = by[(mode, 32)], by[(mode, max(args.batches))]
            print(f"{mode:12s} growth B=32 -> B={max(args.batches)}: step peak "
                  f"{b['step_peak_mb'] / max(a['step_peak_mb'], 1e-9):5.1f}x, process peak "
                  f"{100 * (b['process_peak_mb'] / a['process_peak_mb'] - 1):+6.1f}%")


if __name__ == "__main__":
    main()
