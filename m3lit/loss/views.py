"""Second views of a batch for ``teacher=views``: a second dropout pass, token dropout, token masking, or the
translation (the data's ``query_translation`` / ``pos_translation``, collated into ``batch["views"]``; rows without
one keep their text, a dropout view).

The random choices of ``token_drop`` and ``mask`` depend only on (seed, optimizer step, the row's tokens), never on
where the row sits in the batch or on which rank: the same view on 1 process and on N, reproducible from the seed.
Rows are right-padded (``attention_mask`` 1 then 0); special tokens (``special_ids``: CLS, EOS, …) and padding are
never dropped or masked."""
from __future__ import annotations

from typing import Sequence

import torch

VIEW_KINDS = ("dropout", "token_drop", "mask", "translation")


def _row_uniforms(input_ids: torch.Tensor, attention_mask: torch.Tensor, seed: int, step: int) -> torch.Tensor:
    """(R, L) uniforms in [0, 1): row r's from a generator seeded by (seed, step, a hash of row r's real tokens) —
    the same whatever the row's padding (a prefix of one sequence per row)."""
    ids = input_ids.detach().to("cpu", torch.int64)
    real = attention_mask.detach().to("cpu").bool()
    positions = torch.arange(1, ids.shape[1] + 1, dtype=torch.int64)
    keys = ((ids * 1000003 + 7) * positions * real).sum(dim=1) % (2 ** 31 - 1)
    out = torch.empty(ids.shape, dtype=torch.float32)
    for r, key in enumerate(keys.tolist()):
        gen = torch.Generator().manual_seed((seed * 2654435761 + step * 40503 + key) % (2 ** 63 - 1))
        out[r] = torch.rand(ids.shape[1], generator=gen)
    return out.to(input_ids.device)


def augment(input_ids: torch.Tensor, attention_mask: torch.Tensor, kind: str, rate: float, special_ids: Sequence[int],
            pad_id: int, mask_id: int | None, seed: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The second view's (input_ids, attention_mask): ``dropout`` — unchanged (the encoder's dropout differs);
    ``token_drop`` — each ordinary token removed with probability ``rate`` (the row closes up, re-padded, trimmed to
    the longest row); ``mask`` — each ordinary token replaced by ``mask_id`` with probability ``rate``."""
    if kind == "translation":
        raise ValueError("teacher.view=translation: the second view is the batch's `views` (the data's translations), "
                         "not an augmentation")
    if kind == "dropout" or rate == 0.0:
        return input_ids, attention_mask
    real = attention_mask.bool()
    special = torch.isin(input_ids, torch.tensor(list(special_ids), device=input_ids.device))
    hit = (_row_uniforms(input_ids, attention_mask, seed, step) < rate) & real & ~special
    if kind == "mask":
        if mask_id is None:
            raise ValueError("teacher.view=mask: the tokenizer has no mask token; use view=token_drop")
        return torch.where(hit, torch.full_like(input_ids, mask_id), input_ids), attention_mask
    keep = real & ~hit
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)  # kept tokens first, in their order
    ids = input_ids.gather(1, order)
    mask = keep.gather(1, order).to(attention_mask.dtype)
    ids = torch.where(mask.bool(), ids, torch.full_like(ids, pad_id))
    length = max(1, int(mask.sum(dim=1).max()))
    return ids[:, :length].contiguous(), mask[:, :length].contiguous()
