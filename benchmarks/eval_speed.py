"""Evaluation speed: a 10,000-document corpus and 500 queries (debdesc dev sets pooled), the small config
(hidden 384, 6 layers, random init), every head and both hybrids, on CPU.

    .venv/bin/python benchmarks/eval_speed.py [--docs 10000] [--queries 500] [--threads 2] [--colbert both] [--no-packing]

Prints the corpus size in tokens, encoding throughput, the time of each search mode, and the total.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import tempfile
import time
from dataclasses import replace

import torch

DEBDESC_DEV = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "debdesc", "dev")
LANGUAGES = ("en", "de", "fr", "es", "it", "pl", "ru", "ja", "zh_CN", "ko", "cs", "uk", "da", "pt_BR")


def train_unigram_tokenizer(texts, out_dir: str, vocab_size: int = 32000) -> str:
    """An XLM-R-layout Unigram tokenizer learned from ``texts`` with the ``tokenizers`` trainer (fast)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from m3lit.assets.tokenizer import MASK_TOKEN, SPECIAL_TOKENS, UNK_ID, save_tokenizer

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size - 1, special_tokens=list(SPECIAL_TOKENS),
                                      unk_token=SPECIAL_TOKENS[UNK_ID], show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.add_special_tokens([*SPECIAL_TOKENS, MASK_TOKEN])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                                       special_tokens=[("<s>", 0), ("</s>", 2)])
    save_tokenizer(tok, out_dir)
    return out_dir


def small_embedder(tokenizer_dir: str, hidden: int = 384, layers: int = 6, seed: int = 0):
    """Random-init XLM-R encoder (the ``model=small`` shape) with M3 heads, as an M3Embedder on CPU."""
    from m3lit import M3Embedder
    from m3lit.inference.embedder import load_tokenizer
    from m3lit.model import M3Model, build_encoder, special_token_ids

    torch.manual_seed(seed)
    tokenizer = load_tokenizer(tokenizer_dir)
    encoder = build_encoder(config={
        "model_type": "xlm-roberta", "vocab_size": len(tokenizer), "hidden_size": hidden,
        "num_hidden_layers": layers, "num_attention_heads": hidden // 64, "intermediate_size": 4 * hidden,
        "max_position_embeddings": 8194, "type_vocab_size": 1, "pad_token_id": tokenizer.pad_token_id})
    model = M3Model(encoder, special_token_ids(tokenizer))
    return M3Embedder(model, tokenizer, "cpu")


