"""2 ranks (gloo) with cross-device candidates vs 1 process holding the whole global batch.

    python tests/scripts/scale_cross_device.py OUT.json

Each rank gets a disjoint half of a global batch (4 queries, groups of 2, each half padded to its own length),
computes its loss with candidates gathered from both ranks, back-propagates; gradients are averaged over ranks
(what DDP does). Rank 0 compares loss and every parameter's gradient (model + learned teacher weights) with the
single-process full-batch step and writes the worst differences to OUT.json:
  all       every head gathers (loss and gradients must match);
  mixed     dense and sparse gather, colbert scores local candidates only (reference masks the other rank's);
  detached  a FlagEmbedding-style gather without gradient (must NOT match: shows the check can fail);
  lightning a Lightning DDP step (strategy ddp, grad_cache encoding) vs the same reference;
  ddp_skip  nonfinite=skip under DDP with a NaN loss on rank 1 only: both ranks skip that step together.
Dropout is off: two processes cannot draw the masks one process draws for the whole batch.
"""
import json
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(__file__))
from scale_common import free_port, grads, max_grad_diff, quiet, random_batch, rank_slice, shorten, tiny_module  # noqa: E402

WORLD = 2
HEADS = ("dense", "sparse", "colbert")


def step(module, batch):
    module.zero_grad(set_to_none=True)
    out = module.forward_loss(batch)
    out.loss.backward()
    return out.loss.detach(), grads(module)


def averaged(loss, g):
    """Mean over ranks of the loss and of every gradient (DDP's all-reduce)."""
    loss = loss.clone()
    dist.all_reduce(loss)
    out = {}
    for k, v in g.items():
        v = v.clone()
        dist.all_reduce(v)
        out[k] = v / WORLD
    return float(loss) / WORLD, out


def reference(batch, local_heads=(), ema=False, views=None, snapshot=False, layerwise=None, mix=None):
    """One process, whole batch; heads in ``local_heads`` only see candidates from the query's own rank."""
    from m3lit.scale.cross_device import MASKED_SCORE

    module = tiny_module(cross_device=False, ema=ema, views=views, snapshot=snapshot, layerwise=layerwise, mix=mix)
    original = module.compute_scores

    def scores(q, p, no_in_batch_neg):
        s, pos, g = original(q, p, no_in_batch_neg)
        q_rank = torch.arange(q.input_ids.shape[0]) // (q.input_ids.shape[0] // WORLD)
        p_rank = torch.arange(p.input_ids.shape[0]) // (p.input_ids.shape[0] // WORLD)
        other = q_rank[:, None] != p_rank[None, :]
        return {h: v.masked_fill(other, MASKED_SCORE) if h in local_heads else v for h, v in s.items()}, pos, g

    module.compute_scores = scores
    loss, g = step(module, batch)
    return float(loss), g


def detached_gather(p, heads, group=None):
    """Gather without gradient, then put the local tensors back (FlagEmbedding's dense recipe, for every head)."""
    import torch.nn.functional as F

    from m3lit.model.m3 import M3Reps
    from m3lit.scale.gather import gather_candidates

    frozen = M3Reps(p.input_ids, p.attention_mask, *(None if t is None else t.detach()
                                                     for t in (p.dense, p.sparse, p.colbert)), p.colbert_mask)
    c = gather_candidates(frozen, heads, group)
    n = p.input_ids.shape[0]
    for name in ("dense", "sparse", "colbert"):
        full, local = getattr(c.reps, name), getattr(p, name)
        if full is None:
            continue
        if local.dim() > 1 and name != "dense":
            local = F.pad(local, [0, 0] * (local.dim() - 2) + [0, full.shape[1] - local.shape[1]])
        setattr(c.reps, name, torch.cat([full[:c.offset], local, full[c.offset + n:]]))
    return c


def lightning_ddp_skip(rank, local_batch):
    """2 steps; rank 1's first batch has a NaN teacher score (NaN loss there only)."""
    import lightning as L
    from lightning.pytorch.strategies import DDPStrategy

    first = {**local_batch, "teacher_scores": torch.zeros(local_batch["queries"]["input_ids"].shape[0], 2)}
    if rank == 1:
        first["teacher_scores"][0, 0] = float("nan")
    module = tiny_module(lr=1e-2, nonfinite="skip")
    before = [p.detach().clone() for p in module.parameters()]
    trainer = L.Trainer(accelerator="cpu", devices=WORLD, strategy=DDPStrategy(find_unused_parameters=False),
                        max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, use_distributed_sampler=False)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader([first], batch_size=None))
    unchanged = all(torch.equal(a, b) for a, b in zip(before, module.parameters()))
    return {"skipped": module.skipped_steps, "unchanged": unchanged}


