"""ColBERT (MaxSim) scores for training, with memory independent of the number of query-passage pairs.

s(q, p) = (Σ_i m_q[i] max_{j: m_p[j]} q_i · p_j) / Σ_i m_q[i]   — the same values and gradients as
``m3lit.model.scores.colbert_scores``. Autograd through that function keeps the argmax of every (query token,
passage) pair — Bq × Lq × Bp int64, e.g. 130 MB for 512 queries of 32 tokens against 1024 passages — plus
similarity chunks of up to 2^26 floats. This version saves only its inputs: the backward recomputes each
passage chunk's similarities, takes the argmax again and back-propagates through it:
    ∂s/∂q_i = Σ_p g[q, p] m_q[i] / |q| · p_{j*(q,i,p)},
    ∂s/∂p_j = Σ_{q,i: j*(q,i,p) = j} g[q, p] m_q[i] / |q| · q_i.
Transient memory: a few buffers of ``max_elements`` similarities (16 MB each at the default 2^22 float32).
Passages are taken in chunks of similar length, each cut to its longest passage, so the padding of a batch of
uneven passages costs (almost) no similarities (the scores land in their columns; the values are unchanged).
"""
from __future__ import annotations

import torch

DEFAULT_MAX_ELEMENTS = 2**22


SLACK = 0.25  # a chunk grows while its padded tokens stay within 1 + SLACK of its passages' own


def _chunks(q: torch.Tensor, p_mask: torch.Tensor, max_elements: int) -> list[tuple[torch.Tensor, int]]:
    """Passages in chunks of similar length: (passage indices, width). Passages are taken longest first; a chunk is
    cut to its first (longest) passage's last real token (``width``) and grows while its similarities
    Bq × Lq × chunk × width stay within ``max_elements`` and chunk × width within ``1 + SLACK`` of its passages' own
    widths, so padding costs (almost) no similarities."""
    positions = torch.arange(1, p_mask.shape[1] + 1, device=p_mask.device)
    widths = (p_mask * positions).amax(1).clamp_min(1) if p_mask.shape[1] else positions.new_ones(p_mask.shape[0])
    order = torch.argsort(widths, descending=True, stable=True)
    sorted_widths = widths.index_select(0, order).tolist()
    per_token = max(1, q.shape[0] * q.shape[1])
    chunks, start = [], 0
    while start < len(sorted_widths):
        width, end, own = sorted_widths[start], start + 1, sorted_widths[start]
        most = max(1, max_elements // (per_token * width))
        while end < len(sorted_widths) and end - start < most \
                and (end - start + 1) * width <= (1 + SLACK) * (own + sorted_widths[end]):
            own += sorted_widths[end]
            end += 1
        chunks.append((order[start:end], width))
        start = end
    return chunks


def _best(q: torch.Tensor, pc: torch.Tensor, mc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Max over each passage's tokens of q_i · p_j: values and indices, (Bq, Lq, chunk). One (Bq·Lq) × (c·w)
    product into a contiguous (Bq, Lq, c, w) tensor, so the mask and the max run over contiguous rows."""
    sim = (q.reshape(-1, q.shape[-1]) @ pc.reshape(-1, pc.shape[-1]).T).view(*q.shape[:2], *pc.shape[:2])
    sim.masked_fill_(~mc[None, None], torch.finfo(sim.dtype).min)
    return sim.max(-1)


def _chunk(p: torch.Tensor, pm: torch.Tensor, index: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunk's passages (c, width, d), contiguous, and their masks (c, width)."""
    return p[:, :width].index_select(0, index), pm[:, :width].index_select(0, index)


class _MaxSim(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, q_mask, p, p_mask, max_elements):
        q_weight = q_mask.to(q.dtype) / q_mask.sum(-1, keepdim=True).clamp_min(1).to(q.dtype)  # m_q[i] / |q|
        q, pm = q.contiguous(), p_mask.bool()  # q's (Bq·Lq, d) view in every product
        chunks = _chunks(q, pm, max_elements)
        scores = q.new_empty(q.shape[0], p.shape[0])
        for index, width in chunks:
            values, _ = _best(q, *_chunk(p, pm, index, width))
            scores[:, index] = torch.einsum("qic,qi->qc", values, q_weight)
        ctx.save_for_backward(q, q_weight, p, pm)
        ctx.chunks = chunks
        return scores

    @staticmethod
    def backward(ctx, grad):
        q, q_weight, p, pm = ctx.saved_tensors
        grad_q = torch.zeros_like(q) if ctx.needs_input_grad[0] else None
        grad_p = torch.zeros_like(p) if ctx.needs_input_grad[2] else None
        for index, width in ctx.chunks:
            pc, mc = _chunk(p, pm, index, width)
            _, best = _best(q, pc, mc)                                       # (Bq, Lq, c)
            coef = grad[:, None, index] * q_weight[:, :, None]              # (Bq, Lq, c)
            weights = q.new_zeros(q.shape[0], q.shape[1], pc.shape[0], width)
            weights.scatter_(3, best.unsqueeze(-1), coef.unsqueeze(-1))     # coef at each argmax, (Bq, Lq, c, w)
            flat = weights.view(q.shape[0] * q.shape[1], -1)                  # (Bq·Lq, c·w)
            if grad_q is not None:
                grad_q += (flat @ pc.reshape(-1, pc.shape[-1])).view_as(q)
            if grad_p is not None:
                # each passage is in one chunk: its first ``width`` rows, the rest stay zero
                grad_p[:, :width].index_copy_(0, index, (flat.T @ q.reshape(-1, q.shape[-1])).view_as(pc))
        return grad_q, None, grad_p, None, None


def maxsim_scores(q: torch.Tensor, q_mask: torch.Tensor, p: torch.Tensor, p_mask: torch.Tensor,
                  max_elements: int = DEFAULT_MAX_ELEMENTS) -> torch.Tensor:
    """(Bq, Bp) ColBERT scores of q (Bq, Lq, d) with mask (Bq, Lq) against p (Bp, Lp, d) with mask (Bp, Lp)."""
    return _MaxSim.apply(q, q_mask, p, p_mask, int(max_elements))
