"""ColBERT (MaxSim) scores for training, with memory independent of the number of query-passage pairs.

s(q, p) = (Σ_i m_q[i] max_{j: m_p[j]} q_i · p_j) / Σ_i m_q[i]   — the same values and gradients as
``m3lit.model.scores.colbert_scores``. Autograd through that function keeps the argmax of every (query token,
passage) pair — Bq × Lq × Bp int64, e.g. 130 MB for 512 queries of 32 tokens against 1024 passages — plus
similarity chunks of up to 2^26 floats. This version saves only its inputs: the backward recomputes each
passage chunk's similarities, takes the argmax again and back-propagates through it:
    ∂s/∂q_i = Σ_p g[q, p] m_q[i] / |q| · p_{j*(q,i,p)},
    ∂s/∂p_j = Σ_{q,i: j*(q,i,p) = j} g[q, p] m_q[i] / |q| · q_i.
Transient memory: a few buffers of ``max_elements`` similarities (16 MB each at the default 2^22 float32).
"""
from __future__ import annotations

import torch

DEFAULT_MAX_ELEMENTS = 2**22


def _chunks(q: torch.Tensor, p: torch.Tensor, max_elements: int) -> range:
    per_passage = max(1, q.shape[0] * q.shape[1] * p.shape[1])
    return range(0, p.shape[0], max(1, max_elements // per_passage))


def _best(q: torch.Tensor, pc: torch.Tensor, mc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Max over each passage's tokens of q_i · p_j: values and indices, (Bq, Lq, chunk)."""
    sim = torch.einsum("qid,pjd->qipj", q, pc)
    sim.masked_fill_(~mc[None, None], torch.finfo(sim.dtype).min)
    return sim.max(-1)


class _MaxSim(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, q_mask, p, p_mask, max_elements):
        q_weight = q_mask.to(q.dtype) / q_mask.sum(-1, keepdim=True).clamp_min(1).to(q.dtype)  # m_q[i] / |q|
        pm = p_mask.bool()
        step = _chunks(q, p, max_elements).step
        parts = []
        for start in range(0, p.shape[0], step):
            values, _ = _best(q, p[start:start + step], pm[start:start + step])
            parts.append(torch.einsum("qic,qi->qc", values, q_weight))
        ctx.save_for_backward(q, q_weight, p, pm)
        ctx.step = step
        return torch.cat(parts, dim=1)

    @staticmethod
    def backward(ctx, grad):
        q, q_weight, p, pm = ctx.saved_tensors
        step = ctx.step
        grad_q = torch.zeros_like(q) if ctx.needs_input_grad[0] else None
        grad_p = torch.zeros_like(p) if ctx.needs_input_grad[2] else None
        for start in range(0, p.shape[0], step):
            pc, mc = p[start:start + step], pm[start:start + step]
            _, index = _best(q, pc, mc)                                   # (Bq, Lq, c)
            coef = grad[:, None, start:start + step] * q_weight[:, :, None]  # (Bq, Lq, c)
            weights = q.new_zeros(q.shape[0], q.shape[1], pc.shape[0], pc.shape[1])
            weights.scatter_(3, index.unsqueeze(-1), coef.unsqueeze(-1))  # coef at each argmax, (Bq, Lq, c, Lp)
            if grad_q is not None:
                grad_q += torch.einsum("qipj,pjd->qid", weights, pc)
            if grad_p is not None:
                grad_p[start:start + step] = torch.einsum("qipj,qid->pjd", weights, q)
        return grad_q, None, grad_p, None, None


def maxsim_scores(q: torch.Tensor, q_mask: torch.Tensor, p: torch.Tensor, p_mask: torch.Tensor,
                  max_elements: int = DEFAULT_MAX_ELEMENTS) -> torch.Tensor:
    """(Bq, Bp) ColBERT scores of q (Bq, Lq, d) with mask (Bq, Lq) against p (Bp, Lp, d) with mask (Bp, Lp)."""
    return _MaxSim.apply(q, q_mask, p, p_mask, int(max_elements))
