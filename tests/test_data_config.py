"""conf/data/*.yaml instantiate M3DataModule through Hydra with a tokenizer and a seed, as train.py does."""
import os

import hydra
from hydra import compose, initialize_config_dir
from transformers import AutoTokenizer

from m3lit.data import M3DataModule
from m3lit.data.buckets import PAPER_BATCH_SIZES, PAPER_BOUNDARIES
from m3lit.data.synthetic import synthetic_lines, write_jsonl

CONF = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf", "data")


def test_configs_instantiate(tmp_path, tiny_m3_dir):
    path = write_jsonl(tmp_path / "de.jsonl", synthetic_lines(12, language="de", seed=0))
    tokenizer = AutoTokenizer.from_pretrained(tiny_m3_dir)
    overrides = [f"train={path}", f"cache_dir={tmp_path / 'cache'}"]
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        default = compose("default", overrides=overrides)
        budget = compose("budget", overrides=overrides + ["group_size=4"])
    dm = hydra.utils.instantiate(default, tokenizer=tokenizer, seed=3)
    assert isinstance(dm, M3DataModule) and dm.seed == 3
    assert dm.table.boundaries == PAPER_BOUNDARIES and dm.table.batch_size == PAPER_BATCH_SIZES
    assert dm.specs[0].options.group_size == 8 and dm.specs[0].options.passage_max_len == 8192
    dm = hydra.utils.instantiate(budget, tokenizer=tokenizer, seed=3)
    assert dm.table.token_budget == 131072 and dm.specs[0].options.group_size == 4
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["passages"]["input_ids"].shape[0] == 4 * batch["queries"]["input_ids"].shape[0]
    for key, value in batch["meta"].items():
        assert isinstance(value, (int, float, str, bool)) or (key == "rows" and isinstance(value, list)), key
