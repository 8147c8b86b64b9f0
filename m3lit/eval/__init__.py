"""Retrieval evaluation: BEIR loading, exact search per head, hybrids, metrics, tables, training callback.

The names below are imported lazily from their modules, so that reading BEIR files (``m3lit.eval.beir``) does not
import torch and Lightning."""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "beir": ["BeirDataset", "BeirFormatError", "find_beir_datasets", "load_beir", "load_beir_datasets"],
    "corpus_encoding": ["ColbertStore", "EncodedTexts", "encode_texts"],
    "evaluator": ["RetrievalSettings", "encode_dataset", "evaluate_beir", "evaluate_dataset", "search_dataset"],
    "hybrid": ["DEFAULT_HYBRIDS", "DEFAULT_WEIGHTS", "hybrid_search", "hybrids_from_names"],
    "metrics": ["DEFAULT_METRICS", "evaluate_ranked", "evaluate_run"],
    "search": ["Ranking", "colbert_search", "dense_search", "rerank", "sparse_search"],
    "tables": ["average_results", "format_metric_table", "format_results"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
