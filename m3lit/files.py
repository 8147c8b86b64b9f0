"""Atomic outputs: whatever is written appears under its final name complete, or not at all."""
from __future__ import annotations

import os
import shutil
from typing import IO, Callable


def remove_path(path: str) -> None:
    """Remove a file, link or folder if present."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def replace_path(tmp: str, final: str) -> None:
    """Move ``tmp`` (file or folder) to ``final``; a folder already at ``final`` is moved aside first and removed
    once ``tmp`` has taken its place."""
    if os.path.isdir(final) and not os.path.islink(final):
        aside = f"{final}.replaced-{os.getpid()}"
        remove_path(aside)
        os.replace(final, aside)
        os.replace(tmp, final)
        remove_path(aside)
    else:
        os.replace(tmp, final)


def write_file_atomically(path: str, write: Callable[[IO], None], binary: bool = False) -> None:
    """``write(f)`` into ``<path>.tmp-<pid>``, then renamed to ``path`` (the temporary file never stays behind)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") if binary else open(tmp, "w", encoding="utf-8") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
