"""Offline, deterministic training of a small XLM-R-style Unigram tokenizer, saved as a Hugging Face folder.

Layout (what ``transformers.AutoTokenizer.from_pretrained`` loads as ``XLMRobertaTokenizer``):
``<s>``=0 (cls/bos), ``<pad>``=1, ``</s>``=2 (eos/sep), ``<unk>``=3, learned pieces, ``<mask>`` last;
no normaliser, whitespace split + Metaspace pre-tokenisation (``▁`` marks a word start) — the pipeline
``XLMRobertaTokenizer`` rebuilds from the vocabulary, so ``tokenizers`` and ``transformers`` agree —
``<s> A </s>`` and ``<s> A </s></s> B </s>`` templates, right padding, ``model_max_length`` 8192.

Training is Viterbi (hard-EM) Unigram learning, with the ``tokenizers`` Unigram model doing the segmentation:
seed pieces = every character plus the most frequent substrings (scored by frequency × length, as
SentencePiece seeds; at most two CJK ideographs, so Chinese pieces rarely glue words together), score(piece) = log(count / total) of its uses in the best segmentation of the corpus;
each round prunes (at most 25 % of) the pieces whose removal loses least likelihood — count × (score − score of
its best split into shorter pieces) — until ``vocab_size`` is reached. All counts are integers and
ties break on the piece string, so the same texts give byte-identical files (``tokenizers``' own
``UnigramTrainer`` iterates a randomly seeded hash map and does not).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>")
MASK_TOKEN = "<mask>"
UNK_ID = 3
MODEL_MAX_LENGTH = 8192
DEFAULT_VOCAB_SIZE = 3000
MAX_PIECE_LENGTH = 10
MAX_CJK_PIECE_LENGTH = 2  # most Chinese words have two characters; longer pieces mostly glue words together
SEED_SIZE = 20000
SHRINK = 0.75
FINAL_ITERATIONS = 2
_META = "▁"


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement=_META, prepend_scheme="always")]
    )


def word_counts(texts: Iterable[str]) -> Counter[str]:
    """Words as the pre-tokenizer emits them (whitespace split, ``▁`` prepended) and their frequencies."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(_META + word for word in text.split())
    return counts


def _cjk_length(piece: str) -> int:
    """Number of CJK ideographs in ``piece``."""
    return sum("\u4e00" <= ch <= "\u9fff" for ch in piece)


def _seed_pieces(words: Counter[str]) -> dict[str, int]:
    """All characters plus the :data:`SEED_SIZE` best substrings (2..MAX_PIECE_LENGTH chars, frequency ≥ 2)."""
    chars: Counter[str] = Counter()
    substrings: Counter[str] = Counter()
    for word, freq in words.items():
        for i in range(len(word)):
            chars[word[i]] += freq
            for j in range(i + 2, min(len(word), i + MAX_PIECE_LENGTH) + 1):
                substrings[word[i:j]] += freq
    ranked = sorted(
        (p for p, f in substrings.items() if f >= 2 and _cjk_length(p) <= MAX_CJK_PIECE_LENGTH),
        key=lambda p: (-substrings[p] * len(p), p),
    )
    return {**chars, **{p: substrings[p] for p in ranked[:SEED_SIZE]}}


def _segment_counts(pieces: dict[str, float], words: Counter[str]) -> Counter[str]:
    """How often each piece occurs in the best (Viterbi) segmentation of every word, weighted by frequency."""
    vocab = [("<unk>", 0.0), *sorted(pieces.items())]
    model = Tokenizer(models.Unigram(vocab, unk_id=0, byte_fallback=False))
    items = sorted(words.items())
    counts: Counter[str] = Counter()
    for (_, freq), encoding in zip(items, model.encode_batch([w for w, _ in items], add_special_tokens=False)):
        for token in encoding.tokens:
            counts[token] += freq
    return counts


def _log_probs(counts: dict[str, int], pieces: Iterable[str]) -> dict[str, float]:
    """log(count / total); unused pieces (kept characters) get the lowest score minus one."""
    total = sum(counts.get(p, 0) for p in pieces)
    scores = {p: math.log(counts[p] / total) for p in pieces if counts.get(p, 0) > 0}
    floor = min(scores.values()) - 1.0
    return {p: scores.get(p, floor) for p in pieces}


