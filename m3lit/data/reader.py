"""Random access to indexed lines with ``os.pread`` (one file descriptor per process, reopened after fork)."""
from __future__ import annotations

import os

from .index import FileIndex
from .records import TrainRecord, parse_record


class LineReader:
    """Reads line ``row`` of an indexed file and parses it into a :class:`TrainRecord`."""

    def __init__(self, path: str, text_path: str):
        self.path, self.text_path = path, text_path
        self._fd: int | None = None
        self._pid: int | None = None

    def _descriptor(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.text_path, os.O_RDONLY), os.getpid()
        return self._fd

    def raw(self, index: FileIndex, row: int) -> bytes:
        return os.pread(self._descriptor(), int(index.nbytes[row]), int(index.start[row]))

    def record(self, index: FileIndex, row: int) -> TrainRecord:
        return parse_record(self.raw(index, row), self.path, int(index.line_no[row]))

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None

    def __getstate__(self):
        return {"path": self.path, "text_path": self.text_path, "_fd": None, "_pid": None}
