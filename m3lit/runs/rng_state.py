"""Random-number-generator states of every rank, saved in checkpoints so that a resumed run draws the same dropout
masks (and any other random numbers) as the uninterrupted run would have."""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


def collect_rng_states() -> dict[str, Any]:
    """This process's torch (CPU and every CUDA device), numpy and Python RNG states, as tensors and plain values
    (loadable with ``torch.load(weights_only=True)``, as Lightning loads checkpoints)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {"torch": torch.get_rng_state(),
                              "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                                        float(cached)],
                              "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def gather_rng_states() -> list[dict[str, Any]]:
    """Every rank's states, indexed by rank (a collective when distributed: every rank calls it)."""
    mine = collect_rng_states()
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return [mine]
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    return everyone
