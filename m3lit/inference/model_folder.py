"""What a model folder must hold before anything loads from it, and the marker of a complete m3lit export.

An export is written to ``<name>.incomplete-<pid>`` and renamed to ``<name>`` after its last file, the marker
``m3lit_export.json`` (every file with its size), so an interrupted export never sits under the final name."""
from __future__ import annotations

import json
import os

from ..model.m3 import COLBERT_FILE, SPARSE_FILE

EXPORT_MARKER = "m3lit_export.json"
INCOMPLETE = ".incomplete-"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "sentencepiece.bpe.model", "spiece.model", "tokenizer.model", "vocab.txt",
                   "vocab.json")
HEAD_FILES = {"sparse": SPARSE_FILE, "colbert": COLBERT_FILE}


class IncompleteModelError(FileNotFoundError):
    """A model folder that lacks files it needs (named in the message)."""


def check_tokenizer_folder(path: str) -> None:
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such directory (tokenizers are loaded from local directories)")
    if not any(os.path.isfile(os.path.join(path, f)) for f in TOKENIZER_FILES):
        raise IncompleteModelError(f"{path}: no tokenizer files (expected one of {', '.join(TOKENIZER_FILES)}; "
                                   f"found {_listing(path)})")


def check_model_folder(path: str, fresh_heads: bool = False) -> None:
    """Refuse a folder that is not a complete model: no encoder config or weights, no tokenizer, a head file
    missing (unless ``fresh_heads``: the missing heads are then initialised fresh and count as untrained), an
    m3lit export whose marker lists files that are missing or of another size, or an interrupted export."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such directory")
    if INCOMPLETE in os.path.basename(os.path.normpath(path)):
        raise IncompleteModelError(f"{path}: an interrupted export (it is renamed to its final name only once "
                                   "complete); export the model again")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise IncompleteModelError(f"{path}: not a model folder (no config.json; found {_listing(path)})")
    if not any(os.path.isfile(os.path.join(path, f)) for f in WEIGHT_FILES):
        raise IncompleteModelError(f"{path}: no encoder weights (expected one of {', '.join(WEIGHT_FILES)})")
    check_tokenizer_folder(path)
    marker = os.path.join(path, EXPORT_MARKER)
    if os.path.isfile(marker):
        with open(marker) as f:
            listed = json.load(f).get("files", {})
        bad = [name for name, size in listed.items() if not os.path.isfile(os.path.join(path, name))
               or os.path.getsize(os.path.join(path, name)) != size]
        if bad:
            raise IncompleteModelError(f"{path}: incomplete or modified export: {', '.join(sorted(bad))} missing or "
                                       f"not of the size {EXPORT_MARKER} lists")
    missing = [f"{name} ({head} head)" for head, name in HEAD_FILES.items()
               if not os.path.isfile(os.path.join(path, name))]
    if missing and not fresh_heads:
        raise IncompleteModelError(
            f"{path}: missing {', '.join(missing)}; a BGE-M3 folder holds every head's weights. To use it with "
            "freshly initialised (untrained) heads on purpose, load with fresh_heads=True (m3lit-eval "
            "fresh_heads=true, m3lit-encode --fresh-heads); those heads are then left out as untrained")


def write_export_marker(directory: str) -> None:
    """List every file of ``directory`` with its size in the marker (written last; the folder itself is renamed
    into place afterwards)."""
    files = {name: os.path.getsize(os.path.join(directory, name)) for name in sorted(os.listdir(directory))
             if os.path.isfile(os.path.join(directory, name)) and name != EXPORT_MARKER}
    with open(os.path.join(directory, EXPORT_MARKER), "w") as f:
        json.dump({"format": "bge-m3", "files": files}, f, indent=2)


def _listing(path: str, limit: int = 8) -> str:
    names = sorted(os.listdir(path))
    if not names:
        return "an empty folder"
    return ", ".join(names[:limit]) + (f", … ({len(names)} entries)" if len(names) > limit else "")
