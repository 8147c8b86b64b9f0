"""Default assets: a synthetic multilingual retrieval corpus and a tokenizer trained on it, made offline.

``ensure_default_assets(root)`` generates them once into ``root`` (about ten seconds) and afterwards only
returns their paths. The cache folder name carries the seed and a hash of the generator (its source files, a
format number and the ``tokenizers`` version), so a changed generator writes a new folder; a folder is built
in a temporary sibling and renamed into place when complete, so an interrupted run never leaves a partial one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import tokenizers

from m3lit.assets.lexicon import LANGUAGES, SCRIPTS
from m3lit.assets.synthetic import write_corpus
from m3lit.assets.tokenizer import train_tokenizer

__all__ = ["LANGUAGES", "SCRIPTS", "DefaultAssets", "build_assets", "ensure_default_assets", "generator_version"]

FORMAT_VERSION = 1
STAMP = "ASSETS.json"
_SOURCES = ("lexicon.py", "synthetic.py", "tokenizer.py")
_STALE_TMP_SECONDS = 600


@dataclass(frozen=True)
class DefaultAssets:
    """Paths of one generated asset folder."""

    root: Path
    train_dir: Path  # FlagEmbedding jsonl files: <lang>.jsonl, xling_<lang>-en.jsonl, distill_en.jsonl
    dev_dir: Path  # one BEIR folder per language: <lang>/{corpus.jsonl, queries.jsonl, qrels/test.tsv}
    tokenizer_dir: Path  # Hugging Face tokenizer folder (XLM-R layout)

    @property
    def train_files(self) -> list[Path]:
        """The training jsonl files, sorted by name."""
        return sorted(self.train_dir.glob("*.jsonl"))

    @property
    def dev_sets(self) -> dict[str, Path]:
        """Language → BEIR folder of the held-out split."""
        return {path.name: path for path in sorted(self.dev_dir.iterdir()) if path.is_dir()}


def generator_version() -> str:
    """12 hex digits identifying the generator: format number, ``tokenizers`` version and source files."""
    digest = hashlib.sha256(f"{FORMAT_VERSION}:{tokenizers.__version__}".encode())
    for name in _SOURCES:
        digest.update((Path(__file__).parent / name).read_bytes())
    return digest.hexdigest()[:12]


def _paths(folder: Path) -> DefaultAssets:
    return DefaultAssets(folder, folder / "train", folder / "dev", folder / "tokenizer")


def build_assets(out_dir: str | Path, seed: int = 0) -> DefaultAssets:
    """Generate corpus and tokenizer into ``out_dir`` (no caching) and write the stamp file last."""
    start = time.perf_counter()
    assets = _paths(Path(out_dir))
    write_corpus(assets.root, seed)
    train_tokenizer(assets.train_dir, assets.tokenizer_dir)
    stamp = {
        "format": FORMAT_VERSION,
        "generator": generator_version(),
        "seed": seed,
        "languages": list(LANGUAGES),
        "seconds": round(time.perf_counter() - start, 2),
    }
    (assets.root / STAMP).write_text(json.dumps(stamp, indent=2) + "\n", encoding="utf-8")
    return assets


def _remove_stale_tmp(root: Path, name: str) -> None:
    """Delete temporary folders of ``name`` left by runs that were interrupted long ago."""
    for path in root.glob(f".{name}.*"):
        try:
            if time.time() - path.stat().st_mtime > _STALE_TMP_SECONDS:
                shutil.rmtree(path, ignore_errors=True)
        except FileNotFoundError:
            continue


def ensure_default_assets(root: str | Path, seed: int = 0) -> DefaultAssets:
    """Paths of the default assets for ``seed`` under ``root``, generating them first if missing.

    Safe to call from several processes at once: each builds in its own temporary folder and the first complete
    one is renamed into place (the others are discarded; all are byte-identical).
    """
    root = Path(root).expanduser()
    target = root / f"synthetic-seed{seed}-{generator_version()}"
    if (target / STAMP).is_file():
        return _paths(target)
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(root, target.name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
    try:
        build_assets(tmp, seed)
        if target.exists() and not (target / STAMP).is_file():
            shutil.rmtree(target)  # not made by this function (renames only complete folders): replace it
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / STAMP).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _paths(target)
