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


def test_encode_cli_names_bad_line(tiny_m3_dir, tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"text": "ok"}\n{"txt": "typo"}\n')
    with pytest.raises(SystemExit, match=r"bad.jsonl:2: field 'text'"):
        main([tiny_m3_dir, str(src), str(tmp_path / "o.jsonl")])
