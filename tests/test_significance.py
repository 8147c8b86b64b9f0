"""Statistics of a comparison: the textbook cases of the paired test, Holm's correction, the t-interval, and the
tables m3lit-compare builds from per-query values (held-out test first, separate tables for other data)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from m3lit.cli.compare import main as compare_main
from m3lit.runs import compare, format_comparison, run_labels
from m3lit.runs.comparison import split_by_setup
from m3lit.runs.record import PER_QUERY_FILE, write_summary
from m3lit.runs.significance import SAME, holm, paired_randomization_test, t_interval, verdict


def test_identical_schemes_are_not_distinguishable():
    delta, p = paired_randomization_test([np.zeros(50)])
    assert (delta, p) == (0.0, 1.0) and verdict(delta, p) == SAME


def test_a_scheme_better_on_every_query_is_significant_with_the_exact_sign_test_p():
    # 10 queries, all better by the same amount: only the all-plus and all-minus sign vectors reach |T|
    delta, p = paired_randomization_test([np.full(10, 0.1)])
    assert delta == pytest.approx(0.1) and p == pytest.approx(2 / 2 ** 10)
    # 40 queries: sampled; no random sign vector reaches |T|, so p = 1 / (samples + 1)
    delta, p = paired_randomization_test([np.linspace(0.01, 0.2, 40)], samples=5000)
    assert p == pytest.approx(1 / 5001) and verdict(delta, p) == "better"
    assert verdict(-delta, p) == "worse"


def test_exact_randomization_p_equals_scipys_paired_permutation_test():
    rng = np.random.default_rng(3)
    a, b = rng.random(12), rng.random(12)
    _, p = paired_randomization_test([a - b])
    ref = stats.permutation_test((a, b), lambda x, y: np.mean(x - y), permutation_type="samples",
                                 n_resamples=np.inf, alternative="two-sided")
    assert p == pytest.approx(ref.pvalue)


def test_sampled_p_is_close_to_the_exact_one():
    rng = np.random.default_rng(5)
    diffs = rng.normal(0.05, 0.3, 16)
    exact = paired_randomization_test([diffs])[1]
    sampled = paired_randomization_test([diffs], samples=40000, exact_max=0)[1]
    assert sampled == pytest.approx(exact, abs=0.01)


def test_stratified_statistic_is_the_difference_of_the_dataset_average():
    small, large = np.array([0.3, 0.1]), np.full(8, -0.05)
    delta, _ = paired_randomization_test([small, large])
    assert delta == pytest.approx((small.mean() + large.mean()) / 2)


def test_holm_adjustment_textbook_example():
    # sorted 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, max(0.06, 0.04·1) = 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, math.nan]) [0] == 0.5 and math.isnan(holm([0.5, math.nan])[1])
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])


def test_t_interval_of_three_values():
    low, high = t_interval([1.0, 2.0, 3.0])
    half = stats.t.ppf(0.975, 2) / math.sqrt(3)
    assert (low, high) == pytest.approx((2 - half, 2 + half))
    assert all(math.isnan(v) for v in t_interval([1.0]))


# ------------------------------------------------------------------ runs with per-query values
QUERIES = [f"q{i}" for i in range(30)]


def write_run(root, num, scheme, seed, shift, data="train", datasets=("en", "de")):
    """A run folder: summary (eval/ and test/ means) + eval_per_query.json; scheme values = base + shift."""
    rng = np.random.default_rng(seed)
    per_query, metrics = {}, {"trainer/global_step": 100.0}
    for prefix in ("eval", "test"):
        per_query[prefix] = {}
        for ds in datasets:
            base = np.clip(np.linspace(0.2, 0.8, len(QUERIES)) + rng.normal(0, 0.01, len(QUERIES)), 0, 1)
            values = {q: float(v + shift) for q, v in zip(QUERIES, base)}
            per_query[prefix][ds] = {"all": {"ndcg@10": values}}
            metrics[f"{prefix}/{ds}/all/ndcg@10"] = float(np.mean(list(values.values())))
        metrics[f"{prefix}/average/all/ndcg@10"] = float(np.mean([metrics[f"{prefix}/{ds}/all/ndcg@10"]
                                                                  for ds in datasets]))
    folder = root / str(num)
    write_summary(str(folder / "m3lit_run.json"), {
        "name": f"tiny-{scheme}", "group": "g", "run_id": f"r{num}", "metrics": metrics,
        "config": {"data": {"train": data}, "trainer": {"max_steps": 100},
                   "hydra": {"job_num": num, "overrides": [f"+scheme={scheme}", f"seed={seed}"]}}})
    (folder / PER_QUERY_FILE).write_text(json.dumps({"format": 1, "steps": {}, "values": per_query}))


def test_paired_tests_mark_better_worse_and_same(tmp_path):
    for num, (scheme, seed, shift) in enumerate([("base", 1, 0.0), ("base", 2, 0.0), ("good", 1, 0.1),
                                                 ("good", 2, 0.1), ("bad", 1, -0.1), ("same", 1, 0.0)]):
        write_run(tmp_path, num, scheme, seed, shift)
    from m3lit.runs import collect_runs

    runs = collect_runs(str(tmp_path))
    comparison = compare(runs, run_labels(runs), prefix="test")
    assert comparison.baseline == "base"
    assert comparison.test("good", "ndcg@10", "all").verdict == "better"
    assert comparison.test("bad", "ndcg@10", "all").verdict == "worse"
    same = comparison.test("same", "ndcg@10", "all")
    assert same.verdict == SAME and same.queries == 60   # 2 datasets × 30 queries
    # "same" (seed 1 only) equals base's seed 1; base's mean over seeds 1, 2 differs by the seed noise only
    assert abs(same.delta) < 0.01 and same.p_adjusted > 0.05
    good = comparison.test("good", "ndcg@10", "all")
    assert good.delta == pytest.approx(comparison.value("good", "ndcg@10", "all")
                                       - comparison.value("base", "ndcg@10", "all"))
    table = format_comparison(comparison)
    assert "▲" in table.splitlines()[4] and "▼" in table.splitlines()[5] and "≈" in table.splitlines()[6]
    assert "base (baseline)" in table and "Holm-adjusted p of a paired randomisation test" in table
    # per dataset: one stratum
    assert compare(runs, run_labels(runs), dataset="de", prefix="test").test("good", "ndcg@10", "all").queries == 30


def test_compare_reports_the_held_out_test_first_and_separates_other_data(tmp_path, capsys):
    write_run(tmp_path, 0, "base", 1, 0.0, data="/data/train")
    write_run(tmp_path, 1, "good", 1, 0.1, data="/data/train")
    write_run(tmp_path, 2, "base_scored", 1, 0.0, data="/data/train/scored.jsonl")
    write_run(tmp_path, 3, "other", 1, 0.05, data="/data/train/scored.jsonl")
    from m3lit.runs import collect_runs

    runs = collect_runs(str(tmp_path))
    groups = split_by_setup(runs, run_labels(runs))
    assert [(setup, labels) for setup, _, labels in groups] == [
        ("data.train=…/train", ["base", "good"]), ("data.train=…/train/scored.jsonl", ["base_scored", "other"])]
    assert compare_main([str(tmp_path), "--wandb", "off", "--samples", "2000", "--baseline", "good,base_scored"]) == 0
    out = capsys.readouterr().out
    assert "2 separate tables" in out
    first = out.index("=== runs with data.train=…/train\n")
    assert out.index("held-out test test/…, average over 2 datasets", first) < out.index("dev eval/…", first)
    second = out.index("=== runs with data.train=…/train/scored.jsonl")
    assert "vs good:" in out[first:second] and "vs base_scored:" in out[second:]  # the first baseline present
    md = (tmp_path / "compare.md").read_text()
    assert "## Runs with data.train=…/train/scored.jsonl" in md and "dataset de" in md and "▼" in md
    rows = (tmp_path / "compare.csv").read_text().splitlines()
    base = [r for r in rows if r.startswith("data.train=…/train,test,average,base,")]
    assert len(base) == 1 and base[0].split(",")[11] == "good" and base[0].split(",")[15] == "worse"
    assert compare_main([str(tmp_path), "--wandb", "off", "--baseline", "nope"]) == 2
