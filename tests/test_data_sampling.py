"""Global batches: one dataset/language/bucket per optimizer step, rank slices, distinct queries, bucket sizes,
dataset sampling, per-dataset options, worker independence."""
from collections import Counter

import numpy as np
import pytest
import torch

from m3lit.data import M3DataModule
from m3lit.data.sampler import cut_global_batches
from m3lit.data.synthetic import synthetic_lines, write_jsonl

BOUNDS = [0, 48, 96, 160, 8192]


@pytest.fixture
def corpus(tmp_path):
    folder = tmp_path / "train"
    folder.mkdir()
    # one query repeated on 3 consecutive lines (several positives written as separate lines)
    write_jsonl(folder / "en.jsonl", synthetic_lines(90, language="en", seed=1, duplicate_every=3, passage_words=(3, 40)))
    write_jsonl(folder / "ru.jsonl", synthetic_lines(50, language="ru", seed=2, passage_words=(3, 40)))
    return folder


def make(path, tokenizer, tmp_path, **kw):
    kw = {"batch_size": 3, "bucket_boundaries": BOUNDS, "group_size": 3, "passage_max_len": 512, "query_max_len": 32,
          "cache_dir": str(tmp_path / "cache"), **kw}
    dm = M3DataModule(path if isinstance(path, list) else str(path), tokenizer, seed=3, **kw)
    dm.setup("fit")
    return dm


def test_global_batch_single_group_distinct_queries(corpus, tokenizer, tmp_path):
    dm = make(corpus, tokenizer, tmp_path, world_size=2, accumulate_grad_batches=3)
    seen = Counter()
    for step in range(dm.plan.steps_per_epoch(0)):
        gb = dm.plan.global_batch(0, step)
        unit = dm.units[gb.unit]
        view = dm.views[unit.dataset]
        buckets = dm.table.bucket_of(view.lengths[gb.rows])
        assert np.all(buckets == gb.bucket)  # one bucket
        assert np.unique(view.query_hash[gb.rows]).size == len(gb.rows)  # no query twice
        assert len(gb.rows) % 6 == 0 and len(gb.rows) <= 3 * 6
        slices = [gb.micro_slice(a, r, 2, 3) for a in range(3) for r in range(2)]
        assert sorted(np.concatenate(slices).tolist()) == sorted(gb.rows.tolist())
        seen.update((view.name, int(r)) for r in gb.rows)
    assert max(seen.values()) == 1  # each line at most once per epoch
    assert len(seen) + dm.plan.dropped_lines(0) == 140


def test_duplicate_queries_spread_over_batches():
    rows = np.arange(12)
    hashes = np.repeat(np.arange(4), 3)  # 4 queries, 3 lines each
    batches, dropped = cut_global_batches(rows, hashes, size=4, quantum=2)
    assert dropped == 0 and sorted(np.concatenate(batches).tolist()) == list(range(12))
    for b in batches:
        assert len(set(hashes[b].tolist())) == len(b)


def test_same_global_batches_for_equal_world_times_accumulation(corpus, tokenizer, tmp_path):
    a = make(corpus, tokenizer, tmp_path, world_size=2, accumulate_grad_batches=1)
    b = make(corpus, tokenizer, tmp_path, world_size=1, accumulate_grad_batches=2)
    n = a.plan.steps_per_epoch(1)
    assert n == b.plan.steps_per_epoch(1)
    assert [a.global_batch_rows(1, s) for s in range(n)] == [b.global_batch_rows(1, s) for s in range(n)]


