"""teacher=layerwise: intermediate layers' heads equal a truncated model's, their loss term equals its definition,
gradients reach each part only through its intended terms, and the truncated export loads and encodes the same."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from scale_common import random_batch, tiny_module  # noqa: E402

from m3lit.loss import LayerwiseTeacher, M3Loss, soft_cross_entropy  # noqa: E402
from m3lit.loss.infonce import infonce  # noqa: E402
from m3lit.model.layerwise import layer_reps, truncated_model  # noqa: E402


def test_layer_heads_equal_a_truncated_model_and_the_last_layer_equals_the_model():
    module = tiny_module(layers=3, layerwise={"layers": [1, 2], "shared_heads": False}).eval()
    batch = random_batch(seed=2)["passages"]
    heads = dict(module.layer_heads)
    with torch.no_grad():
        final, per_layer = layer_reps(module.model, batch["input_ids"], batch["attention_mask"], [1, 2], heads)
        whole = module.model(batch["input_ids"], batch["attention_mask"])
        torch.testing.assert_close(final.dense, whole.dense)
        for k in (1, 2):
            cut = truncated_model(module.model, k, heads[str(k)]).eval()
            assert cut.encoder.config.num_hidden_layers == k and len(cut.encoder.encoder.layer) == k
            alone = cut(batch["input_ids"], batch["attention_mask"])
            for name in ("dense", "sparse", "colbert"):
                torch.testing.assert_close(getattr(per_layer[k], name), getattr(alone, name))
    with pytest.raises(ValueError, match="between 1 and 2"):
        tiny_module(layers=3, layerwise={"layers": [3]})
    with pytest.raises(ValueError, match="encoding.mode=plain"):
        tiny_module(layerwise={"layers": [1]}, encoding={"mode": "grad_cache"})


def test_the_layer_term_equals_its_definition():
    g = torch.Generator().manual_seed(0)
    rows = {h: torch.randn(3, 6, generator=g) * 0.05 for h in ("dense", "sparse", "colbert")}
    layer = {h: torch.randn(3, 6, generator=g) * 0.05 for h in rows}
    pos = torch.arange(3) * 2
    base = M3Loss()(rows, pos, 2)
    teacher = LayerwiseTeacher(layers=[1], hard_labels=True, weight=0.5)
    out = M3Loss(teacher=teacher)(rows, pos, 2, layer_scores={1: layer})
    s = {h: v / 0.02 for h, v in rows.items()}
    ls = {h: v / 0.02 for h, v in layer.items()}
    lam = {"dense": 1.0, "sparse": 0.1, "colbert": 1.0}
    p = torch.softmax(s["dense"] + 0.3 * s["sparse"] + s["colbert"], -1)
    term = (sum(lam[h] * soft_cross_entropy(p, ls[h]) for h in ls) / 3
            + sum(lam[h] * infonce(ls[h], pos) for h in ls) / 3)
    torch.testing.assert_close(out.head_losses["layer1"], term)
    torch.testing.assert_close(out.loss, base.loss + 0.5 * term)


def grads_of(module, batch):
    module.zero_grad(set_to_none=True)
    module.forward_loss(batch).loss.backward()
    return {n: (p.grad.clone() if p.grad is not None else None) for n, p in module.named_parameters()}


def test_gradients_reach_each_part_only_through_its_terms():
    batch = random_batch(seed=4)
    with_layers = grads_of(tiny_module(layers=3, layerwise={"layers": [1], "shared_heads": False}), batch)
    silent = grads_of(tiny_module(layers=3, layerwise={"layers": [1], "shared_heads": False, "weight": 0.0}), batch)
    # the layer's own heads learn from the layer term only
    own = [n for n in with_layers if n.startswith("layer_heads.1.")]
    assert own and all(with_layers[n] is not None and with_layers[n].abs().sum() > 0 for n in own)
    assert all(silent[n] is None or silent[n].abs().sum() == 0 for n in own)
    # the final heads and the last block do not learn from the layer term (targets detached, heads separate)
    for name in with_layers:
        if name.startswith(("model.sparse_head", "model.colbert_head", "model.encoder.encoder.layer.2.")):
            torch.testing.assert_close(with_layers[name], silent[name])
    # the first block does: it feeds the layer's heads
    first = "model.encoder.encoder.layer.0.attention.self.query.weight"
    assert not torch.allclose(with_layers[first], silent[first])
    # shared heads: the model's own heads also learn on the layer
    shared = grads_of(tiny_module(layers=3, layerwise={"layers": [1]}), batch)
    assert not torch.allclose(shared["model.sparse_head.linear.weight"], silent["model.sparse_head.linear.weight"])


def test_the_truncated_export_loads_and_encodes_as_the_layer(tmp_path):
    from m3lit.inference.embedder import M3Embedder
    from m3lit.inference.export import export_bge_m3

    module = tiny_module(layers=3, layerwise={"layers": [1], "shared_heads": False}).eval()
    path = export_bge_m3(truncated_model(module.model, 1, module.layer_heads["1"]), module.tokenizer,
                         str(tmp_path / "export-L1"))
    embedder = M3Embedder.from_pretrained(path, device="cpu")
    assert embedder.model.encoder.config.num_hidden_layers == 1
    texts = ["a short query", "ein längeres Dokument über Museen"]
    got = embedder.encode(texts, return_dense=True, return_sparse=False, return_colbert=False)["dense"]
    enc = module.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        _, layers = layer_reps(module.model, enc["input_ids"], enc["attention_mask"], [1], dict(module.layer_heads))
    torch.testing.assert_close(torch.as_tensor(got), layers[1].dense, atol=1e-5, rtol=1e-5)
