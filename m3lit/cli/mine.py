"""``m3lit-mine``: rewrite FlagEmbedding training jsonl with hard negatives mined by a model's own heads.

    m3lit-mine model_path=DIR data=FILE.jsonl output=OUT.jsonl [mode=dense+sparse] [range=[10,100]] [scores=true]

Configuration: ``conf/mine/mine.yaml``; unknown keys are errors. The work: :mod:`m3lit.mining`.
"""
from __future__ import annotations

import logging
import os

import hydra
from omegaconf import DictConfig, OmegaConf

from .errors import report_errors
from .resolvers import CONFIG_PACKAGE, check_known_keys, package_dir

# a config root of its own: in m3lit.conf, ``data=FILE`` would select the training ``data`` group
MINE_CONFIG_PACKAGE = f"{CONFIG_PACKAGE}.mine"

log = logging.getLogger("m3lit.cli.mine")


def check_paths(cfg: DictConfig) -> None:
    """Before any model is loaded: the input exists and the output is a new file name in an existing folder."""
    if not os.path.isfile(cfg.data):
        raise FileNotFoundError(f"data={cfg.data}: no such file")
    output = str(cfg.output)
    if not output.endswith((".jsonl", ".jsonl.gz")):
        raise ValueError(f"output={output}: expected a .jsonl or .jsonl.gz file name")
    parent = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"output={output}: the folder {parent} does not exist")
    if os.path.exists(output) and os.path.samefile(output, cfg.data):
        raise ValueError(f"output={output} is the input file; choose another name")
    if cfg.corpus is not None and not os.path.exists(cfg.corpus):
        raise FileNotFoundError(f"corpus={cfg.corpus}: no such file or folder")


def run(cfg: DictConfig):
    """Mine as configured by ``cfg`` (see conf/mine.yaml); returns the :class:`MiningReport`."""
    import torch

    from ..mining.corpus import load_corpus
    from ..mining.miner import MiningSettings, mine_file
    from ..mining.selection import SelectionRules
    from .evaluate import load_encoder

    check_paths(cfg)
    if len(cfg.range) != 2:
        raise ValueError(f"range={list(cfg.range)}: expected [lo, hi]")
    rules = SelectionRules(negatives=int(cfg.negatives), rank_range=(int(cfg.range[0]), int(cfg.range[1])),
                           margin=cfg.margin, relative_margin=cfg.relative_margin, near_duplicate=cfg.near_duplicate,
                           sample=cfg.sample, fill=cfg.fill)
    settings = MiningSettings(
        mode=cfg.mode, hybrid_weights=dict(cfg.hybrid_weights), query_max_length=cfg.query_max_length,
        passage_max_length=cfg.passage_max_length, batch_size=cfg.batch_size, max_tokens=cfg.max_tokens,
        chunk_lines=cfg.chunk_lines, dense_backend=cfg.dense_backend, seed=cfg.seed, scores=bool(cfg.scores),
        score_weights=dict(cfg.score_weights), prompt=cfg.prompt, prompt_format=cfg.prompt_format)
    corpus = load_corpus(cfg.corpus, cfg.corpus_field) if cfg.corpus is not None else None
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    embedder = load_encoder(cfg.model_path, cfg.device, cfg.dtype)
    report = mine_file(embedder, cfg.data, cfg.output, rules, settings, corpus)
    print(report.summary())
    print(f"written: {os.path.abspath(cfg.output)}")
    return report


def check_keys(cfg: DictConfig) -> None:
    """Reject keys that m3lit-mine's config does not define (also those added with Hydra's ``+key=``)."""
    check_known_keys(cfg, os.path.join(package_dir(MINE_CONFIG_PACKAGE), "mine.yaml"), "m3lit-mine")


@hydra.main(version_base="1.3", config_path=f"pkg://{MINE_CONFIG_PACKAGE}", config_name="mine")
@report_errors("m3lit-mine")
def main(cfg: DictConfig) -> None:
    check_keys(cfg)
    OmegaConf.set_readonly(cfg, True)
    run(cfg)


if __name__ == "__main__":
    main()