def test_batch_is_a_pure_function_of_epoch_and_step(corpus, tokenizer, tmp_path):
    dm = make(corpus, tokenizer, tmp_path, world_size=2, rank=1, accumulate_grad_batches=2)
    dm.train_dataloader()
    stream = dm._stream
    late = stream.micro_batch(2, 7)
    early = [stream.micro_batch(0, i) for i in range(3)]
    fresh = make(corpus, tokenizer, tmp_path, world_size=2, rank=1, accumulate_grad_batches=2)
    fresh.train_dataloader()
    again = fresh._stream.micro_batch(2, 7)
    assert late["meta"]["rows"] == again["meta"]["rows"] and early
    assert torch.equal(late["passages"]["input_ids"], again["passages"]["input_ids"])


def test_bucket_table_and_token_budget(corpus, tokenizer, tmp_path):
    dm = make(corpus, tokenizer, tmp_path, batch_size=[5, 4, 3, 2])
    assert {g.bucket: g.batch_size for g in dm.plan.groups} == {b: 5 - b for b in {g.bucket for g in dm.plan.groups}}
    assert len({g.bucket for g in dm.plan.groups}) >= 3
    budget = 3000
    dm = make(corpus, tokenizer, tmp_path, batch_size=None, token_budget=budget, length_estimate="exact")
    for batch in dm.train_dataloader():
        m = batch["meta"]
        lo, hi = m["bucket_min_tokens"], m["bucket_max_tokens"]
        real = batch["passages"]["attention_mask"].sum(1)
        assert torch.all((real >= 0) & (real <= hi))
        # the budget bounds the passage tokens computed per micro-batch (exact lengths, rounded to 8)
        assert m["batch_size"] * m["group_size"] * m["passage_len"] <= budget
        assert int(real.max()) >= lo or m["bucket"] == 0


def test_temperature_and_weights(tmp_path, tokenizer):
    big = write_jsonl(tmp_path / "big.jsonl", synthetic_lines(400, seed=1, n_neg=1, passage_words=(3, 5)))
    small = write_jsonl(tmp_path / "small.jsonl", synthetic_lines(100, seed=2, n_neg=1, passage_words=(3, 5)))
    kw = {"group_size": 2, "batch_size": 1, "bucket_boundaries": [0, 8192], "steps_per_epoch": 4000}

    def freq(**extra):
        dm = make([big, small], tokenizer, tmp_path, **{**kw, **extra})
        units = dm.plan.schedule(0)[0]
        return np.bincount(units, minlength=2) / len(units)

    np.testing.assert_allclose(freq(sampling_alpha=1.0), [0.8, 0.2], atol=0.03)
    np.testing.assert_allclose(freq(sampling_alpha=0.5), [2 / 3, 1 / 3], atol=0.03)  # sqrt(400):sqrt(100)
    np.testing.assert_allclose(freq(sampling_alpha=0.0), [0.5, 0.5], atol=0.03)
    dm = make([{"path": big, "weight": 1.0}, {"path": small, "weight": 3.0}], tokenizer, tmp_path,
              **{**kw, "sampling_alpha": 0.0})
    units = dm.plan.schedule(0)[0]
    np.testing.assert_allclose(np.bincount(units) / len(units), [0.25, 0.75], atol=0.03)
    # upsampled small dataset: its lines are cycled through in whole passes (each line once per pass)
    rows = [r for s in range(4000) if units[s] == 1 for r in dm.global_batch_rows(0, s)[3]]
    assert Counter(Counter(rows[:300]).values()) == Counter({3: 100})


def test_mixed_language_file_gives_monolingual_batches(tmp_path, tokenizer):
    lines = [l for lang in ("de", "fr", "it") for l in synthetic_lines(20, language=lang, seed=len(lang))]
    rng = np.random.default_rng(0)
    path = write_jsonl(tmp_path / "mixed.jsonl", [lines[i] for i in rng.permutation(len(lines))])
    dm = make(path, tokenizer, tmp_path, bucket_boundaries=[0, 8192], batch_size=4)
    assert sorted(u.language for u in dm.units) == ["de", "fr", "it"]
    for batch in dm.train_dataloader():
        langs = {dm.views[0].record(r).language for r in batch["meta"]["rows"]}
        assert langs == {batch["meta"]["language"]} and batch["meta"]["dataset"] == "mixed"


