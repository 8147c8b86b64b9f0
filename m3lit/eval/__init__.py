"""Retrieval evaluation: BEIR loading, exact search per head, hybrids, metrics, tables, training callback."""
from .beir import BeirDataset, BeirFormatError, find_beir_datasets, load_beir, load_beir_datasets
from .corpus_encoding import ColbertStore, EncodedTexts, encode_texts
from .evaluator import RetrievalSettings, encode_dataset, evaluate_beir, evaluate_dataset, search_dataset
from .hybrid import DEFAULT_HYBRIDS, DEFAULT_WEIGHTS, hybrid_search, hybrids_from_names
from .metrics import DEFAULT_METRICS, evaluate_ranked, evaluate_run
from .search import Ranking, colbert_search, dense_search, rerank, sparse_search
from .tables import average_results, format_metric_table, format_results

__all__ = [
    "BeirDataset", "BeirFormatError", "find_beir_datasets", "load_beir", "load_beir_datasets",
    "ColbertStore", "EncodedTexts", "encode_texts", "RetrievalSettings", "encode_dataset", "evaluate_beir",
    "evaluate_dataset", "search_dataset",
    "DEFAULT_HYBRIDS", "DEFAULT_WEIGHTS", "hybrid_search", "hybrids_from_names", "DEFAULT_METRICS",
    "evaluate_ranked", "evaluate_run", "average_results", "format_results", "format_metric_table", "Ranking",
    "colbert_search", "dense_search", "rerank", "sparse_search",
]
