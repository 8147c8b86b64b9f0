"""Errors raised for bad training data: each names the file, the line and the field at fault."""
from __future__ import annotations


class DataError(ValueError):
    """Base class of every training-data error."""


class BadLineError(DataError):
    """A line of a training file that cannot be used.

    ``str(err)`` reads ``"<path>:<line>: field '<field>': <message>"`` (``line`` is 1-based).
    """

    def __init__(self, path: str, line: int, field: str, message: str):
        self.path, self.line, self.field, self.message = path, line, field, message
        super().__init__(f"{path}:{line}: field '{field}': {message}")

    def __reduce__(self):
        return (type(self), (self.path, self.line, self.field, self.message))


class EmptyDatasetError(DataError):
    """A dataset with no usable line (after skipping bad lines or filtering)."""


class DataConfigError(DataError):
    """Inconsistent data configuration (bucket table, weights, paths)."""
