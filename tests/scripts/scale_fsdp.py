"""FSDP2 (strategy=fsdp) on 2 CPU processes (gloo) through Lightning: train, checkpoint, resume, export.

    python tests/scripts/scale_fsdp.py WORKDIR

Runs, in the same two processes:
  A  4 optimizer steps from scratch (one batch an epoch), grad_cache encoding, gradient clipping on;
  B  the same run interrupted after 2 steps, then a sharded checkpoint (one file per rank);
  C  resume B's checkpoint up to step 4, consolidate the full state dict, export the BGE-M3 layout on rank 0;
  D  1 step with precision=bf16-mixed (FSDP2 bf16 parameters, float32 gradient reduction);
  E  nonfinite=skip: step 1 has a NaN loss on rank 1 only (no update anywhere), step 2 trains;
and on rank 0 the first step's gradients of one process holding the whole global batch. Rank 0 writes
WORKDIR/results.json with what the test checks.
"""
import json
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(__file__))
from scale_common import free_port, grads, max_grad_diff, quiet, random_batch, rank_slice, tiny_module  # noqa: E402

WORLD = 2
STEPS = 4
LR = 1e-3
CLIP = 0.5


def env(rank, port):
    # Lightning's LightningEnvironment reads these; it drops WORLD_SIZE at teardown, so set them before every run
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD), RANK=str(rank),
                      LOCAL_RANK=str(rank), NODE_RANK="0")


def full_grads(module):
    from torch.distributed.tensor import DTensor

    return {n: (p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad).detach().clone()
            for n, p in module.named_parameters() if p.grad is not None}


def fit(rank, port, batches, max_steps, precision="32-true", ckpt_path=None, save_to=None, stop_at=None,
        **train_step):
    import lightning as L

    from m3lit.scale.fsdp import FSDP2Strategy

    class Probe(L.Callback):
        def __init__(self):
            self.grads, self.dtypes, self.states = None, None, []

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if self.grads is None:
                self.grads = full_grads(module)  # collective: every rank calls it
            self.states.append(module.full_model_state_dict())  # collective
            if stop_at is not None and trainer.global_step >= stop_at:
                trainer.should_stop = True  # an interrupted run: same schedule (max_steps), stops early

        def on_train_start(self, trainer, module):
            self.states.append(module.full_model_state_dict())
            self.dtypes = {}

            def record(m, args, out):
                self.dtypes.setdefault("hidden", str(out.last_hidden_state.dtype))

            module.model.encoder.register_forward_hook(record)

    env(rank, port)
    module, probe = tiny_module(lr=LR, **train_step), Probe()
    trainer = L.Trainer(accelerator="cpu", devices=WORLD, strategy=FSDP2Strategy(), precision=precision,
                        max_steps=max_steps, gradient_clip_val=CLIP, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                        callbacks=[probe])
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None), ckpt_path=ckpt_path)
    if save_to:
        trainer.save_checkpoint(save_to)
    state = module.full_model_state_dict()  # collective
    teacher = getattr(module.loss_fn.teacher, "raw", torch.zeros(1)).detach().clone()
    return module, state, teacher, probe, trainer