def test_per_dataset_options(tmp_path, tokenizer):
    a = write_jsonl(tmp_path / "a.jsonl", synthetic_lines(8, seed=1))
    lines = list(synthetic_lines(8, seed=2))
    lines[0]["prompt"] = "own: "
    b = write_jsonl(tmp_path / "b.jsonl", lines)
    dm = make([{"path": a, "name": "A", "group_size": 2, "prompt": "find: ", "no_in_batch_neg": True,
                "query_max_len": 4},
               {"path": b, "group_size": 5, "passage_max_len": 16, "passage_prompt": "doc "}], tokenizer, tmp_path,
              bucket_boundaries=[0, 8192], batch_size=4)
    for batch in dm.train_dataloader():
        m = batch["meta"]
        queries = tokenizer.batch_decode(batch["queries"]["input_ids"], skip_special_tokens=True)
        queries = [q.replace(" ", "") for q in queries]
        if m["dataset"] == "A":
            assert m["group_size"] == 2 and batch["no_in_batch_neg"] is True
            assert batch["queries"]["input_ids"].shape[1] == 8 and batch["queries"]["attention_mask"].sum(1).max() == 4
            assert all(q.startswith("fi") for q in queries)
        else:
            assert m["dataset"] == "b" and m["group_size"] == 5 and batch["no_in_batch_neg"] is False
            assert batch["passages"]["attention_mask"].sum(1).max() <= 16
            passages = tokenizer.batch_decode(batch["passages"]["input_ids"], skip_special_tokens=True)
            assert all(p.replace(" ", "").startswith("doc") for p in passages)
            for q, row in zip(queries, m["rows"]):
                assert q.startswith("ownq" if row == 0 else "q")


def test_workers_do_not_change_batches(corpus, tokenizer, tmp_path):
    def run(workers):
        dm = make(corpus, tokenizer, tmp_path, num_workers=workers, world_size=2, rank=0, accumulate_grad_batches=2)
        return [(b["meta"]["micro_step"], b["meta"]["rows"]) for b in dm.train_dataloader()]

    single = run(0)
    assert run(2) == single and [s for s, _ in single] == list(range(len(single)))


def test_length_sort_pool_makes_length_homogeneous_batches(corpus, tokenizer, tmp_path):
    kw = {"bucket_boundaries": [0, 8192], "batch_size": 4, "world_size": 2}
    plain = make(corpus, tokenizer, tmp_path, **kw)
    pooled = make(corpus, tokenizer, tmp_path, length_sort_pool=100, **kw)  # one pool per group

    def batches(dm):
        out = {}
        for s in range(dm.plan.steps_per_epoch(0)):
            name, _, _, rows = dm.global_batch_rows(0, s)
            out.setdefault(name, []).append(dm.views[[v.name for v in dm.views].index(name)].lengths[rows])
        return out

    for name, lengths in batches(pooled).items():
        ordered = sorted(lengths, key=lambda x: x.min())
        assert all(a.max() <= b.min() for a, b in zip(ordered, ordered[1:])), name
        assert sum(map(len, lengths)) == sum(map(len, batches(plain)[name]))
    spread = lambda dm: np.mean([x.max() - x.min() for v in batches(dm).values() for x in v])  # noqa: E731
    assert spread(pooled) < 0.5 * spread(plain)


def test_bucket_key_counts_negatives_only_when_used(tmp_path, tokenizer):
    lines = [{"query": f"q{i}", "pos": ["short"], "neg": ["long " * 40]} for i in range(6)]
    path = write_jsonl(tmp_path / "x.jsonl", lines)
    for group_size, bucket in ((1, 0), (2, 3)):
        dm = make(path, tokenizer, tmp_path, group_size=group_size, length_estimate="exact")
        assert {g.bucket for g in dm.plan.groups} == {bucket}
