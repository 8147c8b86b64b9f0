"""Uncertainty of a comparison: intervals over seeds, paired tests over queries, multiple-comparison correction.

- ``t_interval(values)``: the 95 % Student-t interval of the mean over replicates (seeds),
  mean ± t_{0.975, n-1} · s / √n (s: sample standard deviation; NaN bounds for n < 2).
- ``paired_randomization_test(strata)``: two-sided paired randomisation (sign-flip) test of "scheme A and
  baseline B score the same" over queries. Each stratum (a dataset) gives the per-query differences
  d_q = a_q − b_q (each side already averaged over its seeds); the statistic is the dataset-averaged mean
  difference T = Σ_d (1/D) · (1/n_d) Σ_{q∈d} d_q — the difference of the ``average`` metric the tables report
  (one stratum: the plain mean difference). Under the null hypothesis each d_q's sign is exchangeable, so
  p = P(|T*| ≥ |T|) over T* = Σ_q w_q s_q d_q with independent signs s_q = ±1: enumerated exactly when at most
  ``exact_max`` queries differ, else estimated from ``samples`` random sign vectors as (1 + #hits)/(1 + samples)
  (never 0). No differing query: p = 1.
- ``holm(p_values)``: Holm–Bonferroni adjusted p-values (family-wise error control, uniformly more powerful than
  Bonferroni): sort ascending, p̃_(i) = max_{j ≤ i} min(1, (m − j + 1) · p_(j)).
- ``verdict(delta, p_adjusted, alpha)``: ``better`` / ``worse`` (adjusted p < alpha, by the sign of the
  difference; retrieval metrics are better when larger) or ``same`` (not distinguishable).
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

BETTER, WORSE, SAME = "better", "worse", "same"
MARKS = {BETTER: "▲", WORSE: "▼", SAME: "≈"}


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """(low, high) of the mean's Student-t interval; (nan, nan) with fewer than two values."""
    values = [float(v) for v in values if not math.isnan(float(v))]
    if len(values) < 2:
        return math.nan, math.nan
    from scipy.stats import t

    mean = math.fsum(values) / len(values)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))
    half = float(t.ppf(0.5 + confidence / 2, len(values) - 1)) * std / math.sqrt(len(values))
    return mean - half, mean + half


def paired_differences(a: Mapping[str, float], b: Mapping[str, float], where: str = "") -> np.ndarray:
    """a_q − b_q over the queries of ``b`` (the baseline); both sides must hold the same queries."""
    if set(a) != set(b):
        only_a, only_b = sorted(set(a) - set(b))[:3], sorted(set(b) - set(a))[:3]
        raise ValueError(f"{where}: the runs were evaluated on different queries (only in one: {only_a}, "
                         f"only in the other: {only_b}); a paired test needs the same queries")
    keys = sorted(b)
    return np.array([a[k] for k in keys], dtype=np.float64) - np.array([b[k] for k in keys], dtype=np.float64)


def paired_randomization_test(strata: Sequence[np.ndarray], samples: int = 10000, exact_max: int = 16,
                              seed: int = 0) -> tuple[float, float]:
    """(T, two-sided p) for per-query differences grouped by dataset (see the module docstring)."""
    strata = [np.asarray(d, dtype=np.float64) for d in strata if len(d)]
    if not strata:
        raise ValueError("paired test: no queries")
    weights = np.concatenate([np.full(len(d), 1.0 / (len(strata) * len(d))) for d in strata])
    contrib = weights * np.concatenate(strata)           # w_q · d_q
    observed = float(contrib.sum())
    contrib = contrib[contrib != 0.0]                    # a zero difference flips to itself
    if contrib.size == 0:
        return observed, 1.0
    tolerance = 1e-12 * max(1.0, float(np.abs(contrib).sum()))
    if contrib.size <= exact_max:
        signs = ((np.arange(2 ** contrib.size)[:, None] >> np.arange(contrib.size)) & 1) * 2 - 1
        stats = np.abs(signs @ contrib)
        return observed, float(np.mean(stats >= abs(observed) - tolerance))
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, samples, 2000):
        signs = rng.integers(0, 2, size=(min(2000, samples - start), contrib.size)) * 2 - 1
        hits += int(np.sum(np.abs(signs @ contrib) >= abs(observed) - tolerance))
    return observed, (1 + hits) / (1 + samples)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values, in the input order (NaN entries are left out of the family)."""
    order = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    adjusted = [math.nan] * len(p_values)
    running, m = 0.0, len(order)
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def verdict(delta: float, p_adjusted: float, alpha: float = 0.05) -> str:
    if math.isnan(p_adjusted) or p_adjusted >= alpha:
        return SAME
    return BETTER if delta > 0 else WORSE
