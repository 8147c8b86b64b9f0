"""``m3lit-encode``: encode a jsonl file of texts with a BGE-M3-layout model.

    m3lit-encode MODEL_DIR texts.jsonl out.jsonl [--field text] [--id-field id] [--no-colbert] ...

Each input line is a JSON object with the text under ``--field``; the output holds, per text, ``id`` (the
``--id-field`` value, else the line number) and the trained heads' outputs less those turned off: ``.jsonl`` with
``dense``, ``sparse`` ({token id or token: weight}) and ``colbert`` per line, or ``.npz`` with a dense matrix, the
sparse head as CSR and the multi-vector rows stacked with offsets (formats: ``m3lit.inference.vector_files``).
"""
from __future__ import annotations

import argparse
import os
import sys

from .errors import report_errors


def read_texts(path: str, field: str, id_field: str | None) -> tuple[list[str], list[str]]:
    """Texts and ids of a jsonl(.gz) file; errors name ``path:line`` and the field."""
    from ..eval.beir import iter_jsonl  # its errors (ValueError) name path:line

    texts, ids = [], []
    for lineno, obj in iter_jsonl(path):
        if not isinstance(obj.get(field), str):
            raise ValueError(f"{path}:{lineno}: field {field!r} missing or not a string")
        texts.append(obj[field])
        ids.append(str(obj[id_field]) if id_field and id_field in obj else str(lineno))
    return texts, ids


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="m3lit-encode", description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir")
    parser.add_argument("input", help="jsonl (or jsonl.gz) file, one object per line")
    parser.add_argument("output", help="output .jsonl or .npz file")
    parser.add_argument("--field", default="text")
    parser.add_argument("--id-field", default="id")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-dense", action="store_true")
    parser.add_argument("--no-sparse", action="store_true")
    parser.add_argument("--no-colbert", action="store_true")
    parser.add_argument("--sparse-keys", choices=("ids", "tokens"), default="ids",
                        help="jsonl: sparse weights keyed by token id (default; rank_features-ready) or token string")
    parser.add_argument("--colbert-dtype", choices=("float16", "float32"), default="float16",
                        help="npz: dtype of the stacked multi-vector matrix")
    parser.add_argument("--fresh-heads", action="store_true",
                        help="load a folder without sparse_linear.pt / colbert_linear.pt with fresh (untrained) heads")
    encode_file(parser.parse_args(argv))


def check_output(output: str, input_path: str) -> None:
    """Before any work: the output must be a new or overwritable file in an existing folder, not the input."""
    if os.path.isdir(output):
        raise ValueError(f"output {output}: is a folder; give a .jsonl or .npz file name")
    parent = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"output {output}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"output {output}: the folder {parent} is not writable")
    if os.path.exists(output) and os.path.samefile(output, input_path):
        raise ValueError(f"output {output} is the input file: it would be overwritten; choose another name")


@report_errors("m3lit-encode")
def encode_file(args: argparse.Namespace) -> None:
    if not os.path.isfile(args.input):
        raise FileNotFoundError(f"{args.input}: no such file")
    check_output(args.output, args.input)
    texts, ids = read_texts(args.input, args.field, args.id_field)
    if not texts:
        raise ValueError(f"{args.input}: no texts (the file has no JSON line)")
    from ..inference.embedder import M3Embedder  # torch and transformers: only once the input is known good
    from ..inference.vector_files import write_jsonl, write_npz

    embedder = M3Embedder.from_pretrained(args.model_dir, device=args.device, fresh_heads=args.fresh_heads)
    # heads the model trained, less those turned off
    out = embedder.encode(texts, args.batch_size, args.max_length, False if args.no_dense else None,
                          False if args.no_sparse else None, False if args.no_colbert else None)
    if args.output.endswith(".npz"):
        write_npz(args.output, ids, out, len(embedder.tokenizer), args.colbert_dtype)
    else:
        token_of = embedder.tokenizer.convert_ids_to_tokens if args.sparse_keys == "tokens" else None
        write_jsonl(args.output, ids, out, token_of)
    print(f"encoded {len(texts)} texts -> {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
