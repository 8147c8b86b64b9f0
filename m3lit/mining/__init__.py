"""Hard-negative mining with the model's own heads (``m3lit-mine``): corpus, candidate selection, the mining run."""
from .corpus import MiningCorpus, corpus_from_training_file, load_corpus
from .selection import SelectionRules, select_negatives

__all__ = ["MiningCorpus", "SelectionRules", "corpus_from_training_file", "load_corpus", "select_negatives"]
