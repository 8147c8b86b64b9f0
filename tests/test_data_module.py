"""M3DataModule end to end without a trainer: batch contract, same-dataset global batches, determinism."""
import pytest
import torch

from m3lit.data import M3DataModule
from m3lit.data.synthetic import synthetic_lines, write_jsonl


@pytest.fixture
def corpus(tmp_path):
    folder = tmp_path / "train"
    folder.mkdir()
    write_jsonl(folder / "de.jsonl", synthetic_lines(40, language="de", seed=1))
    write_jsonl(folder / "fr.jsonl.gz", synthetic_lines(30, language="fr", seed=2, scores=True))
    write_jsonl(folder / "ja.jsonl", synthetic_lines(20, seed=3, n_neg=2))  # no language field: file name
    return folder


def make(corpus, tokenizer, tmp_path, **kw):
    kw = {"batch_size": 4, "bucket_boundaries": [0, 64, 128, 8192], "group_size": 4, "passage_max_len": 256,
          "query_max_len": 32, "cache_dir": str(tmp_path / "cache"), **kw}
    dm = M3DataModule(str(corpus), tokenizer, seed=7, **kw)
    dm.setup("fit")
    return dm


def epoch_batches(dm):
    return list(dm.train_dataloader())


def test_batch_contract(corpus, tokenizer, tmp_path):
    dm = make(corpus, tokenizer, tmp_path)
    batches = epoch_batches(dm)
    assert len(batches) == len(dm.train_dataloader())
    for batch in batches:
        q, p, meta = batch["queries"], batch["passages"], batch["meta"]
        b, g = meta["batch_size"], meta["group_size"]
        assert g == 4 and q["input_ids"].shape[0] == b and p["input_ids"].shape[0] == b * g
        for enc in (q, p):
            assert enc["input_ids"].dtype == torch.long and enc["attention_mask"].dtype == torch.long
            assert enc["input_ids"].shape[1] % 8 == 0
            assert torch.all(enc["input_ids"][:, 0] == tokenizer.cls_token_id)
            # right padding: mask is 1...1 0...0 and the last real token is </s>
            lengths = enc["attention_mask"].sum(1)
            assert torch.equal(enc["attention_mask"], (torch.arange(enc["input_ids"].shape[1]) < lengths[:, None]).long())
            assert torch.all(enc["input_ids"][torch.arange(len(lengths)), lengths - 1] == tokenizer.eos_token_id)
        assert p["input_ids"].shape[1] <= 256 and q["input_ids"].shape[1] <= 32
        assert meta["real_tokens"] == int(q["attention_mask"].sum() + p["attention_mask"].sum())
        assert meta["padded_tokens"] == q["input_ids"].numel() + p["input_ids"].numel()
        assert meta["language"] == meta["dataset"]
        if meta["dataset"] == "fr":
            assert batch["teacher_scores"].shape == (b, g) and batch["teacher_scores"].dtype == torch.float32
            # the positive's score (>= 0.5 in the synthetic data) comes first, negatives' (< 0.5) after it
            assert torch.all(batch["teacher_scores"][:, 0] >= 0.5) and torch.all(batch["teacher_scores"][:, 1:] < 0.5)
        else:
            assert batch["teacher_scores"] is None
        assert batch["no_in_batch_neg"] is False
        if meta["dataset"] == "ja":  # 2 negatives for 3 slots: one repeat per query
            assert meta["neg_repeats"] == b


def test_one_epoch_covers_every_line_once(corpus, tokenizer, tmp_path):
    dm = make(corpus, tokenizer, tmp_path)
    seen = {}
    for batch in epoch_batches(dm):
        m = batch["meta"]
        seen.setdefault(m["dataset"], []).extend(m["rows"])
    assert {k: sorted(v) for k, v in seen.items()} == {"de": list(range(40)), "fr": list(range(30)), "ja": list(range(20))}
    # groups: the positive is the line's own, the negatives are distinct lines' own negatives
    batch = epoch_batches(dm)[0]
    texts = tokenizer.batch_decode(batch["passages"]["input_ids"], skip_special_tokens=True)
    g = batch["meta"]["group_size"]
    for i, row in enumerate(batch["meta"]["rows"]):
        group = [t.replace(" ", "") for t in texts[i * g : (i + 1) * g]]
        assert group[0].startswith(f"p{row}.")
        if batch["meta"]["dataset"] != "ja":
            assert len(set(group[1:])) == g - 1 and all(t.startswith(f"n{row}.") for t in group[1:])


def test_deterministic_and_epoch_dependent(corpus, tokenizer, tmp_path):
    first = [b["meta"]["rows"] for b in epoch_batches(make(corpus, tokenizer, tmp_path))]
    dm = make(corpus, tokenizer, tmp_path)
    again = epoch_batches(dm)
    assert [b["meta"]["rows"] for b in again] == first
    epoch1 = [b["meta"]["rows"] for b in epoch_batches(dm)]  # second iteration = epoch 1
    assert epoch1 != first
    a, b = again[0], epoch_batches(make(corpus, tokenizer, tmp_path))[0]
    assert torch.equal(a["passages"]["input_ids"], b["passages"]["input_ids"])


def test_sources_folder_glob_list_mapping(corpus, tmp_path):
    from m3lit.data import DatasetOptions, resolve_datasets

    d = DatasetOptions()
    names = lambda specs: sorted(s.name for s in specs)  # noqa: E731
    assert names(resolve_datasets(str(corpus), d)) == ["de", "fr", "ja"]
    assert names(resolve_datasets(str(corpus / "*.jsonl"), d)) == ["de", "ja"]
    assert names(resolve_datasets([str(corpus / "de.jsonl"), str(corpus / "fr.jsonl.gz")], d)) == ["de", "fr"]
    (merged,) = resolve_datasets([{"path": str(corpus), "name": "all", "group_size": 2, "language": "xx"}], d)
    assert merged.name == "all" and len(merged.files) == 3
    assert merged.options.group_size == 2 and merged.options.language == "xx" and merged.options.query_max_len == 512
