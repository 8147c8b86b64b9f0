"""Training data: FlagEmbedding jsonl reading, length buckets, same-dataset global batches, collate, DataModule."""
from .buckets import BucketTable
from .datamodule import M3DataModule
from .errors import BadLineError, DataConfigError, DataError, EmptyDatasetError
from .records import TrainRecord, parse_record
from .sources import DatasetOptions, DatasetSpec, resolve_datasets

__all__ = [
    "BadLineError",
    "BucketTable",
    "DataConfigError",
    "DataError",
    "DatasetOptions",
    "DatasetSpec",
    "EmptyDatasetError",
    "M3DataModule",
    "TrainRecord",
    "parse_record",
    "resolve_datasets",
]