def lightning_ddp_grads(local_batch):
    import lightning as L
    from lightning.pytorch.strategies import DDPStrategy

    class Applied(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.grads = grads(module)
            self.loss = float(outputs["loss"])

    module = tiny_module(encoding={"mode": "grad_cache", "sub_batch_size": 1})
    applied = Applied()
    trainer = L.Trainer(accelerator="cpu", devices=WORLD, strategy=DDPStrategy(find_unused_parameters=False),
                        max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, use_distributed_sampler=False, gradient_clip_val=None,
                        callbacks=[applied])
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader([local_batch], batch_size=None))
    loss = torch.tensor(applied.loss)
    dist.all_reduce(loss)
    return float(loss) / WORLD, applied.grads


def lightning_ddp_learned_one_head(local_batch):
    """teacher=learned on a dense-only model: the teacher is frozen (nothing to weigh), so DDP trains a step."""
    import lightning as L
    from lightning.pytorch.strategies import DDPStrategy

    from m3lit.loss import LearnedTeacher, M3Loss
    from m3lit.module import M3LightningModule

    plain = tiny_module(heads=["dense"], learned_teacher=False)
    module = M3LightningModule(plain.model, M3Loss(teacher=LearnedTeacher()), plain.tokenizer, lr=1e-2)
    before = [p.detach().clone() for p in module.model.parameters()]
    trainer = L.Trainer(accelerator="cpu", devices=WORLD, strategy=DDPStrategy(find_unused_parameters=False),
                        max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, use_distributed_sampler=False)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader([local_batch], batch_size=None))
    return {"steps": trainer.global_step, "teacher_frozen": not any(p.requires_grad for p in
                                                                     module.loss_fn.teacher.parameters()),
            "encoder_trained": any(not torch.equal(a, b) for a, b in zip(before, module.model.parameters()))}


def worker(rank, port, out_path):
    quiet()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD), RANK=str(rank),
                      LOCAL_RANK=str(rank), NODE_RANK="0")
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    batch = random_batch(queries=4, group=2, q_len=12, p_len=20, seed=11)
    shorten(batch["passages"], slice(4, 8), 11)  # rank 1 pads its passages to 11 tokens, rank 0 to 20
    local = rank_slice(batch, rank, WORLD)
    results = {"lengths": [local["passages"]["input_ids"].shape[1]]}

    import m3lit.scale.cross_device as module_lib

    cases = {"all": ({h: True for h in HEADS}, ()),
             "mixed": ({"dense": True, "sparse": True, "colbert": False}, ("colbert",))}
    cases["ema"] = ({h: True for h in HEADS}, ())
    cases["views"] = ({h: True for h in HEADS}, ())  # token_drop, symmetric: the second view with gradient
    cases["snapshot"] = ({h: True for h in HEADS}, ())  # group targets placed at each rank's column offset
    cases["layerwise"] = ({h: True for h in HEADS}, ())  # layer 1's own heads, their candidates gathered too
    cases["mix"] = ({h: True for h in HEADS}, ())  # ensemble, EMA copy, a token-drop view and the data's scores
    views = {"view": "token_drop", "rate": 0.3, "direction": "symmetric", "seed": 5}
    mix = {"sources": {"ensemble": 0.4, "ema": 0.3, "views": 0.2, "external": 0.1},
           "temperatures": {"ema": 0.8, "views": 1.2}, "ema": {"decay": 0.5},
           "views": {"view": "token_drop", "rate": 0.3, "seed": 5}}
    for name, (flags, local_heads) in cases.items():
        extra = {"ema": name == "ema", "views": views if name == "views" else None, "snapshot": name == "snapshot",
                 "layerwise": {"layers": [1], "shared_heads": False} if name == "layerwise" else None,
                 "mix": mix if name == "mix" else None}
        loss, g = averaged(*step(tiny_module(cross_device=flags, **extra), local))
        ref_loss, ref = reference(batch, local_heads, **extra)
        worst, param = max_grad_diff(ref, g)
        results[name] = {"loss": loss, "ref_loss": ref_loss, "max_grad_diff": worst, "param": param,
                         "n_params": len(g)}
    real_gather = module_lib.gather_candidates
    module_lib.gather_candidates = detached_gather
    loss, g = averaged(*step(tiny_module(), local))
    module_lib.gather_candidates = real_gather
    ref_loss, ref = reference(batch)
    results["detached"] = {"loss": loss, "ref_loss": ref_loss, "max_grad_diff": max_grad_diff(ref, g)[0]}

    loss, g = lightning_ddp_grads(local)
    worst, param = max_grad_diff(ref, g)
    results["lightning"] = {"loss": loss, "ref_loss": ref_loss, "max_grad_diff": worst, "param": param}

    skip = [None] * WORLD
    dist.all_gather_object(skip, lightning_ddp_skip(rank, local))
    results["ddp_skip"] = skip
    one_head = [None] * WORLD
    dist.all_gather_object(one_head, lightning_ddp_learned_one_head(local))
    results["learned_one_head"] = one_head

    lengths = [None] * WORLD
    dist.all_gather_object(lengths, results["lengths"][0])
    results["lengths"] = lengths
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(results, f, indent=2)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(worker, args=(free_port(), sys.argv[1]), nprocs=WORLD)
