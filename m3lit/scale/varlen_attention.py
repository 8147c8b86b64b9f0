"""Variable-length attention without flash-attn: the packed texts of one row attend text by text through
``torch.nn.functional.scaled_dot_product_attention``.

A packed row holds T = Σ lᵢ tokens of B texts (boundaries ``cu_seq_lens_q``, as for flash-attn's varlen kernel).
Each text's queries attend to its own keys only. Texts of similar length are batched into one SDPA call (padded to
the group's longest, within 25 % of its real tokens, with a key-padding mask), so attention costs about Σ lᵢ²
instead of a block-diagonal mask's rows × capacity² (an (R, H, C, C) score tensor, most of it masked) in a
handful of calls. Exact: per text it is the same softmax(q kᵀ · scale) v as the padded encoder computes.

transformers' ``sdpa`` attention function is wrapped (``AttentionInterface.register("sdpa", ...)``): a call that
carries ``cu_seq_lens_q`` and no mask — only the packed forward passes them, as flash-attn's varlen callers do —
runs here, every other call goes to the original function unchanged. Routing by the call's own arguments keeps a
layer that is recomputed in the backward pass (activation checkpointing) on the same path.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .fast_dropout import FastDropout, keep_mask, keep_scale


def length_groups(lengths: list[int], slack: float = 0.25) -> list[list[int]]:
    """Text indices grouped for one padded SDPA call each: sorted longest first, a group grows while its padded
    size (members × longest) stays within ``1 + slack`` of its real tokens."""
    order = sorted((i for i, n in enumerate(lengths) if n > 0), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    real = 0
    for i in order:
        if groups and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= (1 + slack) * (real + lengths[i]):
            groups[-1].append(i)
            real += lengths[i]
        else:
            groups.append([i])
            real = lengths[i]
    return groups


MAX_SCORES = 2 ** 24  # score elements (n × H × queries × keys) of one SDPA call on the recomputed path


def _attention_fast_dropout(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                            dropout: float, scale: float | None = None) -> torch.Tensor:
    """Attention written out, with the probabilities' dropout mask from ``keep_mask``:
    ``(keep ⊙ softmax(q kᵀ · scale + mask)) v / (1 − p_q)``, the two products in q's dtype (bf16 under bf16
    autocast, as SDPA's math path computes on CUDA; on CPU SDPA would compute them in float32, 3–4× slower),
    softmax in float32. q (n, H, l, Dh), k / v (n, H, m, Dh), mask (n, 1, 1, m) bool (True: attend) or None.

    Few passes over the (n, H, l, m) tensors, which take most of its time: the scores are scaled and masked in the
    product (``baddbmm``) in q's dtype, softmax computes in float32 (``dtype=``: its float32 copy of the scores is
    transient, the graph keeps the probabilities only), the dropout multiplies them (in v's dtype) by a keep mask
    drawn in v's dtype (no uint8 mask cast in the product or its backward; the call is recomputed in the backward
    pass, so the mask is transient), and 1 / (1 − p_q) (``keep_scale``) scales the (n, H, l, Dh) output instead of
    the probabilities (``benchmarks/attention_dropout.py``: 2× SDPA's speed in bf16, the same in float32)."""
    with torch.autocast("cpu", enabled=False):
        k, v = k.to(q.dtype), v.to(q.dtype)
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        if mask is None:
            scores = torch.matmul(q, k.transpose(-1, -2)).mul_(scale)
        else:  # the mask as an additive bias in the product's epilogue: 2x faster than a product, mul_ and masked_fill_
            (n, heads, rows, dim), keys = q.shape, k.shape[-2]
            bias = torch.zeros(mask.shape, dtype=q.dtype).masked_fill_(~mask, float("-inf"))
            scores = torch.baddbmm(bias.expand(n, heads, 1, keys).reshape(n * heads, 1, keys),
                                   q.reshape(n * heads, rows, dim), k.reshape(n * heads, keys, dim).transpose(1, 2),
                                   alpha=scale).view(n, heads, rows, keys)
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32)
        del scores
        if dropout == 0.0:
            return torch.matmul(probs.to(v.dtype), v)
        keep = keep_mask(probs.shape, dropout, dtype=v.dtype)  # transient (recomputed path): in v's dtype
        dropped = probs.mul(keep) if probs.dtype == v.dtype else probs.to(v.dtype).mul_(keep)
        return torch.matmul(dropped, v).mul_(keep_scale(dropout))


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, dropout: float,
               scaling: float | None, fast: bool = False) -> torch.Tensor:
    """SDPA; with attention dropout in a backward pass on CPU (SDPA's math path, which would keep the (n, H, l, l)
    probabilities and dropout mask; CUDA's fused kernels keep none) the call is recomputed in the backward
    instead (same RNG draws), so only q, k, v are kept: about 7 % more step time (measured on CPU, small model)
    for a quarter of the saved activations. Long texts go in chunks of query rows (softmax is per row, so the
    result is the same) of at most ``MAX_SCORES`` score elements each, so that memory grows with l, not l².
    ``fast``: the attention module's dropout is a ``FastDropout``, so the mask is drawn as it draws its own."""
    if dropout > 0 and torch.is_grad_enabled() and q.requires_grad and q.device.type == "cpu":
        rows = max(1, MAX_SCORES // max(1, q.shape[0] * q.shape[1] * k.shape[-2]))
        attend = _attention_fast_dropout if fast else F.scaled_dot_product_attention
        parts = [checkpoint(attend, q[:, :, i:i + rows], k, v, mask, dropout, scale=scaling, use_reentrant=False)
                 for i in range(0, q.shape[-2], rows)]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scaling)


