"""Errors raised for bad training data: each names the file, the line and the field at fault."""
from __future__ import annotations


class DataError(ValueError):
    """Base class of every training-data error."""


class BadLineError(DataError):
    """A line of a training file that cannot be used.

    ``str(err)`` reads ``"<path>:<line>: field '<field>': <message>"`` (``line`` is 1-based); for a table source
    (``unit="row"``: parquet, arrow, a saved dataset) ``"<path>: row <line - 1>: field …"`` (the 0-based row).
    """

    def __init__(self, path: str, line: int, field: str, message: str, unit: str = "line"):
        self.path, self.line, self.field, self.message, self.unit = path, line, field, message, unit
        location = f"{path}: row {line - 1}" if unit == "row" else f"{path}:{line}"
        super().__init__(f"{location}: field '{field}': {message}")

    def __reduce__(self):
        return (type(self), (self.path, self.line, self.field, self.message, self.unit))


class EmptyDatasetError(DataError):
    """A dataset with no usable line (after skipping bad lines or filtering)."""


class DataConfigError(DataError):
    """Inconsistent data configuration (bucket table, weights, paths)."""
