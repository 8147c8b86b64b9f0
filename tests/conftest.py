import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The embedded default's generated assets (synthetic corpus + tokenizer), shared by the whole test session.
os.environ.setdefault("M3LIT_ASSETS", os.path.join(tempfile.gettempdir(), "m3lit-test-assets"))

FIXTURES = Path(__file__).parent / "fixtures"
# Texts the interoperability tests encode with m3lit and another library: Latin, German, Japanese, two tokens, and one
# longer than the tests' max_length (truncated by both sides).
INTEROP_TEXTS = [
    "what is the capital of france",
    "Paris ist die Hauptstadt Frankreichs und hat viele Museen.",
    "東京は日本の首都です",
    "a b",
    " ".join(["long document about retrieval heads"] * 40),
]
TINY_M3 = FIXTURES / "tiny_m3"


@pytest.fixture(scope="session")
def reference() -> dict:
    """FlagEmbedding 1.4.2 outputs on the tiny BGE-M3 checkpoint (see fixtures/README.md)."""
    with open(FIXTURES / "flagref_reference_outputs.json") as f:
        return json.load(f)


@pytest.fixture(scope="session")
def tiny_m3_dir() -> str:
    return str(TINY_M3)


@pytest.fixture(scope="session")
def tokenizer(tiny_m3_dir):
    """The tiny BGE-M3 checkpoint's tokenizer (133 tokens)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_m3_dir)


# ---------------------------------------------------------------- the installed console scripts
BIN_DIR = Path(sys.executable).parent


def console_script(name: str, bin_dir: Path = BIN_DIR) -> str:
    """Path of an installed ``m3lit-*`` executable (beside the interpreter running the tests)."""
    path = bin_dir / name
    assert path.is_file(), f"{path}: console script not installed"
    return str(path)


def run_console(name: str, *args: str, cwd: Path, bin_dir: Path = BIN_DIR, timeout: int = 900,
                env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``name`` (an installed console script) with ``args`` from ``cwd``, as a user would; with ``check`` the
    exit code must be 0 (the output tail is shown otherwise)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", **(env or {})}
    proc = subprocess.run([console_script(name, bin_dir), *args], cwd=str(cwd), capture_output=True, text=True,
                          timeout=timeout, env=full_env)
    if check:
        assert proc.returncode == 0, f"{name} {' '.join(args)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def exported_dir(proc: subprocess.CompletedProcess) -> str:
    """The ``exported: DIR`` line m3lit-train prints."""
    found = re.findall(r"^exported: (.+)$", proc.stdout, flags=re.M)
    assert len(found) == 1, proc.stdout[-2000:]
    return found[0]


SMALL_ENCODER_SIZE = (3, 64, 256)  # layers, hidden size, intermediate size of small_hf_encoder


def small_hf_encoder(model_type: str = "xlm-roberta", dropout: float = 0.0, attn_implementation: str = "sdpa",
                     **config):
    """A seeded Hugging Face encoder of SMALL_ENCODER_SIZE (vocab 500, 4 heads): the same weights on every call."""
    import torch
    from transformers import AutoConfig, AutoModel

    layers, hidden, intermediate = SMALL_ENCODER_SIZE
    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, vocab_size=500, hidden_size=hidden, num_hidden_layers=layers,
                                  num_attention_heads=4, intermediate_size=intermediate, hidden_dropout_prob=dropout,
                                  attention_probs_dropout_prob=dropout, **config)
    return AutoModel.from_config(config, add_pooling_layer=False, attn_implementation=attn_implementation)


def padded_batch(rows: int = 4, length: int = 50):
    """(input_ids, attention_mask) for small_hf_encoder: random ids, row 1 padded after 30 tokens."""
    import torch

    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 500, (rows, length), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 30:] = 0
    return ids, mask
