"""Add translations to debdesc's training files for ``teacher=views view=translation``.

    python sweeps/tools/pair_translations.py ../shared/data/debdesc/train /tmp/debdesc_paired
    m3lit-train experiment=debdesc_translation model.tokenizer_path=/tmp/debdesc_tokenizer

debdesc describes the same Debian packages in several languages: ``<L>`` lines pair a query in L with a passage in
L, ``xling_<L>-en`` lines a query in L with the English passage, ``en`` lines an English query with it. Lines that
share a text are translations of one another:

- an ``<L>`` line and an ``xling_<L>-en`` line with the same query: their positives are translations
  (``pos_translation``: the L passage ↔ the English one);
- an ``en`` line and an ``xling_<L>-en`` line with the same positive: their queries are translations
  (``query_translation``: the English query ↔ the L one; an ``en`` line found in several ``xling`` files takes the
  first language in file-name order).

Every line of every input file is written to the output folder under its file name (``.jsonl``), with the fields
added where a partner exists; the counts per file are printed.
"""
from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
from pathlib import Path
from typing import Sequence

XLING = re.compile(r"^xling_(?P<lang>.+)-en$")


def read_lines(path: Path) -> list[dict]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def stem(path: Path) -> str:
    return path.name.removesuffix(".gz").removesuffix(".jsonl")


def pair(files: dict[str, list[dict]]) -> dict[str, dict[str, int]]:
    """Adds ``query_translation`` / ``pos_translation`` to the lines of ``files`` (name → lines) in place; returns
    the counts per file."""
    counts = {name: {"lines": len(lines), "query_translation": 0, "pos_translation": 0} for name, lines in files.items()}
    english = {line["pos"][0]: line for line in files.get("en", []) if len(line["pos"]) == 1}
    for name in sorted(files):
        match = XLING.match(name)
        if not match:
            continue
        lang = match.group("lang")
        monolingual = {line["query"]: line for line in files.get(lang, []) if len(line["pos"]) == 1}
        for line in files[name]:
            if len(line["pos"]) != 1:
                continue
            partner = monolingual.get(line["query"])
            if partner is not None and "pos_translation" not in line:
                line["pos_translation"], partner["pos_translation"] = list(partner["pos"]), list(line["pos"])
                counts[name]["pos_translation"] += 1
                counts[lang]["pos_translation"] += 1
            en = english.get(line["pos"][0])
            if en is not None and "query_translation" not in line:
                line["query_translation"] = en["query"]
                counts[name]["query_translation"] += 1
                if "query_translation" not in en:
                    en["query_translation"] = line["query"]
                    counts["en"]["query_translation"] += 1
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("train_dir", help="debdesc's train folder (<L>.jsonl.gz, xling_<L>-en.jsonl.gz)")
    parser.add_argument("output_dir")
    args = parser.parse_args(argv)
    paths = sorted(p for p in Path(args.train_dir).iterdir() if p.name.endswith((".jsonl", ".jsonl.gz")))
    if not paths:
        print(f"error: no *.jsonl(.gz) files in {args.train_dir}", file=sys.stderr)
        return 2
    files = {stem(p): read_lines(p) for p in paths}
    counts = pair(files)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, lines in files.items():
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
    for name, c in counts.items():
        print(f"{name:16s} {c['lines']:5d} lines  {c['query_translation']:4d} query_translation  "
              f"{c['pos_translation']:4d} pos_translation")
    return 0


if __name__ == "__main__":
    sys.exit(main())
