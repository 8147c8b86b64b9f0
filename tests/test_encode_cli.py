import json

import numpy as np
import pytest

from m3lit import M3Embedder
from m3lit.cli.encode import main


def test_encode_cli_jsonl_and_npz(tiny_m3_dir, tmp_path, reference):
    src = tmp_path / "texts.jsonl"
    src.write_text("".join(json.dumps({"id": f"q{i}", "text": t}) + "\n" for i, t in enumerate(reference["queries"])))
    out = tmp_path / "out.jsonl"
    main([tiny_m3_dir, str(src), str(out)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["q0", "q1", "q2"]
    np.testing.assert_allclose([r["dense"] for r in rows], reference["queries_out"]["dense_vecs"], atol=1e-5)
    assert set(rows[0]["sparse"]) == set(reference["queries_out"]["lexical_weights"][0])
    npz = tmp_path / "out.npz"
    main([tiny_m3_dir, str(src), str(npz)])
    data = np.load(npz)
    np.testing.assert_allclose(data["dense"], M3Embedder.from_pretrained(tiny_m3_dir).encode(
        reference["queries"])["dense"], atol=1e-6)


def test_encode_writes_search_engine_formats(tiny_m3_dir, tmp_path, reference):
    """npz: dense matrix, sparse CSR, multi-vector rows stacked with offsets (fp16); jsonl sparse keys as tokens."""
    from scipy.sparse import csr_matrix

    texts = reference["queries"] + ["a longer passage about Debian package management with apt"]
    src = tmp_path / "texts.jsonl"
    src.write_text("".join(json.dumps({"id": f"t{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    model = M3Embedder.from_pretrained(tiny_m3_dir)
    want = model.encode(texts)
    main([tiny_m3_dir, str(src), str(tmp_path / "out.npz")])
    data = np.load(tmp_path / "out.npz")
    assert list(data["ids"]) == [f"t{i}" for i in range(len(texts))]
    csr = csr_matrix((data["sparse_data"], data["sparse_indices"], data["sparse_indptr"]),
                     shape=tuple(data["sparse_shape"]))
    assert csr.shape == (len(texts), len(model.tokenizer))
    for i, weights in enumerate(want["sparse"]):
        row = csr.getrow(i)
        assert dict(zip(row.indices.tolist(), row.data.tolist())) == pytest.approx(weights, abs=1e-6)
    offsets = data["colbert_offsets"]
    assert data["colbert"].dtype == np.float16 and offsets[-1] == data["colbert"].shape[0]
    for i, vectors in enumerate(want["colbert"]):
        np.testing.assert_allclose(data["colbert"][offsets[i]:offsets[i + 1]].astype(np.float32), vectors, atol=1e-3)
    main([tiny_m3_dir, str(src), str(tmp_path / "tokens.jsonl"), "--sparse-keys", "tokens", "--no-colbert"])
    rows = [json.loads(line) for line in (tmp_path / "tokens.jsonl").read_text().splitlines()]
    assert "colbert" not in rows[0]
    for row, weights in zip(rows, want["sparse"]):
        assert row["sparse"] == pytest.approx(
            {model.tokenizer.convert_ids_to_tokens(t): w for t, w in weights.items()}, abs=1e-6)


def test_encode_cli_names_bad_line(tiny_m3_dir, tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"text": "ok"}\n{"txt": "typo"}\n')
    with pytest.raises(SystemExit, match=r"bad.jsonl:2: field 'text'"):
        main([tiny_m3_dir, str(src), str(tmp_path / "o.jsonl")])