def worker(rank, port, workdir):
    quiet()
    env(rank, port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    # one batch an epoch: a map-style loader restarts its epoch on resume, so data order cannot differ
    global_batches = [random_batch(queries=4, group=2, q_len=8, p_len=16, seed=20)]
    local = [rank_slice(b, rank, WORLD) for b in global_batches]
    ckpt = os.path.join(workdir, "step2.ckpt")

    cached = {"encoding": {"mode": "grad_cache", "sub_batch_size": 1}}  # nested in the strategy's layer checkpointing
    module_a, state_a, teacher_a, probe_a, _ = fit(rank, port, local, STEPS, **cached)
    from torch.distributed.tensor import DTensor

    sharded = [n for n, p in module_a.model.named_parameters() if isinstance(p, DTensor)]
    local_numel = sum(p.to_local().numel() for p in module_a.model.parameters())
    fit(rank, port, local, STEPS, save_to=ckpt, stop_at=2, **cached)
    module_c, state_c, teacher_c, _, trainer_c = fit(rank, port, local, STEPS, ckpt_path=ckpt, **cached)
    export_dir = os.path.join(workdir, "export")
    if rank == 0:
        from m3lit.inference.export import export_bge_m3

        export_bge_m3(module_c.model, module_c.tokenizer, export_dir, state_dict=state_c)
    module_d, _, _, probe_d, _ = fit(rank, port, local, 1, precision="bf16-mixed")
    nan_first = {**local[0], "teacher_scores": torch.zeros(2, 2)}
    if rank == 1:
        nan_first["teacher_scores"][0, 0] = float("nan")
    module_e, _, _, probe_e, _ = fit(rank, port, [nan_first, local[0]], 2, nonfinite="skip")
    skipped = [None] * WORLD
    dist.all_gather_object(skipped, module_e.skipped_steps)
    # teacher=ema: the copy is sharded like the model, scores the batch through FSDP, follows its formula
    module_f, _, _, probe_f, _ = fit(rank, port, local, 2, ema=True)
    from m3lit.scale.fsdp import full_state_dict

    ema_sharded = sum(isinstance(p, DTensor) for p in module_f.ema.copy.parameters())
    ema_state = full_state_dict(module_f.ema.copy)  # collective
    # teacher=snapshot (its copy sharded too) and teacher=layerwise (layer heads of their own, replicated)
    _, _, _, probe_g, _ = fit(rank, port, local, 1, snapshot=True)
    layerwise = {"layers": [1], "shared_heads": False}
    _, _, _, probe_h, _ = fit(rank, port, local, 1, layerwise=layerwise)
    sizes = [None] * WORLD
    dist.all_gather_object(sizes, local_numel)

    if rank == 0:
        from m3lit.model import M3Model

        # one process, whole global batch, same initial weights: the first step's clipped gradients
        ref = tiny_module(lr=LR, cross_device=False)
        ref.forward_loss(global_batches[0]).loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in ref.parameters() if p.grad is not None], CLIP)
        worst, param = max_grad_diff(grads(ref), probe_a.grads)
        ref_ema = tiny_module(lr=LR, cross_device=False, ema=True)
        ref_ema.forward_loss(global_batches[0]).loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in ref_ema.parameters() if p.grad is not None], CLIP)
        ema_grad_diff = max_grad_diff(grads(ref_ema), probe_f.grads)[0]
        other_diffs = {}
        for name, options, probe in (("snapshot", {"snapshot": True}, probe_g),
                                     ("layerwise", {"layerwise": layerwise}, probe_h)):
            ref_other = tiny_module(lr=LR, cross_device=False, **options)
            ref_other.forward_loss(global_batches[0]).loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in ref_other.parameters() if p.grad is not None], CLIP)
            other_diffs[name] = [max_grad_diff(grads(ref_other), probe.grads)[0], len(probe.grads)]
        expected = tiny_module(ema=True).ema.copy.state_dict()
        for step_state in probe_f.states[1:]:  # decay 0.5: θ'_t = ½ θ'_{t-1} + ½ θ_t
            expected = {k: 0.5 * expected[k] + 0.5 * step_state[k] for k in step_state}
        reloaded = M3Model.from_pretrained(export_dir, module_c.model.special_ids).state_dict()
        initial = tiny_module().model.state_dict()
        results = {
            "total_params": sum(v.numel() for v in state_a.values()),
            "local_numel_per_rank": sizes,
            "n_sharded": len(sharded),
            "n_params": len(list(module_a.model.parameters())),
            "ckpt_files": sorted(os.listdir(ckpt)),
            "first_step_grad_diff_vs_one_process": worst, "first_step_param": param,
            "n_grads": len(probe_a.grads),
            "resume_vs_uninterrupted": max(float((state_a[k] - state_c[k]).abs().max()) for k in state_a),
            "teacher_resume_vs_uninterrupted": float((teacher_a - teacher_c).abs().max()),
            "trained": max(float((state_a[k] - initial[k]).abs().max()) for k in state_a),
            "export_vs_consolidated": max(float((reloaded[k] - state_c[k]).abs().max()) for k in state_c),
            "export_keys_match": sorted(reloaded) == sorted(state_c),
            "global_step_after_resume": trainer_c.global_step,
            "ema_sharded": ema_sharded, "ema_params": len(list(module_f.ema.copy.parameters())),
            "ema_first_step_grad_diff_vs_one_process": ema_grad_diff,
            "other_teachers_first_step_grad_diff": other_diffs,
            "ema_vs_formula": max(float((ema_state[k] - expected[k]).abs().max()) for k in expected
                                  if expected[k].is_floating_point()),
            "bf16_hidden_dtype": probe_d.dtypes.get("hidden"),
            "bf16_param_dtype": str(next(module_d.model.parameters()).dtype),
            "bf16_finite_grads": all(bool(torch.isfinite(g).all()) for g in probe_d.grads.values()),
            "skip_per_rank": skipped,
            "skip_step_change": max(float((probe_e.states[1][k] - probe_e.states[0][k]).abs().max())
                                    for k in probe_e.states[0]),
            "after_skip_step_change": max(float((probe_e.states[2][k] - probe_e.states[1][k]).abs().max())
                                          for k in probe_e.states[0]),
        }
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(results, f, indent=2)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(worker, args=(free_port(), sys.argv[1]), nprocs=WORLD)
