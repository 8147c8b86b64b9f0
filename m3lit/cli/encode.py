"""``m3lit-encode``: encode a jsonl file of texts with a BGE-M3-layout model.

    m3lit-encode MODEL_DIR texts.jsonl out.jsonl [--field text] [--id-field id] [--no-colbert] ...

Each input line is a JSON object with the text under ``--field``; each output line holds ``id`` (the
``--id-field`` value, else the line number), ``dense`` (list), ``sparse`` ({token_id: weight}) and ``colbert``
(list of token vectors), for the heads asked for. With an ``.npz`` output, dense vectors are written as one
float32 matrix ``dense`` with ``ids`` (sparse and colbert are not supported there).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from .errors import USER_ERRORS, full_errors


def read_texts(path: str, field: str, id_field: str | None) -> tuple[list[str], list[str]]:
    """Texts and ids of a jsonl(.gz) file; errors name ``path:line`` and the field."""
    from ..eval.beir import BeirFormatError, iter_jsonl

    if not os.path.isfile(path):
        raise SystemExit(f"m3lit-encode: {path}: no such file")
    texts, ids = [], []
    try:
        for lineno, obj in iter_jsonl(path):
            if not isinstance(obj.get(field), str):
                raise SystemExit(f"m3lit-encode: {path}:{lineno}: field {field!r} missing or not a string")
            texts.append(obj[field])
            ids.append(str(obj[id_field]) if id_field and id_field in obj else str(lineno))
    except BeirFormatError as err:
        raise SystemExit(f"m3lit-encode: {err}") from None
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
    parser.add_argument("--fresh-heads", action="store_true",
                        help="load a folder without sparse_linear.pt / colbert_linear.pt with fresh (untrained) heads")
    args = parser.parse_args(argv)
    try:
        encode_file(args)
    except USER_ERRORS as err:
        if full_errors():
            raise
        raise SystemExit(f"m3lit-encode: error: {err}") from None


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


def encode_file(args: argparse.Namespace) -> None:
    if not os.path.isfile(args.input):
        raise FileNotFoundError(f"{args.input}: no such file")
    check_output(args.output, args.input)
    texts, ids = read_texts(args.input, args.field, args.id_field)
    if not texts:
        raise ValueError(f"{args.input}: no texts (the file has no JSON line)")
    from ..inference.embedder import M3Embedder  # torch and transformers: only once the input is known good

    embedder = M3Embedder.from_pretrained(args.model_dir, device=args.device, fresh_heads=args.fresh_heads)
    tmp = f"{args.output}.tmp-{os.getpid()}"
    if args.output.endswith(".npz"):
        out = embedder.encode(texts, args.batch_size, args.max_length, True, False, False)
        with open(tmp, "wb") as f:
            np.savez(f, dense=out["dense"], ids=np.array(ids))
        os.replace(tmp, args.output)
    else:
        # heads the model trained, less those turned off
        out = embedder.encode(texts, args.batch_size, args.max_length, False if args.no_dense else None,
                              False if args.no_sparse else None, False if args.no_colbert else None)
        with open(tmp, "w", encoding="utf-8") as f:
            for i, text_id in enumerate(ids):
                row: dict = {"id": text_id}
                if "dense" in out:
                    row["dense"] = out["dense"][i].tolist()
                if "sparse" in out:
                    row["sparse"] = {str(k): v for k, v in out["sparse"][i].items()}
                if "colbert" in out:
                    row["colbert"] = out["colbert"][i].tolist()
                f.write(json.dumps(row) + "\n")
        os.replace(tmp, args.output)
    print(f"encoded {len(texts)} texts -> {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