def varlen_sdpa_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                        cu_seq_lens_q: torch.Tensor | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """query/key/value (1, H, T, Dh) of a packed row -> attention output (1, T, H, Dh), each text attending to
    itself only. Texts of similar length (``length_groups``) share one SDPA call on a (n, H, l_max, Dh) batch
    with a key-padding mask; a group of one text needs no mask."""
    global _calls
    if getattr(module, "is_causal", False):
        raise ValueError("packed attention: a causal attention module; m3lit packs bidirectional encoders only")
    if cu_seq_lens_q is None or query.shape[0] != 1:
        raise ValueError(f"packed attention: needs one packed row (1, H, T, Dh) and cu_seq_lens_q; got a batch of "
                         f"{query.shape[0]} row(s)" + ("" if cu_seq_lens_q is not None else " without cu_seq_lens_q"))
    _calls += 1
    fast = isinstance(getattr(module, "dropout", None), FastDropout)
    bounds = cu_seq_lens_q.tolist()
    starts, lengths = bounds[:-1], [e - s for s, e in zip(bounds[:-1], bounds[1:])]
    heads, total, dim = query.shape[1], query.shape[2], query.shape[3]
    # squeeze, not [0]: its backward is a view, where select's allocates and fills a (1, H, T, Dh) gradient
    flat = [t.squeeze(0).transpose(0, 1).reshape(total, heads * dim) for t in (query, key, value)]  # (T, H·Dh)
    positions, outputs = [], []
    for members in length_groups(lengths):
        width = lengths[members[0]]
        if len(members) == 1:
            s = starts[members[0]]
            q, k, v = (t[s:s + width].view(1, width, heads, dim).transpose(1, 2) for t in flat)
            o = _attention(q, k, v, None, dropout, scaling, fast)
            positions.append(torch.arange(s, s + width, device=query.device))
            outputs.append(o.squeeze(0).transpose(0, 1).reshape(width, heads * dim))
            continue
        offsets = torch.arange(width, device=query.device)
        first = torch.tensor([starts[i] for i in members], device=query.device)
        size = torch.tensor([lengths[i] for i in members], device=query.device)
        valid = offsets[None] < size[:, None]                                    # (n, width)
        index = torch.where(valid, first[:, None] + offsets[None], 0).view(-1)   # padding reads token 0, masked
        # index_select, not t[index]: its backward adds whole rows (scatter_add_), where advanced indexing's is an
        # accumulating index_put_ (element by element on CPU: ~10 % of this function's time in bf16)
        q, k, v = (t.index_select(0, index).view(len(members), width, heads, dim).transpose(1, 2) for t in flat)
        o = _attention(q, k, v, valid[:, None, None, :], dropout, scaling, fast)
        o = o.transpose(1, 2).reshape(len(members) * width, heads * dim)
        keep = valid.view(-1).nonzero().squeeze(1)
        positions.append(index.index_select(0, keep))
        outputs.append(o.index_select(0, keep))
    out = query.new_zeros(total, heads * dim)
    if outputs:
        out = out.index_copy(0, torch.cat(positions), torch.cat(outputs))
    return out.view(1, total, heads, dim), None


_stock_sdpa = None
_calls = 0


def varlen_calls() -> int:
    """How many packed attention calls ran so far (a packed forward checks that every layer made one)."""
    return _calls


def sdpa_dispatch(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """transformers' ``sdpa`` entry: packed calls (``cu_seq_lens_q``, no mask) to ``varlen_sdpa_forward``."""
    if kwargs.get("cu_seq_lens_q") is not None and attention_mask is None:
        return varlen_sdpa_forward(module, query, key, value, None, **kwargs)
    return _stock_sdpa(module, query, key, value, attention_mask, **kwargs)


def _register() -> None:
    global _stock_sdpa
    from transformers import AttentionInterface

    current = AttentionInterface._global_mapping["sdpa"]
    if current is not sdpa_dispatch:
        _stock_sdpa = current
        AttentionInterface.register("sdpa", sdpa_dispatch)


_register()
