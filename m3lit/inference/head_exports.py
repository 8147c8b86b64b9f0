"""Exports of the lexical and multi-vector heads for serving libraries, each written atomically (into
``<directory>.incomplete-<pid>``, then renamed).

- :func:`export_sparse_encoder`: ``Transformer -> M3SparsePooling``, saved by ``SparseEncoder.save``; loaded with
  ``SparseEncoder(folder, trust_remote_code=True)`` (m3lit must be importable). ``encode`` gives (n, vocab_size)
  vectors whose non-zeros are ``M3Embedder.encode(...)["sparse"]``; ``similarity`` (dot) is the lexical matching score.
- :func:`export_multi_vector_encoder`: ``Transformer -> Dense (token level) -> MultiVectorMask -> Normalize``,
  library modules only, saved by ``MultiVectorEncoder.save``; loaded with ``MultiVectorEncoder(folder)``. Token
  vectors are M3's colbert vectors (CLS dropped, EOS kept); ``similarity`` (meanmaxsim) is ``colbert_score``.
- :func:`export_pylate`: PyLate's ``models.ColBERT`` folder (``Transformer`` at the root, a
  ``pylate.models.Dense.Dense`` in ``1_Dense``, PyLate's keys in ``config_sentence_transformers.json``): empty
  query/document prefixes, no query expansion; documents get M3's vectors, queries M3's plus the CLS vector.
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from safetensors.torch import save_file

from ..files import remove_path, replace_path
from ..model.positions import usable_length
from .model_folder import INCOMPLETE
from .st_export import write_json

M3LIT_REQUIREMENT = {"m3lit": {"specifier": "", "reason": "the lexical head is m3lit's M3SparsePooling module"}}
# What PyLate 1.6 (ColBERT._load_sbert_model, Dense.load) reads from the folder.
PYLATE_DENSE_TYPE = "pylate.models.Dense.Dense"
PYLATE_CONFIG_KEYS = ("query_prefix", "document_prefix", "query_length", "document_length",
                      "attend_to_expansion_tokens", "skiplist_words", "do_query_expansion")


def export_sparse_encoder(embedder: Any, directory: str, max_seq_length: int | None = None) -> str:
    """Write the lexical head as a ``sentence_transformers.SparseEncoder`` folder; returns its absolute path.

    ``embedder``: an ``M3Embedder`` or the path of a BGE-M3 directory. Output of the loaded model per text: a
    vocab_size vector e with e[t] = the text's lexical weight of token id t (max over its occurrences), 0 elsewhere.
    """
    from sentence_transformers import SparseEncoder

    from .st_modules import M3SparsePooling

    embedder = _embedder(embedder, "sparse", "SparseEncoder")
    model = embedder.model
    head = model.sparse_head
    config = model.encoder.config
    pooling = M3SparsePooling(config.hidden_size, config.vocab_size, head.special_token_ids.tolist())
    pooling.linear.load_state_dict({k: v.detach().cpu().float() for k, v in head.linear.state_dict().items()})
    with _st_transformer(embedder, max_seq_length) as transformer:
        encoder = SparseEncoder(modules=[transformer, pooling], device="cpu", similarity_fn_name="dot")
        return _save(encoder, directory, requirements=M3LIT_REQUIREMENT)


def export_multi_vector_encoder(embedder: Any, directory: str, max_seq_length: int | None = None) -> str:
    """Write the multi-vector head as a ``sentence_transformers.MultiVectorEncoder`` folder; returns its path.

    Per text the loaded model gives E = normalize(H[1:] W^T + b), (tokens - 1, d_c): every token but the first (CLS),
    as ``M3Embedder.encode(...)["colbert"]`` (no ``Normalize`` module when the model's head does not normalise).
    The first token is dropped by a ``MultiVectorMask`` skiplist of its id (for queries and documents), so a CLS
    token written literally inside a text is dropped too (m3lit keeps it).
    """
    from sentence_transformers import MultiVectorEncoder
    from sentence_transformers.base.modules import Dense, Normalize
    from sentence_transformers.multi_vector_encoder.modules import MultiVectorMask

    embedder = _embedder(embedder, "colbert", "MultiVectorEncoder")
    linear = embedder.model.colbert_head.linear
    weight, bias = _linear_tensors(linear)
    dense = Dense(linear.in_features, linear.out_features, bias=bias is not None,
                  activation_function=torch.nn.Identity(), init_weight=weight,
                  init_bias=bias, module_input_name="token_embeddings")
    mask = MultiVectorMask(skiplist_words=[_first_token(embedder)], skiplist_tasks=["query", "document"])
    with _st_transformer(embedder, max_seq_length) as transformer:
        modules = [transformer, dense, mask]
        if embedder.model.colbert_head.normalize:
            modules.append(Normalize(module_input_name="token_embeddings"))
        encoder = MultiVectorEncoder(modules=modules, device="cpu", similarity_fn_name="meanmaxsim")
        return _save(encoder, directory)


def export_pylate(embedder: Any, directory: str, max_seq_length: int | None = None, *,
                  query_length: int | None = None, document_length: int | None = None) -> str:
    """Write the multi-vector head as a PyLate ``models.ColBERT`` folder; returns its absolute path.

    Layout: encoder config + weights, tokenizer and ``sentence_bert_config.json`` at the root; ``modules.json`` =
    [Transformer, ``1_Dense`` (``pylate.models.Dense.Dense``: ``linear.weight`` (d_c, d), ``linear.bias`` (d_c,),
    identity activation)]; ``config_sentence_transformers.json`` with ``model_type`` "ColBERT", similarity "MaxSim",
    ``query_prefix`` = ``document_prefix`` = "" (no [Q]/[D] marker is inserted), ``do_query_expansion`` false,
    ``query_length`` / ``document_length`` (default: ``max_seq_length``, else the encoder's limit) and
    ``skiplist_words`` = [the CLS token].

    PyLate then gives documents M3's colbert vectors (the skiplist drops CLS); its queries keep the CLS vector
    (PyLate applies the skiplist to documents only) and its MaxSim is a sum, not M3's mean over query tokens.
    """
    embedder = _embedder(embedder, "colbert", "PyLate")
    if not embedder.model.colbert_head.normalize:
        raise ValueError("PyLate export refused: PyLate always L2-normalises token vectors and this model's "
                         "multi-vector head does not (model.normalize=false)")
    model, tokenizer = embedder.model, embedder.tokenizer
    length = max_seq_length or usable_length(model.encoder.config, tokenizer)
    linear = model.colbert_head.linear
    weight, bias = _linear_tensors(linear)
    config = {"model_type": "ColBERT", "prompts": {}, "default_prompt_name": None, "similarity_fn_name": "MaxSim",
              "query_prefix": "", "document_prefix": "", "query_length": query_length or length,
              "document_length": document_length or length, "attend_to_expansion_tokens": False,
              "skiplist_words": [_first_token(embedder)], "do_query_expansion": False}
    final, tmp = _paths(directory)
    try:
        model.encoder.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp, "modules.json", [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Dense", "type": PYLATE_DENSE_TYPE},
        ])
        write_json(tmp, "sentence_bert_config.json", {"max_seq_length": length, "do_lower_case": False})
        write_json(tmp, "config_sentence_transformers.json", config)
        write_json(tmp, "1_Dense/config.json", {
            "in_features": linear.in_features, "out_features": linear.out_features, "bias": bias is not None,
            "activation_function": "torch.nn.modules.linear.Identity", "use_residual": False})
        tensors = {"linear.weight": weight} | ({} if bias is None else {"linear.bias": bias})
        save_file(tensors, os.path.join(tmp, "1_Dense", "model.safetensors"))
        replace_path(tmp, final)
    finally:
        remove_path(tmp)
    return final


# ---------------------------------------------------------------------------------------------- helpers
def _embedder(embedder: Any, head: str, target: str) -> Any:
    """The ``M3Embedder`` (loaded from a directory path if given one), refused if ``head`` was never trained."""
    if isinstance(embedder, (str, os.PathLike)):
        from .embedder import M3Embedder

        embedder = M3Embedder.from_pretrained(os.fspath(embedder), fresh_heads=True)
    try:
        embedder.check_heads([head])
    except ValueError as err:
        raise ValueError(f"{target} export refused: {err}") from None
    return embedder


def _first_token(embedder: Any) -> str:
    """The token the multi-vector head drops (the first of every tokenised text: CLS / BOS)."""
    tokenizer = embedder.tokenizer
    first = tokenizer("x")["input_ids"][0]
    if first not in embedder.model.special_ids:
        raise ValueError("this tokenizer does not start texts with a special (CLS/BOS) token; the multi-vector "
                         "head drops the first token, which a skiplist cannot express")
    return tokenizer.convert_ids_to_tokens(first)


def _linear_tensors(linear: torch.nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    weight = linear.weight.detach().cpu().float().contiguous().clone()
    bias = None if linear.bias is None else linear.bias.detach().cpu().float().contiguous().clone()
    return weight, bias


@contextmanager
def _st_transformer(embedder: Any, max_seq_length: int | None) -> Iterator[Any]:
    """A sentence-transformers ``Transformer`` module over a copy of the encoder and tokenizer."""
    from sentence_transformers.base.modules import Transformer

    encoder, tokenizer = embedder.model.encoder, embedder.tokenizer
    with tempfile.TemporaryDirectory(prefix="m3lit-st-") as src:
        encoder.save_pretrained(src)
        tokenizer.save_pretrained(src)
        length = max_seq_length or usable_length(encoder.config, tokenizer)
        yield Transformer(src, max_seq_length=length)


def _paths(directory: str) -> tuple[str, str]:
    final = os.path.abspath(directory)
    tmp = f"{final}{INCOMPLETE}{os.getpid()}"
    remove_path(tmp)
    return final, tmp


def _save(model: Any, directory: str, requirements: dict | None = None) -> str:
    """``model.save`` into the temporary folder (``requirements`` added to its config), then renamed into place."""
    final, tmp = _paths(directory)
    try:
        model.save(tmp, create_model_card=False)
        if requirements:
            path = os.path.join(tmp, "config_sentence_transformers.json")
            with open(path) as f:
                config = json.load(f)
            config["requirements"] = requirements
            write_json(tmp, "config_sentence_transformers.json", config)
        replace_path(tmp, final)
    finally:
        remove_path(tmp)
    return final
