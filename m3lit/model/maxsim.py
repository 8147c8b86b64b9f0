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
uneven passages costs no similarities (the scores land in their columns; the values are unchanged).
"""
from __future__ import annotations

import torch

DEFAULT_MAX_ELEMENTS = 2**22


def _chunks(q: torch.Tensor, p_mask: torch.Tensor, max_elements: int) -> list[tuple[torch.Tensor, int]]:
    """Passages in chunks of similar length: (passage indices, width) with the chunk's similarities
    Bq × Lq × chunk × width ≤ ``max_elements`` (at least one passage). Passages are taken longest first and each
    chunk is cut to its longest passage's last real token (``width``), so padding costs no similarities."""
    positions = torch.arange(1, p_mask.shape[1] + 1, device=p_mask.device)
    widths = (p_mask * positions).amax(1).clamp_min(1) if p_mask.shape[1] else positions.new_ones(p_mask.shape[0])
    order = torch.argsort(widths, descending=True, stable=True)
    sorted_widths = widths.index_select(0, order).tolist()
    per_token = max(1, q.shape[0] * q.shape[1])
    chunks, start = [], 0
    while start < len(sorted_widths):
        width = sorted_widths[start]
        count = max(1, max_elements // (per_token * width))
        chunks.append((order[start:start + count], width))
        start += count
    return chunks


def _best(q: torch.Tensor, pc: torch.Tensor, mc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Max over each passage's tokens of q_i · p_j: values and indices, (Bq, Lq, chunk)."""
    sim = torch.einsum("qid,pjd->qipj", q, pc)
    sim.masked_fill_(~mc[None, None], torch.finfo(sim.dtype).min)
    return sim.max(-1)


def _chunk(p: torch.Tensor, pm: torch.Tensor, index: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    return p.index_select(0, index)[:, :width], pm.index_select(0, index)[:, :width]


class _MaxSim(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, q_mask, p, p_mask, max_elements):
        q_weight = q_mask.to(q.dtype) / q_mask.sum(-1, keepdim=True).clamp_min(1).to(q.dtype)  # m_q[i] / |q|
        pm = p_mask.bool()
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
            if grad_q is not None:
                grad_q += torch.einsum("qipj,pjd->qid", weights, pc)
            if grad_p is not None:
                rows = p.new_zeros(pc.shape[0], *p.shape[1:])
                rows[:, :width] = torch.einsum("qipj,qid->pjd", weights, q)
                grad_p.index_copy_(0, index, rows)
        return grad_q, None, grad_p, None, None


def maxsim_scores(q: torch.Tensor, q_mask: torch.Tensor, p: torch.Tensor, p_mask: torch.Tensor,
                  max_elements: int = DEFAULT_MAX_ELEMENTS) -> torch.Tensor:
    """(Bq, Bp) ColBERT scores of q (Bq, Lq, d) with mask (Bq, Lq) against p (Bp, Lp, d) with mask (Bp, Lp)."""
    return _MaxSim.apply(q, q_mask, p, p_mask, int(max_elements))
