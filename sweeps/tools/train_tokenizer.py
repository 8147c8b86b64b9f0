"""Train an XLM-R-layout Unigram tokenizer on FlagEmbedding jsonl(.gz) training data (e.g. a real corpus such as
debdesc, whose scripts the embedded default's synthetic-text tokenizer covers poorly).

    python sweeps/tools/train_tokenizer.py ../shared/data/debdesc/train /tmp/debdesc_tokenizer --vocab-size 16000
    m3lit-train experiment=debdesc model.tokenizer_path=/tmp/debdesc_tokenizer

Texts: every distinct query, positive and negative (at most --max-lines lines per file). The ``tokenizers``
UnigramTrainer learns the pieces with the same pre-tokenizer (whitespace split + Metaspace) as the embedded
default; the result is saved in the embedded default's layout (``m3lit.assets.tokenizer``: <s>=0, <pad>=1,
</s>=2, <unk>=3, pieces, <mask> last), which ``transformers.AutoTokenizer`` loads as ``XLMRobertaTokenizer``.
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path
from typing import Iterator, Sequence

from tokenizers import Tokenizer, models, trainers

from m3lit.assets.tokenizer import MASK_TOKEN, SPECIAL_TOKENS, _pre_tokenizer, build_tokenizer, save_tokenizer


def jsonl_files(paths: Sequence[str]) -> list[Path]:
    """The ``*.jsonl`` / ``*.jsonl.gz`` files among ``paths`` (folders are searched, sorted)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.name.endswith((".jsonl", ".jsonl.gz")))
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    if not files:
        raise FileNotFoundError(f"no *.jsonl(.gz) files in {', '.join(paths)}")
    return files


def texts(files: Sequence[Path], max_lines: int | None = None) -> Iterator[str]:
    """Distinct queries and passages, file by file (first ``max_lines`` lines of each)."""
    seen: set[str] = set()
    for path in files:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if max_lines is not None and number > max_lines:
                    break
                try:
                    record = json.loads(line)
                    items = [record["query"], *record["pos"], *record.get("neg", [])]
                except (json.JSONDecodeError, KeyError, TypeError) as err:
                    raise ValueError(f"{path}: line {number}: not a training line ({err})") from None
                for text in items:
                    if isinstance(text, str) and text not in seen:
                        seen.add(text)
                        yield text


def train(files: Sequence[Path], out_dir: str, vocab_size: int = 16000, max_lines: int | None = None,
          max_piece_length: int = 12) -> Path:
    """Learn ``vocab_size`` ids (specials included) and save the tokenizer folder; returns it."""
    learner = Tokenizer(models.Unigram())
    learner.pre_tokenizer = _pre_tokenizer()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size - 1, special_tokens=list(SPECIAL_TOKENS),
                                      unk_token=SPECIAL_TOKENS[3], max_piece_length=max_piece_length,
                                      show_progress=False)
    learner.train_from_iterator(texts(files, max_lines), trainer=trainer)
    learned = json.loads(learner.to_str())["model"]["vocab"]
    pieces = {piece: score for piece, score in learned if piece not in SPECIAL_TOKENS and piece != MASK_TOKEN}
    return save_tokenizer(build_tokenizer(pieces), out_dir)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", help="training jsonl(.gz) files or folders, then the output folder")
    parser.add_argument("--vocab-size", type=int, default=16000)
    parser.add_argument("--max-lines", type=int, default=None, help="first N lines of each file")
    args = parser.parse_args(argv)
    if len(args.inputs) < 2:
        parser.error("give the training data and the output folder")
    *sources, out_dir = args.inputs
    try:
        path = train(jsonl_files(sources), out_dir, args.vocab_size, args.max_lines)
    except (FileNotFoundError, ValueError) as err:
        print(f"train_tokenizer: {err}", file=sys.stderr)
        return 2
    print(f"tokenizer: {path} ({Tokenizer.from_file(str(path / 'tokenizer.json')).get_vocab_size()} ids)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