def _removal_loss(scores: dict[str, float], counts: Counter[str]) -> dict[str, float]:
    """Log-likelihood lost by removing each multi-character piece: count × (score − best split into shorter pieces)."""
    loss: dict[str, float] = {}
    lengths = sorted({len(p) for p in scores if len(p) > 1})
    for length in lengths:
        targets = sorted(p for p in scores if len(p) == length)
        shorter = [("<unk>", 0.0), *sorted((p, s) for p, s in scores.items() if len(p) < length)]
        model = Tokenizer(models.Unigram(shorter, unk_id=0, byte_fallback=False))
        for piece, encoding in zip(targets, model.encode_batch(targets, add_special_tokens=False)):
            split = sum(scores[token] for token in encoding.tokens)
            loss[piece] = counts.get(piece, 0) * (scores[piece] - split)
    return loss


def learn_pieces(texts: Iterable[str], size: int) -> dict[str, float]:
    """Learn at most ``size`` pieces (every character of ``texts`` among them) with their log-prob scores."""
    words = word_counts(texts)
    if not words:
        raise ValueError("cannot train a tokenizer on an empty corpus")
    seeds = _seed_pieces(words)
    chars = {p for p in seeds if len(p) == 1}
    if len(chars) >= size:
        raise ValueError(f"vocab size {size} is too small for the {len(chars)} distinct characters of the corpus")
    scores = _log_probs(seeds, seeds)
    while len(scores) > size:
        counts = _segment_counts(scores, words)
        scores = _log_probs(counts, scores)
        loss = _removal_loss(scores, counts)
        # least loss first; unused pieces (loss 0) go in order of rising seed frequency × length
        ranked = sorted(loss, key=lambda p: (loss[p], -seeds[p] * len(p), p))
        drop = set(ranked[: min(len(scores) - size, int(len(scores) * (1 - SHRINK)) + 1)])
        scores = {p: s for p, s in scores.items() if p not in drop}
    for _ in range(FINAL_ITERATIONS):
        scores = _log_probs(_segment_counts(scores, words), scores)
    return scores


def build_tokenizer(pieces: dict[str, float]) -> Tokenizer:
    """XLM-R layout tokenizer from learned pieces (ordered by score, then piece): specials first, ``<mask>`` last."""
    ordered = sorted(pieces.items(), key=lambda item: (-item[1], item[0]))
    vocab = [(token, 0.0) for token in SPECIAL_TOKENS] + ordered + [(MASK_TOKEN, 0.0)]
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=UNK_ID, byte_fallback=False))
    tokenizer.pre_tokenizer = _pre_tokenizer()
    tokenizer.decoder = decoders.Metaspace(replacement=_META, prepend_scheme="always")
    tokenizer.add_special_tokens([*SPECIAL_TOKENS, MASK_TOKEN])
    cls, sep = SPECIAL_TOKENS[0], SPECIAL_TOKENS[2]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} {sep} $B {sep}",
        special_tokens=[(cls, 0), (sep, 2)],
    )
    return tokenizer


def _config() -> dict:
    return {
        "add_prefix_space": True,
        "backend": "tokenizers",
        "bos_token": "<s>",
        "clean_up_tokenization_spaces": False,
        "cls_token": "<s>",
        "eos_token": "</s>",
        "mask_token": MASK_TOKEN,
        "model_max_length": MODEL_MAX_LENGTH,
        "pad_token": "<pad>",
        "padding_side": "right",
        "sep_token": "</s>",
        "tokenizer_class": "XLMRobertaTokenizer",
        "unk_token": "<unk>",
    }


def save_tokenizer(tokenizer: Tokenizer, out_dir: str | Path) -> Path:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    config = _config()
    special_keys = ("bos_token", "cls_token", "eos_token", "mask_token", "pad_token", "sep_token", "unk_token")
    special = {key: config[key] for key in special_keys}
    for name, payload in (("tokenizer_config.json", config), ("special_tokens_map.json", special)):
        (out_dir / name).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out_dir


def jsonl_texts(paths: Iterable[Path]) -> Iterator[str]:
    """Every distinct query and passage of FlagEmbedding jsonl files, in file order."""
    seen: set[str] = set()
    for path in paths:
        with Path(path).open(encoding="utf-8") as lines:
            for line in lines:
                record = json.loads(line)
                for text in (record["query"], *record["pos"], *record["neg"]):
                    if text not in seen:
                        seen.add(text)
                        yield text


def train_tokenizer(train_dir: str | Path, out_dir: str | Path, vocab_size: int = DEFAULT_VOCAB_SIZE) -> Path:
    """Train on all ``*.jsonl`` files of ``train_dir``; save a tokenizer of ``vocab_size`` ids (specials included)."""
    files = sorted(Path(train_dir).glob("*.jsonl"))
    if not files:
        raise FileNotFoundError(f"no *.jsonl training files in {train_dir}")
    pieces = learn_pieces(jsonl_texts(files), vocab_size - len(SPECIAL_TOKENS) - 1)
    return save_tokenizer(build_tokenizer(pieces), out_dir)