def pooled_dataset(out_dir: str, n_docs: int, n_queries: int, seed: int = 0) -> str:
    """A BEIR folder with ``n_docs`` documents and ``n_queries`` judged queries from the debdesc dev sets."""
    rng = random.Random(seed)
    corpus, queries, qrels = {}, {}, []
    per_lang_docs = -(-n_docs // len(LANGUAGES))
    per_lang_queries = -(-n_queries // len(LANGUAGES))
    for lang in LANGUAGES:
        folder = os.path.join(DEBDESC_DEV, lang)
        with open(os.path.join(folder, "qrels", "test.tsv")) as f:
            pairs = [line.rstrip("\n").split("\t")[:2] for line in f][1:]
        with open(os.path.join(folder, "corpus.jsonl")) as f:
            docs = [json.loads(line) for line in f]
        with open(os.path.join(folder, "queries.jsonl")) as f:
            texts = {q["_id"]: q["text"] for q in map(json.loads, f)}
        chosen = rng.sample(pairs, min(per_lang_queries, len(pairs)))
        wanted = {d for _, d in chosen}
        keep = [d for d in docs if d["_id"] in wanted]
        keep += rng.sample([d for d in docs if d["_id"] not in wanted], per_lang_docs - len(keep))
        for d in keep:
            corpus[d["_id"]] = d
        for q, d in chosen:
            queries[q] = texts[q]
            qrels.append((q, d))
    corpus_items = list(corpus.values())[:n_docs]
    kept_ids = {d["_id"] for d in corpus_items}
    qrels = [(q, d) for q, d in qrels if d in kept_ids][:n_queries]
    os.makedirs(os.path.join(out_dir, "qrels"), exist_ok=True)
    with open(os.path.join(out_dir, "corpus.jsonl"), "w") as f:
        for d in corpus_items:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    with open(os.path.join(out_dir, "queries.jsonl"), "w") as f:
        for q, _ in qrels:
            f.write(json.dumps({"_id": q, "text": queries[q]}, ensure_ascii=False) + "\n")
    with open(os.path.join(out_dir, "qrels", "test.tsv"), "w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for q, d in qrels:
            f.write(f"{q}\t{d}\t1\n")
    return out_dir


def cpu_seconds() -> float:
    """User + system CPU time of this process (all threads); on a shared machine wall time also counts waiting."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=10000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--max-tokens", type=int, default=16384)
    parser.add_argument("--colbert", choices=["exhaustive", "rerank", "both"], default="both")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="model weights at inference (bfloat16: faster on CPUs with AVX512-BF16/AMX, not exact)")
    parser.add_argument("--no-packing", action="store_true",
                        help="encode padded batches (the default encodes them unpadded, as training does)")
    parser.add_argument("--work-dir", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from m3lit.eval import RetrievalSettings, encode_dataset, load_beir, search_dataset
    from m3lit.eval.tables import STATS_KEY

    work = args.work_dir or tempfile.mkdtemp(prefix="m3lit_eval_speed_")
    data_dir = pooled_dataset(os.path.join(work, "pooled"), args.docs, args.queries)
    dataset = load_beir(data_dir, name="pooled")
    tok_dir = os.path.join(work, "tokenizer")
    if not os.path.isfile(os.path.join(tok_dir, "tokenizer.json")):
        start = time.perf_counter()
        train_unigram_tokenizer(list(dataset.corpus.values()) + list(dataset.queries.values()), tok_dir)
        print(f"tokenizer (Unigram, 32k) trained in {time.perf_counter() - start:.1f}s", flush=True)
    embedder = small_embedder(tok_dir)
    embedder.packing = not args.no_packing
    embedder.model.to(getattr(torch, args.dtype))
    print(f"corpus {len(dataset.corpus)} docs, {len(dataset.queries)} queries; small config ({args.dtype}), "
          f"{torch.get_num_threads()} threads; max_length {args.max_length}, max_tokens {args.max_tokens}")
    settings = RetrievalSettings(max_length=args.max_length, max_tokens=args.max_tokens)
    start, cpu = time.perf_counter(), cpu_seconds()
    queries, docs = encode_dataset(embedder, dataset, settings)
    encode, encode_cpu = time.perf_counter() - start, cpu_seconds() - cpu
    tokens = docs.tokens + queries.tokens
    print(f"encode: {docs.tokens} passage + {queries.tokens} query tokens in {encode:.1f}s wall, {encode_cpu:.1f}s CPU "
          f"({tokens / encode:.0f} tokens/s); corpus {docs.seconds:.1f}s, queries {queries.seconds:.1f}s; "
          f"truncated passages {docs.truncated}", flush=True)
    modes = {"exhaustive": 10 ** 9, "rerank": 0}
    for name in (["exhaustive", "rerank"] if args.colbert == "both" else [args.colbert]):
        run = replace(settings, colbert_exhaustive_max_docs=modes[name])
        start, cpu = time.perf_counter(), cpu_seconds()
        results = search_dataset(dataset, queries, docs, run)
        search, search_cpu = time.perf_counter() - start, cpu_seconds() - cpu
        stats = results[STATS_KEY]
        searches = {k[len("search_"):-2]: v for k, v in stats.items() if k.startswith("search_")}
        print(f"\n[colbert {stats['colbert_search']}] search + metrics {search:.1f}s wall, {search_cpu:.1f}s CPU; "
              f"evaluation total (encode + search) {encode + search:.1f}s wall, {encode_cpu + search_cpu:.1f}s CPU")
        print("  search: " + ", ".join(f"{m} {s:.2f}s" for m, s in searches.items()))
        print("  ndcg@10: " + ", ".join(f"{m} {v['ndcg@10']:.4f}" for m, v in results.items() if m != STATS_KEY))


if __name__ == "__main__":
    main()
